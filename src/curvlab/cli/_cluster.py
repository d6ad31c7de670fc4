"""Options that put a command's measurements on a Dask cluster.

``--scheduler`` is ``local`` (a ``LocalCluster`` of ``--workers`` processes on
this machine), ``slurm`` (``--workers`` SLURM jobs through dask-jobqueue, with
the ``--slurm-*`` options) or the address of a running Dask scheduler; without
it the work runs in this process (:func:`curvlab.store.cluster.connect`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from curvlab.cli._common import option_error
from curvlab.cli._options import Field, group, option

__all__ = ["CLUSTER", "Cluster", "SchedulerOption", "WorkersOption", "parse_indices"]

SchedulerOption = Annotated[
    str | None,
    typer.Option(
        help="local, slurm or a scheduler address (tcp://host:8786). [this process]"
    ),
]
WorkersOption = Annotated[
    int, typer.Option(min=1, help="Worker processes (local) or SLURM jobs.")
]


@group
class Cluster:
    """The cluster options: ``--scheduler``, ``--workers`` and ``--slurm-*``."""

    scheduler = Field(SchedulerOption)
    workers = Field(WorkersOption, 2)
    slurm_gpus = option(int, "SLURM: GPUs per job.", default=0, min=0)
    slurm_walltime = option(str, "SLURM: job time limit HH:MM:SS.", default="02:00:00")
    slurm_lifetime = option(
        str,
        "SLURM: retire each worker after this long (e.g. 1h50m) so its work moves "
        "before the walltime. [walltime - 10 min]",
    )
    slurm_cores = option(int, "SLURM: CPU cores per job.", default=4, min=1)
    slurm_memory = option(str, "SLURM: memory per job, e.g. 16GB.", default="16GB")

    def run(self, body: Callable[[Any], int]) -> int:
        """Run ``body(client)`` with the client of ``--scheduler`` (or ``None``).

        Args:
            body: Runs the command's stages; returns the exit code.

        Returns:
            ``body``'s exit code, or 2 (with one line) when the cluster cannot be
            had or an option is invalid.
        """
        from curvlab.store.cluster import connect

        slurm = {"gpus_per_job": self.slurm_gpus, "walltime": self.slurm_walltime}
        slurm |= {"worker_lifetime": self.slurm_lifetime, "cores": self.slurm_cores}
        slurm |= {"memory": self.slurm_memory}
        try:
            if self.scheduler is None:
                return body(None)
            with connect(self.scheduler, workers=self.workers, **slurm) as client:
                return body(client)
        except (ValueError, OSError, ImportError) as error:
            return option_error(error)


CLUSTER = Cluster()


def parse_indices(text: str | None) -> list[int] | None:
    """Parse ``--indices``: ``a:b`` (``a <= i < b``) or ``i,j,a:b``; ``None``: all.

    Args:
        text: The option's value.

    Returns:
        The sorted distinct indices, or ``None``.

    Raises:
        ValueError: If an item is not an int or a range ``a:b`` with ``a < b``.

    Example:
        >>> parse_indices("0:3,7")
        [0, 1, 2, 7]
    """
    if text is None:
        return None
    chosen: set[int] = set()
    for item in (part.strip() for part in text.split(",") if part.strip()):
        start, sep, stop = item.partition(":")
        try:
            if not sep:
                chosen.add(int(item))
                continue
            low, high = int(start), int(stop)
        except ValueError:
            raise ValueError(
                f"--indices takes ints and ranges a:b. Got {item!r}."
            ) from None
        if not 0 <= low < high:
            raise ValueError(f"--indices range must have 0 <= a < b. Got {item!r}.")
        chosen.update(range(low, high))
    if not chosen:
        raise ValueError(f"--indices names no index. Got {text!r}.")
    return sorted(chosen)

"""Options that put a command's measurements on a Dask cluster.

``--scheduler`` is ``local`` (a ``LocalCluster`` of ``--workers`` processes on
this machine), ``slurm`` (``--workers`` SLURM jobs through dask-jobqueue, with
the ``--slurm-*`` options) or the address of a running Dask scheduler; without
it the work runs in this process (:func:`curvlab.store.cluster.connect`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

__all__ = [
    "on_cluster",
    "GpusOption",
    "JobCoresOption",
    "JobMemoryOption",
    "LifetimeOption",
    "SchedulerOption",
    "WalltimeOption",
    "WorkersOption",
    "cluster_client",
    "parse_indices",
]

SchedulerOption = Annotated[
    str | None,
    typer.Option(
        help="local, slurm or a scheduler address (tcp://host:8786). [this process]"
    ),
]
WorkersOption = Annotated[
    int, typer.Option(min=1, help="Worker processes (local) or SLURM jobs.")
]
GpusOption = Annotated[
    int, typer.Option("--slurm-gpus", min=0, help="SLURM: GPUs per job.")
]
WalltimeOption = Annotated[
    str, typer.Option("--slurm-walltime", help="SLURM: job time limit HH:MM:SS.")
]
LifetimeOption = Annotated[
    str | None,
    typer.Option(
        "--slurm-lifetime",
        help="SLURM: retire each worker after this long (e.g. 1h50m) so its work "
        "moves before the walltime. [walltime - 10 min]",
    ),
]
JobCoresOption = Annotated[
    int, typer.Option("--slurm-cores", min=1, help="SLURM: CPU cores per job.")
]
JobMemoryOption = Annotated[
    str, typer.Option("--slurm-memory", help="SLURM: memory per job, e.g. 16GB.")
]


@contextlib.contextmanager
def cluster_client(scheduler: str | None, workers: int, **slurm: Any) -> Iterator:
    """A Dask client for ``--scheduler`` (``None``: yields ``None``).

    Args:
        scheduler: ``None``, ``"local"``, ``"slurm"`` or an address.
        workers: Processes or jobs.
        **slurm: Options of :func:`curvlab.store.cluster.slurm_cluster`.

    Yields:
        The client, or ``None`` for this process.
    """
    if scheduler is None:
        yield None
        return
    from curvlab.store.cluster import connect

    with connect(scheduler, workers=workers, **slurm) as client:
        yield client


def on_cluster(
    body: Callable[[Any], int],
    scheduler: str | None,
    workers: int,
    *,
    gpus: int = 0,
    walltime: str = "02:00:00",
    lifetime: str | None = None,
    cores: int = 4,
    memory: str = "16GB",
) -> int:
    """Run ``body(client)`` with the client of ``--scheduler`` and its options.

    Args:
        body: Runs the command's stages; returns the exit code.
        scheduler: ``None`` (this process), ``"local"``, ``"slurm"`` or an address.
        workers: Processes or jobs.
        gpus: ``--slurm-gpus``.
        walltime: ``--slurm-walltime``.
        lifetime: ``--slurm-lifetime``.
        cores: ``--slurm-cores``.
        memory: ``--slurm-memory``.

    Returns:
        ``body``'s exit code, or 2 (with one line) when the cluster cannot be
        had or an option is invalid.
    """
    from curvlab.cli._common import option_error

    slurm = {"gpus_per_job": gpus, "walltime": walltime, "cores": cores}
    slurm |= {"worker_lifetime": lifetime, "memory": memory}
    try:
        with cluster_client(scheduler, workers, **slurm) as client:
            return body(client)
    except (ValueError, OSError, ImportError) as error:
        return option_error(error)


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

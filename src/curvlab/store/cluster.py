"""Dask clusters for the measurements: a laptop, a scheduler address, or SLURM.

:func:`connect` gives a ``distributed.Client`` for one of three places:

- ``"local"``: a ``LocalCluster`` of ``workers`` processes with one thread each
  (Hessian products use the process's own BLAS threads; several threads in one
  process would contend for them), each offering one ``GPU`` resource when this
  machine has CUDA devices (one worker per device);
- an address such as ``"tcp://10.0.0.5:8786"``: a running scheduler (started
  with ``dask scheduler`` and ``dask worker`` by hand or by a cluster manager);
- ``"slurm"``: ``dask_jobqueue.SLURMCluster`` (the ``cluster`` extra), one
  worker per job, scaled to ``workers`` jobs: :func:`slurm_cluster` documents
  its options (GPUs per job, walltime, worker lifetime).

Measurement tasks are idempotent (a store skips what it holds), so workers may
come and go: a job that reaches its walltime or is cancelled loses only the
block it was measuring, which another worker takes again. ``--lifetime`` makes
a worker retire gracefully (its tasks move) before SLURM kills its job.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["SCHEDULERS", "connect", "slurm_cluster"]

#: The kinds of scheduler :func:`connect` knows besides an address.
SCHEDULERS = ("local", "slurm")


def slurm_cluster(
    *,
    cores: int = 4,
    memory: str = "16GB",
    gpus: int = 0,
    walltime: str = "02:00:00",
    lifetime: str | None = None,
    queue: str | None = None,
    account: str | None = None,
    python: str | None = None,
    job_extra: tuple[str, ...] = (),
    **options: Any,
):
    """A ``dask_jobqueue.SLURMCluster`` with one Dask worker per job.

    Args:
        cores: CPU cores per job (``--cpus-per-task``); the worker uses one
            thread and gives the others to PyTorch.
        memory: Memory per job (``--mem``).
        gpus: GPUs per job (``--gres=gpu:N``); the worker then offers
            ``GPU=N`` resources and measurement tasks ask for one.
        walltime: Job time limit (``-t``), ``HH:MM:SS``.
        lifetime: Let each worker retire after this long (Dask's ``--lifetime``,
            e.g. ``"1h50m"``), before the walltime, so its tasks move to other
            workers instead of being killed; default: 10 minutes before the
            walltime.
        queue: Partition (``-p``).
        account: Account (``-A``).
        python: Python on the compute nodes (default: this interpreter).
        job_extra: More ``#SBATCH`` directives, e.g. ``("--constraint=a100",)``.
        **options: Passed on to ``SLURMCluster``.

    Returns:
        The cluster (no job is submitted before it is scaled).

    Raises:
        ImportError: If ``dask-jobqueue`` is not installed (extra ``cluster``).
        ValueError: If ``walltime`` is not ``HH:MM:SS`` or a count is negative.

    Example:
        >>> cluster = slurm_cluster(gpus=1, walltime="01:00:00")  # doctest: +SKIP
        >>> print(cluster.job_script())  # doctest: +SKIP
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            "SLURM needs dask-jobqueue: pip install 'curvlab[cluster]'."
        ) from error
    if cores < 1 or gpus < 0:
        raise ValueError(f"cores must be >= 1 and gpus >= 0. Got {cores}, {gpus}.")
    parts = walltime.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"walltime must be HH:MM:SS. Got {walltime!r}.")
    if lifetime is None:
        hours, minutes, seconds = (int(p) for p in parts)
        total = max(hours * 3600 + minutes * 60 + seconds - 600, 60)
        lifetime = f"{total}s"
    worker_args = ["--lifetime", lifetime, "--lifetime-stagger", "2m"]
    if gpus:
        worker_args += ["--resources", f"GPU={gpus}"]
    directives = list(job_extra) + ([f"--gres=gpu:{gpus}"] if gpus else [])
    return SLURMCluster(
        cores=1,
        processes=1,
        memory=memory,
        walltime=walltime,
        queue=queue,
        account=account,
        python=python or os.environ.get("CURVLAB_SLURM_PYTHON") or _python(),
        job_cpu=cores,
        job_extra_directives=directives,
        worker_extra_args=worker_args,
        **options,
    )


def _python() -> str:
    import sys

    return sys.executable


@contextlib.contextmanager
def connect(
    scheduler: str = "local", *, workers: int = 2, **slurm: Any
) -> Iterator[Any]:
    """A Dask client for ``scheduler``, closed (and its cluster) on exit.

    Args:
        scheduler: ``"local"``, ``"slurm"`` or a scheduler address.
        workers: Worker processes (``"local"``) or jobs (``"slurm"``); ignored
            for an address.
        **slurm: Options of :func:`slurm_cluster`.

    Yields:
        The ``distributed.Client``.

    Raises:
        ValueError: If ``workers < 1``.
        OSError: If the scheduler cannot be reached.
    """
    from distributed import Client, LocalCluster

    if workers < 1:
        raise ValueError(f"workers must be >= 1. Got {workers}.")
    cluster = None
    if scheduler == "local":
        gpus = torch.cuda.device_count()
        cluster = LocalCluster(
            n_workers=min(workers, gpus) if gpus else workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            resources={"GPU": 1} if gpus else None,
        )
    elif scheduler == "slurm":
        cluster = slurm_cluster(**slurm)
        cluster.scale(jobs=workers)
    target = cluster if cluster is not None else scheduler
    try:
        client = Client(target, timeout="30s")
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

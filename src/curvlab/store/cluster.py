"""Dask clusters for the measurements: a laptop, a scheduler address, or SLURM.

:func:`connect` gives a ``distributed.Client`` for one of three places:

- ``"local"``: a ``LocalCluster`` of ``workers`` processes with one thread each
  (Hessian products use the process's own BLAS threads), each offering one
  ``GPU`` resource when this machine has CUDA devices (one worker per device);
- an address such as ``"tcp://10.0.0.5:8786"``: a running scheduler (started
  with ``dask scheduler`` and ``dask worker`` by hand or by a cluster manager);
- ``"slurm"``: :func:`slurm_cluster` (``dask-jobqueue``, extra ``cluster``),
  scaled to ``workers`` jobs. Each SLURM job runs ``processes`` Dask workers
  (one per GPU when there are GPUs, each offering the resource ``GPU=1``, which
  :func:`~curvlab.store.measure` then asks for). Workers retire before the
  job's walltime runs out (``worker_lifetime``, staggered), so that no task is
  cut off by SLURM; their unfinished blocks are measured again elsewhere (tasks
  are idempotent).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["connect", "slurm_cluster"]


def _minutes(walltime: str) -> int:
    parts = [int(p) for p in walltime.replace("-", ":").split(":")]
    days = parts.pop(0) if "-" in walltime else 0
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return days * 1440 + hours * 60 + minutes + (seconds > 0)


def slurm_cluster(
    *,
    gpus_per_job: int = 0,
    cores: int = 4,
    memory: str = "16GB",
    walltime: str = "02:00:00",
    worker_lifetime: str | None = None,
    queue: str | None = None,
    account: str | None = None,
    job_extra_directives: list[str] | None = None,
    **kwargs,
):
    """Build a ``dask_jobqueue.SLURMCluster`` for measuring a store.

    Scale it with ``cluster.scale(jobs=n)`` and pass ``Client(cluster)`` to
    :func:`~curvlab.store.measure`.

    Args:
        gpus_per_job: GPUs per job (``--gres=gpu:N``); one worker process per
            GPU, each with the resource ``GPU=1``. 0: one worker on CPUs.
        cores: CPU cores per job.
        memory: Memory per job (e.g. ``"32GB"``).
        walltime: SLURM walltime ``[D-]HH:MM:SS``.
        worker_lifetime: How long a worker runs before it retires (e.g.
            ``"110m"``); default: the walltime minus 10 minutes (at least 5).
            Workers are staggered by up to 5 minutes.
        queue: SLURM partition.
        account: SLURM account.
        job_extra_directives: More ``#SBATCH`` options.
        **kwargs: Passed on to ``SLURMCluster``.

    Returns:
        The cluster (no job submitted yet).

    Raises:
        ImportError: If ``dask-jobqueue`` is not installed.
        ValueError: If ``gpus_per_job`` is negative.
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "slurm_cluster needs dask-jobqueue: pip install 'curvlab[cluster]'."
        ) from error
    if gpus_per_job < 0:
        raise ValueError(f"gpus_per_job must be at least 0. Got {gpus_per_job}.")
    if worker_lifetime is None:
        worker_lifetime = f"{max(5, _minutes(walltime) - 10)}m"
    directives = list(job_extra_directives or [])
    worker_args = ["--lifetime", worker_lifetime, "--lifetime-stagger", "5m"]
    if gpus_per_job:
        directives.append(f"--gres=gpu:{gpus_per_job}")
        worker_args += ["--resources", "GPU=1"]
    return SLURMCluster(
        cores=cores,
        processes=max(1, gpus_per_job),
        memory=memory,
        walltime=walltime,
        queue=queue,
        account=account,
        job_extra_directives=directives,
        worker_extra_args=worker_args,
        **kwargs,
    )


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

"""A Dask cluster on SLURM for :func:`curvlab.store.measure` (``dask-jobqueue``).

Each SLURM job runs ``processes`` Dask workers (one per GPU when there are
GPUs, each offering the resource ``GPU=1``, which :func:`~curvlab.store.measure`
then asks for). Workers retire before the job's walltime runs out
(``worker_lifetime``, staggered), so that no task is cut off by SLURM; their
unfinished blocks are measured again elsewhere (tasks are idempotent). Needs
the extra ``cluster`` (``pip install curvlab[cluster]``).
"""

from __future__ import annotations

__all__ = ["slurm_cluster"]


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

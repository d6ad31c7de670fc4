"""Dask clusters for measurements: SLURM job scripts, and SLURM faked on loopback."""

import subprocess
import time

import dask
import pytest

from curvlab.store.cluster import connect, slurm_cluster

pytest.importorskip("dask_jobqueue")

LOOPBACK = {"jobqueue.slurm.scheduler-options": {"host": "127.0.0.1"}}


def test_slurm_job_script_has_the_documented_options():
    with dask.config.set(LOOPBACK):
        cluster = slurm_cluster(
            cores=8,
            memory="32GB",
            gpus=2,
            walltime="01:30:00",
            queue="gpu",
            account="lab",
            job_extra=("--constraint=a100",),
        )
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    for line in (
        "#SBATCH -p gpu",
        "#SBATCH -A lab",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH -t 01:30:00",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --constraint=a100",
    ):
        assert line in lines, script
    assert any(line.startswith("#SBATCH --mem=") for line in lines)
    worker = lines[-1]
    # one thread per worker; retire 10 minutes before the walltime; GPUs offered
    for part in ("--nthreads 1", "--lifetime 4800s", "--resources GPU=2"):
        assert part in worker, worker
    assert "tcp://127.0.0.1:" in worker


@pytest.mark.parametrize(
    ("options", "message"),
    [({"walltime": "90"}, "HH:MM:SS"), ({"gpus": -1}, "gpus >= 0")],
)
def test_bad_slurm_options(options, message):
    with pytest.raises(ValueError, match=message):
        slurm_cluster(**options)


def _alive(job_id: str) -> bool:
    return subprocess.run(["kill", "-0", job_id], capture_output=True).returncode == 0


@pytest.mark.slow
def test_fake_slurm_jobs_run_workers_and_a_cancelled_job_stops(fake_slurm):
    with connect("slurm", workers=2, walltime="00:20:00", cores=1) as client:
        client.wait_for_workers(2, timeout=120)
        jobs = [job.job_id for job in client.cluster.workers.values()]
        assert len(jobs) == 2
        assert all(_alive(job) for job in jobs)
        assert client.submit(sum, [1, 2], pure=False).result(timeout=60) == 3
        subprocess.run(["scancel", jobs[0]], check=True)
        client.wait_for_workers(1, timeout=60)
        assert client.submit(sum, [3, 4], pure=False).result(timeout=60) == 7
    deadline = time.monotonic() + 60  # closing the cluster cancels its jobs
    while any(_alive(job) for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(job) for job in jobs)

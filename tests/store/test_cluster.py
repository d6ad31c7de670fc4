"""SLURM job scripts line by line, and SLURM faked on loopback (sbatch/scancel)."""

import subprocess
import time

import pytest

from curvlab.store.cluster import _minutes, connect, slurm_cluster

pytest.importorskip("dask_jobqueue")

LOOPBACK = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}


def test_job_script_has_gpus_walltime_and_lifetime():
    cluster = slurm_cluster(
        gpus_per_job=4,
        cores=16,
        memory="64GB",
        walltime="04:00:00",
        queue="gpu",
        account="lab",
        scheduler_options=LOOPBACK,
    )
    try:
        lines = cluster.job_script().splitlines()
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:4" in lines
    assert "#SBATCH -t 04:00:00" in lines
    assert "#SBATCH -p gpu" in lines
    assert "#SBATCH -A lab" in lines
    assert "#SBATCH --cpus-per-task=16" in lines
    command = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert "--nworkers 4" in command
    assert "--resources GPU=1" in command
    assert "--lifetime 230m" in command
    assert "--lifetime-stagger 5m" in command


def test_cpu_job_and_walltime_parsing():
    cluster = slurm_cluster(walltime="1-00:30:00", scheduler_options=LOOPBACK)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "--gres" not in script
    assert "GPU=1" not in script
    assert "--lifetime 1460m" in script
    assert _minutes("00:20:30") == 21
    with pytest.raises(ValueError, match="gpus_per_job"):
        slurm_cluster(gpus_per_job=-1)


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

"""Measuring and solving on a 2-worker LocalCluster (loopback only)."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import dask
import pytest
import torch

import curvlab as cl
from curvlab.linalg import sketch_plan, sketched_eigh
from curvlab.store.solve import outer_qr

from ._ops import Maker, matrix

distributed = pytest.importorskip("distributed")

D, K, S, P, SEED = 96, 5, 12, 4, 7


@pytest.fixture(scope="module")
def client():
    scratch = Path(tempfile.mkdtemp(prefix="curvlab-dask-test-"))
    try:
        # a task is given up after killing 2 workers (a worker killed once is retried)
        with (
            dask.config.set({"distributed.scheduler.allowed-failures": 1}),
            distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",  # loopback only
                local_directory=str(scratch),
                worker_class=distributed.Nanny,
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _plan():
    return sketch_plan(((D, D), torch.float64, "cpu"), K, S, seed=SEED)


def _builds(log: Path) -> Counter:
    return Counter(log.read_text().split()) if log.exists() else Counter()


def test_dask_result_equals_in_ram_sketched_eigh(client, tmp_dir):
    store = cl.store.create(tmp_dir / "s", _plan(), num_probes=P)
    log = tmp_dir / "builds.log"
    result = cl.store.measure(
        store, Maker(D, log=log), client=client, block_size=2, progress=False
    )
    assert result.measured == list(range(S))
    assert result.probes_measured == list(range(P))
    builds = _builds(log)
    assert len(builds) <= 2  # one build per worker process, never per task
    assert set(builds.values()) == {1}
    solved = cl.store.solve(store, client=client, block_rows=20, progress=False)
    ref = sketched_eigh(matrix(D), K, S, seed=SEED)
    torch.testing.assert_close(solved.eigenvalues, ref.eigenvalues, rtol=1e-10, atol=0)
    W, V = solved.eigenvectors.to_tensor(), ref.eigenvectors
    assert float(torch.linalg.matrix_norm(W @ W.T - V @ V.T, ord=2)) < 1e-8
    local = cl.store.solve(store, out=tmp_dir / "local", block_rows=20, progress=False)
    torch.testing.assert_close(
        solved.eigenvalues, local.eigenvalues, rtol=1e-12, atol=0
    )
    R, _ = outer_qr(store, client=client, block_rows=20)
    Rh = torch.linalg.qr(store.read("sketch", range(K))).R
    torch.testing.assert_close(
        R, torch.sign(Rh.diagonal())[:, None] * Rh, rtol=1e-12, atol=1e-14
    )


def test_a_worker_killed_mid_run_does_not_stop_the_call(client, tmp_dir):
    store = cl.store.create(tmp_dir / "s", _plan(), num_probes=P)
    log = tmp_dir / "builds.log"
    maker = Maker(D, log=log, kill_after=2, marker=tmp_dir / "killed")
    result = cl.store.measure(store, maker, client=client, block_size=2, progress=False)
    assert (tmp_dir / "killed").exists()
    assert result.missing == []
    assert result.probes_missing == []
    assert store.verify() == []
    assert set(_builds(log).values()) == {1}  # once per worker process
    assert len(_builds(log)) >= 2
    reference = cl.store.create(tmp_dir / "r", _plan(), num_probes=P)
    cl.store.measure(reference, Maker(D), block_size=2, progress=False)
    torch.testing.assert_close(store.read(), reference.read(), rtol=1e-13, atol=0)


def test_a_poison_task_gives_one_clear_message(client, tmp_dir):
    plan = _plan()
    store = cl.store.create(tmp_dir / "s", plan, num_probes=0)
    maker = Maker(D, poison=plan.test_columns([5])[:, 0])
    with pytest.raises(cl.store.MeasurementError) as info:
        cl.store.measure(store, maker, client=client, block_size=2, progress=False)
    message = str(info.value)
    assert "KilledWorker" in message
    # tasks queued on a worker that died twice are named too (Dask counts them)
    named = re.search(r"sketch measurements ([\d, -]+):", message).group(1)
    indices = set()
    for run in named.split(", "):
        a, _, b = run.partition("-")
        indices |= set(range(int(a), int(b or a) + 1))
    assert {4, 5} <= indices
    assert set(store.status().missing) == indices


def test_tasks_ask_for_a_gpu_only_when_workers_offer_one(client):
    from curvlab.store.measure import _gpu_resources

    assert _gpu_resources(client) is None

    class Fake:
        def scheduler_info(self, n_workers=-1):
            return {"workers": {"a": {"resources": {"GPU": 1}}, "b": {}}}

    assert _gpu_resources(Fake()) == {"GPU": 1}

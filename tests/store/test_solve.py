"""Measuring in processes, the streamed CholeskyQR2, the out-of-core solve."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

import curvlab as cl
from curvlab.linalg import a_posteriori_error, measure, sketch_plan, sketched_eigh
from curvlab.store.cholqr import r_inverse
from curvlab.store.solve import _eigenvector_map, outer_qr
from curvlab.subspace import mask_overlap, overlap_curve

from ._ops import Maker, matrix, measure_in_process

D, K, S, P, SEED = 120, 6, 14, 5, 3


def _plan():
    return sketch_plan(((D, D), torch.float64, "cpu"), K, S, seed=SEED)


def _subspace_distance(U, V):
    return float(torch.linalg.matrix_norm(U @ U.T - V @ V.T, ord=2))


# ------------------------------------------------------------------ CholeskyQR2
def test_cholesky_qr2_equals_householder_qr_in_float64():
    Y = torch.randn(
        3000, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    Q, R, info = cl.store.cholesky_qr2(Y, block_rows=256)
    Qh, Rh = torch.linalg.qr(Y)
    signs = torch.sign(Rh.diagonal())
    torch.testing.assert_close(R, signs[:, None] * Rh, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Q, Qh * signs, rtol=0, atol=1e-12)
    assert info.passes == 2
    assert not info.shifted


def test_cholesky_qr2_shifts_an_ill_conditioned_gram():
    g = torch.Generator().manual_seed(1)
    U = torch.linalg.qr(torch.randn(2000, 30, dtype=torch.float64, generator=g)).Q
    V = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64, generator=g)).Q
    Y = (U * torch.logspace(0, -11, 30, dtype=torch.float64)) @ V.T  # kappa 1e11
    with pytest.raises(ValueError, match="not positive definite"):
        cl.store.cholqr.cholesky_step(Y.T @ Y, 2000, allow_shift=False)
    Q, R, info = cl.store.cholesky_qr2(Y, block_rows=300)
    assert info.shifted
    assert info.passes == 3
    assert info.gram_condition > 1e14
    eye = torch.eye(30, dtype=torch.float64)
    assert float(torch.linalg.matrix_norm(Q.T @ Q - eye)) < 1e-13
    assert (
        float(torch.linalg.matrix_norm(Q @ R - Y) / torch.linalg.matrix_norm(Y)) < 1e-14
    )


# --------------------------------------------------------------------- measuring
@pytest.fixture
def measured(tmp_dir):
    store = cl.store.create(tmp_dir / "s", _plan(), num_probes=P)
    cl.store.measure(store, Maker(D), progress=False, block_size=4)
    return store


def test_two_writer_processes_store_the_in_ram_measurements_bitwise(tmp_dir):
    store = cl.store.create(tmp_dir / "s", _plan(), num_probes=0)
    spawn = multiprocessing.get_context("spawn")
    halves = [list(range(0, S, 2)), list(range(1, S, 2))]  # blocks of 2 per writer
    writers = [
        spawn.Process(target=measure_in_process, args=(str(store.path), h, Maker(D)))
        for h in halves
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    assert store.status().complete
    A, plan = matrix(D), _plan()
    for half in halves:
        for j in range(0, len(half), 2):
            block = half[j : j + 2]
            assert torch.equal(store.read("sketch", block), measure(A, plan, block))


def test_killed_job_rerun_computes_exactly_the_missing(tmp_dir):
    store = cl.store.create(tmp_dir / "s", _plan(), num_probes=P)
    spawn = multiprocessing.get_context("spawn")
    dying = Maker(D, kill_after=4)  # dies in its 4th product: 3 blocks of 2 stored
    job = spawn.Process(
        target=measure_in_process, args=(str(store.path), list(range(S)), dying)
    )
    job.start()
    job.join(timeout=120)
    assert job.exitcode == -9
    missing = store.status().missing
    assert missing == list(range(6, S))

    counted = []

    class Counting(Maker):
        def __call__(self):
            op = super().__call__()
            matmul = op.__matmul__

            def count(X):
                counted.append(X.shape[1])
                return matmul(X)

            op.__matmul__ = count
            return _Wrap(op)

    result = cl.store.measure(store, Counting(D), progress=False)
    assert result.measured == missing
    assert result.probes_measured == list(range(P))
    assert sum(counted) == len(missing) + P
    assert store.status().complete


class _Wrap:
    def __init__(self, op):
        self.op, self.shape, self.dtype, self.device = op, op.shape, op.dtype, op.device

    def __matmul__(self, X):
        return self.op.__matmul__(X)


def test_measure_is_idempotent(measured):
    result = cl.store.measure(measured, Maker(D), progress=False)
    assert result.measured == []
    assert result.probes_measured == []
    assert result.missing == []


# ------------------------------------------------------------------------ solve
def test_solve_equals_in_ram_sketched_eigh(measured):
    A = matrix(D)
    ref = sketched_eigh(A, K, S, seed=SEED)
    result = cl.store.solve(measured, progress=False, block_rows=32)
    torch.testing.assert_close(result.eigenvalues, ref.eigenvalues, rtol=1e-10, atol=0)
    W = result.eigenvectors.to_tensor()
    assert _subspace_distance(W, ref.eigenvectors) < 1e-8
    cert = a_posteriori_error(A, ref, num_probes=P, seed=SEED)
    assert result.a_posteriori.error_sq == pytest.approx(cert.error_sq, rel=1e-10)
    assert result.a_posteriori.op_norm_sq == pytest.approx(cert.op_norm_sq, rel=1e-12)
    loaded = cl.store.load_result(result.path)
    assert torch.equal(loaded.eigenvalues, result.eigenvalues)
    assert loaded.a_posteriori.error_sq == pytest.approx(cert.error_sq, rel=1e-10)


def test_outer_qr_equals_in_ram_qr(measured):
    Y = measured.read("sketch", range(K))
    R, info = outer_qr(measured, block_rows=32)
    Rh = torch.linalg.qr(Y).R
    torch.testing.assert_close(
        R, torch.sign(Rh.diagonal())[:, None] * Rh, rtol=1e-12, atol=1e-14
    )
    assert info.passes == 2


def test_stored_eigenvectors_read_gather_and_overlaps(measured):
    result = cl.store.solve(measured, progress=False, block_rows=32)
    V = result.eigenvectors
    W = V.to_tensor()
    assert V.shape == (D, K)
    assert torch.equal(V.read(slice(30, 70)), W[30:70])
    rows = torch.tensor([100, 3, 64, 31, 32])
    assert torch.equal(V.gather(rows), W[rows])
    theta = torch.randn(
        D, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    mask = torch.tensor([1, 5, 40, 99])
    assert cl.store.mask_overlap(mask, V) == mask_overlap(mask, W)
    for eigenspace in ("top_k", "all"):
        ks = [1, 3, K] if eigenspace == "top_k" else [1, 3, K, 50]
        a = cl.store.overlap_curve(theta, V, ks, eigenspace=eigenspace, num_random=3)
        b = overlap_curve(theta, W, ks, eigenspace=eigenspace, num_random=3)
        assert torch.equal(a.magnitude, b.magnitude)
        assert torch.equal(a.random, b.random)
        torch.testing.assert_close(a.best, b.best, rtol=1e-14, atol=0)
        assert torch.equal(a.chance, b.chance)


def test_float32_store_merges_the_eigenvector_map(tmp_dir):
    plan = sketch_plan(((D, D), torch.float32, "cpu"), K, S, seed=SEED)
    store = cl.store.create(tmp_dir / "f", plan, num_probes=P)
    A = matrix(D).float()
    cl.store.measure(store, lambda: A, progress=False)
    result = cl.store.solve(store, progress=False, block_rows=32)
    assert not result.qr.shifted
    W = result.eigenvectors.to_tensor().double()
    assert W.dtype == torch.float64
    eye = torch.eye(K, dtype=torch.float64)
    assert float(torch.linalg.matrix_norm(W.T @ W - eye)) < 1e-6
    ref = sketched_eigh(A, K, S, seed=SEED)
    torch.testing.assert_close(result.eigenvalues, ref.eigenvalues, rtol=1e-4, atol=0)
    assert _subspace_distance(W, ref.eigenvectors.double()) < 1e-4
    T = r_inverse([torch.eye(K, dtype=torch.float64)] * 2)
    info = result.qr
    merged = _eigenvector_map(T, T[0], info, torch.float32)
    assert len(merged) == 1
    assert len(_eigenvector_map(T, T[0], info, torch.float64)) == 2

"""Magnitude-mask overlap from SEIGH against the dense eigenbasis on digits_mlp.

For a mask ``M`` of size ``k`` and two orthonormal bases ``U`` (exact top-k) and
``W`` (sketched top-k), ``ov_U - ov_W = tr(P_M (P_U - P_W)) / k``, so
``|ov_U - ov_W| <= ||P_U - P_W||_2 = sin θ_max(U, W)``; and by the Davis–Kahan
sin θ theorem ``sin θ_max <= ||H - Ĥ||_2 / δ_k`` with ``δ_k`` the distance between
the sketch's top-k eigenvalues and the exact eigenvalues outside the top k. The
overlap from the sketch is therefore within the sketch's error of the exact one,
which this test checks on a briefly trained digits_mlp (float64, dense truth).
"""

import pytest
import torch

import curvlab as cl
from curvlab.subspace import magnitude_mask, mask_overlap, principal_angles

KS = (1, 5, 10, 20, 40)


@pytest.fixture(scope="module")
def hessian_and_params():
    """Dense Hessian of digits_mlp on 100 balanced samples after 200 SGD steps."""
    problem = cl.problems.get("digits_mlp", dtype=torch.float64, num_samples=100)
    model, loss_fn = problem.model, problem.loss_fn
    X, y = next(iter(problem.train_data))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        loss_fn(model(X), y).backward()
        optimizer.step()
    H = cl.HessianOperator(model, loss_fn, [(X, y)])
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return H, H.to_dense(), params


def _top_by_magnitude(values, vectors, k):
    order = torch.argsort(values.abs(), descending=True)
    return values[order], vectors[:, order[:k]]


def test_sketched_overlap_within_the_sketch_error(hessian_and_params):
    H, dense, params = hessian_and_params
    dense = (dense + dense.T) / 2
    values, vectors = torch.linalg.eigh(dense)
    K = max(KS)
    sketch = cl.linalg.sketched_eigh(H, num_outer=4 * K, num_inner=8 * K, seed=0)
    approx = (sketch.eigenvectors * sketch.eigenvalues) @ sketch.eigenvectors.T
    error_2 = float(torch.linalg.matrix_norm(dense - approx, ord=2))
    exact_sorted, _ = _top_by_magnitude(values, vectors, K)
    checked = 0
    for k in KS:
        _, U = _top_by_magnitude(values, vectors, k)
        W = sketch.eigenvectors[:, :k]
        mask = magnitude_mask(params, k)
        difference = abs(mask_overlap(mask, U) - mask_overlap(mask, W))
        sin_max = float(torch.sin(principal_angles(U, W).max()))
        assert difference <= sin_max + 1e-12
        # Davis–Kahan gap: sketch's top-k against the exact spectrum beyond k
        rest = exact_sorted[k:]
        gap = float((sketch.eigenvalues[:k, None] - rest[None, :]).abs().min())
        if gap > 0:
            assert sin_max <= error_2 / gap + 1e-12
            checked += 1
    assert checked >= 1
    # the certificate sees the error it has to explain (30 probes: within 2x)
    estimate = cl.linalg.a_posteriori_error(H, sketch, num_probes=30, seed=1)
    exact_fro = float(torch.linalg.matrix_norm(dense - approx))
    assert 0.5 * exact_fro <= estimate.error <= 2 * exact_fro

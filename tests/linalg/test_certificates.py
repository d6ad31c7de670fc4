"""A-posteriori error estimates, their probability bounds and the scree bounds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from curvlab.linalg import (
    a_posteriori_bounds,
    a_posteriori_error,
    scree_bounds,
    sketch_plan,
    sketched_eigh,
    sketched_svd,
    synthetic,
)
from curvlab.linalg.certificates import PROBE_ROLE
from curvlab.linalg.ssrft import GaussianTestMatrix

F64 = torch.float64


def _fro(A):
    return float(torch.linalg.matrix_norm(A))


def test_bounds_match_published_numbers():
    """papers.md §1.4 (logged in the SEIGH paper's 20b run) for p = 30."""
    expected = {0.25: (0.568, 0.668), 0.5: (0.0552, 0.2422), 1.0: (0.0, 0.0100)}
    for eps, (under, over) in expected.items():
        got = a_posteriori_bounds(30, eps)
        assert got[0] == pytest.approx(under, abs=5e-4)
        assert got[1] == pytest.approx(over, abs=5e-4)
    assert a_posteriori_bounds(30, 2.0)[0] == 0.0
    # more probes, tighter bounds
    assert a_posteriori_bounds(100, 0.5)[1] < a_posteriori_bounds(30, 0.5)[1]


def test_bounds_bad_input():
    with pytest.raises(ValueError, match="at least 1"):
        a_posteriori_bounds(0, 0.5)
    with pytest.raises(TypeError, match="must be an int"):
        a_posteriori_bounds(3.0, 0.5)
    with pytest.raises(ValueError, match="epsilon must be positive"):
        a_posteriori_bounds(30, 0.0)


def _approx_with_error(kind: str, seed: int = 0):
    """``A``, an eigenpair approximation of it and the exact ||A - Â||_F^2."""
    dim = 100
    Q = synthetic.random_orthogonal(dim, seed=seed)
    values = torch.linspace(3, 1, 5, dtype=F64)
    approx = (values, Q[:, :5])
    if kind == "rank_one":  # the worst case of the bounds: one error direction
        E = 0.5 * torch.outer(Q[:, 7], Q[:, 7])
    else:  # error spread over all remaining directions
        E = (Q[:, 5:] * 0.05) @ Q[:, 5:].T
    A = (Q[:, :5] * values) @ Q[:, :5].T + E
    return A, approx, _fro(E) ** 2


@pytest.mark.parametrize("kind", ["rank_one", "spread"])
@pytest.mark.parametrize("num_probes", [4, 30])
def test_misestimation_frequency_below_bounds(kind, num_probes):
    A, approx, exact = _approx_with_error(kind)
    estimates = torch.tensor(
        [
            a_posteriori_error(A, approx, num_probes=num_probes, seed=s).error_sq
            for s in range(200)
        ],
        dtype=F64,
    )
    for eps in (0.25, 0.5, 1.0):
        under, over = a_posteriori_bounds(num_probes, eps)
        assert float((estimates <= (1 - eps) * exact).double().mean()) <= under
        assert float((estimates >= (1 + eps) * exact).double().mean()) <= over
    # unbiased: the mean of 200 estimates is close to the truth
    assert float(estimates.mean()) == pytest.approx(exact, rel=0.15)


def test_estimates_of_a_sketch():
    A, _ = synthetic.polynomial_decay(120, 5, 1.0, seed=3)
    result = sketched_eigh(A, 10, 20, seed=1)
    exact = _fro(A - result.to_dense())
    cert = a_posteriori_error(A, result, num_probes=30, seed=4)
    assert cert.num_matvecs == cert.num_probes == 30
    assert cert.error == pytest.approx(cert.error_sq**0.5)
    assert 0.5 < cert.error / exact < 1.5
    assert cert.approx_norm_sq == pytest.approx(_fro(result.to_dense()) ** 2)
    assert cert.op_norm_sq == pytest.approx(_fro(A) ** 2, rel=0.5)
    assert cert.relative_error == pytest.approx(cert.error / cert.op_norm_sq**0.5)
    assert cert.samples.shape == (30,)
    assert cert.bounds[2] == (0.5, *a_posteriori_bounds(30, 0.5))
    # averaging many seeds converges to the exact squared error
    mean = sum(
        a_posteriori_error(A, result, num_probes=30, seed=s).error_sq for s in range(40)
    )
    assert mean / 40 == pytest.approx(exact**2, rel=0.1)


def test_exact_sketch_certifies_zero_error():
    A, _ = synthetic.low_rank(60, 4, seed=0)
    cert = a_posteriori_error(A, sketched_eigh(A, 5, 10))
    assert cert.error < 1e-10
    assert cert.relative_error < 1e-10
    assert float(cert.scree_upper[4]) < 1e-10


def test_scree_bounds_contain_true_scree_with_exact_error():
    A, lam = synthetic.exponential_decay(150, 3, 0.1, seed=2)
    result = sketched_eigh(A, 15, 30, seed=0)
    error, norm = _fro(A - result.to_dense()), _fro(A)
    lower, upper = scree_bounds(result.eigenvalues, error, norm)
    assert lower.shape == upper.shape == (16,)
    tails = (lam**2).flip(0).cumsum(0).flip(0)[:16]  # ||A - [[A]]_r||_F^2, r=0..15
    true = tails / norm**2
    assert bool((true <= upper + 1e-12).all())  # a theorem with the exact error
    assert float(lower[-1]) == 0.0
    assert bool((lower[1:] <= lower[:-1]).all())
    assert bool((upper[1:] <= upper[:-1]).all())
    assert float(lower[0]) == pytest.approx(_fro(result.to_dense()) ** 2 / norm**2)
    # the lower proxy tracks the true curve where the sketch is accurate
    torch.testing.assert_close(lower[:4], true[:4], rtol=0.2, atol=0)


def test_certificate_carries_scree_bounds():
    A, _ = synthetic.polynomial_decay(100, 4, 2.0, seed=0)
    result = sketched_eigh(A, 10, 20)
    cert = a_posteriori_error(A, result, seed=1)
    lower, upper = scree_bounds(result.eigenvalues, cert.error, cert.op_norm_sq**0.5)
    torch.testing.assert_close(cert.scree_lower, lower)
    torch.testing.assert_close(cert.scree_upper, upper)


def test_rank_truncation_and_input_forms():
    A, _ = synthetic.indefinite(80, 8, seed=1)
    result = sketched_eigh(A, 10, 20)
    a = a_posteriori_error(A, result, rank=4, seed=2)
    b = a_posteriori_error(A, result.truncate(4), seed=2)
    assert a.error_sq == pytest.approx(b.error_sq, rel=1e-12)
    assert a.scree_lower.shape == (5,)
    # pairs, in any order, and objects with eigvals/eigvecs
    perm = torch.tensor([3, 0, 9, 1, 2, 4, 5, 6, 7, 8])
    pair = (result.eigenvalues[perm], result.eigenvectors[:, perm])
    c = a_posteriori_error(A, pair, seed=2)
    d = a_posteriori_error(A, result, seed=2)
    assert c.error_sq == pytest.approx(d.error_sq, rel=1e-12)
    torch.testing.assert_close(c.scree_lower, d.scree_lower)
    lanczos_like = SimpleNamespace(eigvals=pair[0], eigvecs=pair[1])
    assert a_posteriori_error(A, lanczos_like, seed=2).error_sq == pytest.approx(
        d.error_sq, rel=1e-12
    )
    e = a_posteriori_error(A, pair, rank=4, seed=2)
    assert e.error_sq == pytest.approx(a.error_sq, rel=1e-12)


def test_svd_certificate_on_rectangular():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(70, 5, generator=g, dtype=F64) @ torch.randn(
        5, 40, generator=g, dtype=F64
    )
    A = A + 1e-2 * torch.randn(70, 40, generator=g, dtype=F64)
    result = sketched_svd(A, 6, 12)
    exact = _fro(A - result.to_dense())
    cert = a_posteriori_error(A, result, num_probes=30)
    assert 0.5 < cert.error / exact < 1.5
    assert cert.approx_norm_sq == pytest.approx(float((result.S**2).sum()))
    assert cert.scree_lower.shape == (7,)


def test_probes_independent_of_sketch_streams():
    plan = sketch_plan(((50, 50), F64, "cpu"), 10, 30, test_matrix="gaussian", seed=0)
    probes = GaussianTestMatrix(50, 30, seed=0, role=PROBE_ROLE).to_dense()
    sketch = plan.right.to_dense()
    assert PROBE_ROLE not in (0, 1, 2)
    cosines = (probes / probes.norm(dim=0)).T @ (sketch / sketch.norm(dim=0))
    assert float(cosines.abs().max()) < 0.9  # no column shared


def test_bad_input():
    A, _ = synthetic.low_rank(30, 2)
    result = sketched_eigh(A, 3, 6)
    with pytest.raises(ValueError, match="num_probes must be at least 1"):
        a_posteriori_error(A, result, num_probes=0)
    with pytest.raises(TypeError, match="num_probes must be an int"):
        a_posteriori_error(A, result, num_probes=2.5)
    with pytest.raises(ValueError, match=r"op has shape \(20, 20\), the approximation"):
        a_posteriori_error(A[:20, :20], result)
    with pytest.raises(TypeError, match="approx must be a SketchedEigh"):
        a_posteriori_error(A, "not a decomposition")
    with pytest.raises(ValueError, match=r"eigenvalues \(k,\) and eigenvectors"):
        a_posteriori_error(A, (torch.ones(3, dtype=F64), torch.ones(30, 2, dtype=F64)))
    with pytest.raises(ValueError, match=r"rank must lie in \[1, 3\]"):
        a_posteriori_error(A, result, rank=4)
    with pytest.raises(ValueError, match="descending magnitude"):
        scree_bounds(torch.tensor([1.0, 2.0]), 0.1, 1.0)
    with pytest.raises(ValueError, match="norm must be positive"):
        scree_bounds(torch.tensor([2.0, 1.0]), 0.1, 0.0)

    class Broken:
        shape, dtype, device = (30, 30), F64, torch.device("cpu")

        def __matmul__(self, X):
            return X * float("inf")

    with pytest.raises(FloatingPointError, match="a-posteriori probes"):
        a_posteriori_error(Broken(), result)

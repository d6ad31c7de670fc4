"""Diagonal estimators (Hutchinson/Bekas et al., XDiag).

Statistical tests use fixed seeds; tolerances leave several standard errors of
margin (checked for other seed ranges too).
"""

import math
import statistics

import pytest
import torch

import curvlab as cl
from _truth import dense_hessian
from conftest import CASES, param_names
from curvlab.linalg import synthetic
from curvlab.linalg.diag_estimators import DiagonalEstimate, hutchinson_diagonal, xdiag
from curvlab.linalg.trace import hutchinson_trace


def _generic(dim=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return (G + G.T) / math.sqrt(2 * dim) + torch.eye(dim, dtype=torch.float64)


def _rel_errors(estimator, A, budget, seeds, **kw):
    truth = A.diagonal()
    return [
        float((estimator(A, budget, seed=s, **kw).value - truth).norm() / truth.norm())
        for s in seeds
    ]


# ------------------------------------------------------------------- exactness
def test_hutchinson_exact_on_diagonal_with_rademacher():
    d = torch.linspace(-3.0, 4.0, 25, dtype=torch.float64)
    for m in (1, 2, 17):
        est = hutchinson_diagonal(torch.diag(d), m, seed=m)
        torch.testing.assert_close(est.value, d, rtol=1e-14, atol=1e-14)
        assert est.num_matvecs == m
        if m > 1:
            assert float(est.std_error.max()) < 1e-12


def test_xdiag_exact_on_low_rank():
    # rank 4 <= m / 2 - 1: every leave-one-out basis spans range(A)
    A, _ = synthetic.low_rank(60, 4, seed=2)
    for distribution in ("rademacher", "normal", "sphere"):
        est = xdiag(A, 10, distribution=distribution, seed=1)
        torch.testing.assert_close(est.value, A.diagonal(), rtol=0, atol=1e-12)
        assert est.num_matvecs == 5 + 4  # A Q costs rank(A Ω) = 4 products


def test_hutchinson_diagonal_sums_to_hutchinson_trace():
    # same seed, same probes: with Rademacher probes the diagonal estimate sums to
    # Hutchinson's trace estimate
    A = _generic(30)
    diag = hutchinson_diagonal(A, 9, seed=4)
    assert float(diag.value.sum()) == pytest.approx(
        hutchinson_trace(A, 9, seed=4).value, rel=1e-12
    )


# ------------------------------------------------------------------ unbiasedness
@pytest.mark.parametrize(
    ("estimator", "distribution"),
    [
        (hutchinson_diagonal, "rademacher"),
        (hutchinson_diagonal, "normal"),
        (xdiag, "rademacher"),
        (xdiag, "normal"),
    ],
)
def test_unbiased(estimator, distribution):
    # entrywise mean over 150 seeds: the largest |z| of D = 20 entries below 4.5
    A, _ = synthetic.polynomial_decay(20, 3, 1.0, seed=3)
    values = torch.stack(
        [estimator(A, 6, seed=s, distribution=distribution).value for s in range(150)]
    )
    z = (values.mean(0) - A.diagonal()) / (values.std(0) / math.sqrt(150))
    assert float(z.abs().max()) < 4.5


# -------------------------------------------------------------- convergence rate
def test_hutchinson_error_falls_like_inverse_sqrt_budget():
    # 16 times the budget: the error falls by 4; accept [2.5, 6.5] (medians of 30)
    A = _generic(40)
    small = statistics.median(_rel_errors(hutchinson_diagonal, A, 8, range(30)))
    large = statistics.median(_rel_errors(hutchinson_diagonal, A, 128, range(30)))
    assert 2.5 < small / large < 6.5


def test_xdiag_beats_hutchinson_on_low_rank_plus_noise():
    # eight unit eigenvalues over a floor 1e-3: once the sketch captures the top
    # space, XDiag's error is that of the floor, orders of magnitude below
    # Hutchinson's, which sees the whole matrix
    A, _ = synthetic.low_rank_plus_noise(120, 8, 1e-3, seed=5)
    seeds = range(15)
    hutch = statistics.median(_rel_errors(hutchinson_diagonal, A, 40, seeds))
    x = statistics.median(_rel_errors(xdiag, A, 40, seeds))
    assert x < hutch / 20


def test_xdiag_converges_faster_on_decaying_spectrum():
    A, _ = synthetic.polynomial_decay(100, 5, 2.0, seed=6)
    seeds = range(15)
    small = statistics.median(_rel_errors(xdiag, A, 20, seeds))
    large = statistics.median(_rel_errors(xdiag, A, 80, seeds))
    assert small / large > 4  # Hutchinson: 2
    hutch = statistics.median(_rel_errors(hutchinson_diagonal, A, 80, seeds))
    assert large < hutch / 4


# ---------------------------------------------------------------- error estimates
def test_hutchinson_std_error_is_calibrated():
    # the reported entrywise error against the spread over seeds, averaged over
    # entries; Rademacher (exact formula) and Gaussian (delta method)
    A = _generic(30)
    for distribution in ("rademacher", "normal"):
        results = [
            hutchinson_diagonal(A, 20, seed=s, distribution=distribution)
            for s in range(150)
        ]
        spread = torch.stack([r.value for r in results]).std(0)
        reported = torch.stack([r.std_error for r in results]).median(0).values
        ratio = float((reported / spread).mean())
        assert 0.8 < ratio < 1.25, distribution


def test_xdiag_error_estimate_has_the_right_scale():
    A, _ = synthetic.polynomial_decay(60, 3, 1.0, seed=7)
    results = [xdiag(A, 20, seed=s) for s in range(60)]
    spread = torch.stack([r.value for r in results]).std(0)
    reported = torch.stack([r.std_error for r in results]).median(0).values
    assert 0.3 < float((reported / spread).median()) < 3
    assert xdiag(A, 2).std_error is None
    assert hutchinson_diagonal(A, 1).std_error is None


# --------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("estimator", [hutchinson_diagonal, xdiag])
def test_reproducible_and_independent_of_block_size(estimator):
    A = _generic(30)
    a = estimator(A, 12, seed=3)
    assert torch.equal(estimator(A, 12, seed=3).value, a.value)
    assert not torch.equal(estimator(A, 12, seed=4).value, a.value)
    for block_size in (1, 5):
        b = estimator(A, 12, seed=3, block_size=block_size)
        torch.testing.assert_close(b.value, a.value, rtol=1e-12, atol=1e-12)
    assert isinstance(a, DiagonalEstimate)


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("estimator", "budget", "needs"),
    [
        (hutchinson_diagonal, 0, "num_matvecs >= 1"),
        (xdiag, 5, "an even num_matvecs >= 2"),
        (xdiag, 0, "an even num_matvecs >= 2"),
        (xdiag, 42, "num_matvecs / 2 <= D = 20"),
    ],
)
def test_bad_budget(estimator, budget, needs):
    with pytest.raises(ValueError, match="needs") as info:
        estimator(_generic(20), budget)
    assert needs in str(info.value)
    assert f"Got num_matvecs={budget}." in str(info.value)


def test_xdiag_needs_symmetric():
    A = _generic(10)
    A[0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        xdiag(A, 4)
    hutchinson_diagonal(A, 4)  # any square operator


@pytest.mark.parametrize("estimator", [hutchinson_diagonal, xdiag])
def test_nan_operator(estimator):
    A = _generic(10)
    A[2, 2] = float("inf")
    with pytest.raises(FloatingPointError, match=estimator.__name__):
        estimator(A, 4)


# ------------------------------------------------------------ curvature operators
def test_on_hessian_operator():
    case = CASES[5]  # the CNN
    op = cl.HessianOperator(case.model, case.loss_fn, case.data)
    H = dense_hessian(case.model, case.loss_fn, case.data, param_names(case))
    H = (H + H.T) / 2  # torch.func's Hessian is symmetric only up to rounding
    for estimator in (hutchinson_diagonal, xdiag):
        a, b = estimator(op, 8, seed=1), estimator(H, 8, seed=1)
        torch.testing.assert_close(a.value, b.value, rtol=1e-9, atol=1e-12)
        assert a.value.dtype == torch.float64


# ---------------------------------------------------------------------- peers
@pytest.mark.parametrize(
    ("ours", "theirs", "kw"),
    [
        (hutchinson_diagonal, "hutchinson_diag", {"distribution": "rademacher"}),
        (xdiag, "xdiag", {}),
    ],
)
def test_same_accuracy_as_curvlinops(ours, theirs, kw):
    # same estimator, same expectation: mean relative errors over 40 seeds within a
    # factor 1.3 (the relative error of a 40-sample mean of errors is ~5%), and the
    # entrywise mean difference within 4.5 combined standard errors
    curvlinops = pytest.importorskip("curvlinops")
    A, _ = synthetic.polynomial_decay(40, 3, 1.0, seed=8)
    mine = torch.stack([ours(A, 12, seed=s).value for s in range(40)])
    peer = []
    for s in range(40):
        torch.manual_seed(1000 + s)
        peer.append(getattr(curvlinops, theirs)(A, 12, **kw))
    peer = torch.stack(peer)
    truth = A.diagonal()
    err_mine = float((mine - truth).norm(dim=1).mean())
    err_peer = float((peer - truth).norm(dim=1).mean())
    assert 1 / 1.3 < err_mine / err_peer < 1.3
    se = (mine.var(0) / 40 + peer.var(0) / 40).sqrt()
    assert float(((mine.mean(0) - peer.mean(0)) / se).abs().max()) < 4.5

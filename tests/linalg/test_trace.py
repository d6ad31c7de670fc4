"""Trace estimators (Hutchinson, Hutch++, XTrace) and the Frobenius-norm estimate.

Statistical tests use fixed seeds, so they are deterministic; their tolerances are
set from the estimators' known behaviour with margins of several standard errors, so
that they hold for other seeds too (checked for seeds 0..9 of the seed lists).
"""

import contextlib
import copy
import math
import statistics
import warnings

import pytest
import torch

import curvlab as cl
from _truth import dense_hessian
from conftest import CASES, param_names
from curvlab.linalg import synthetic
from curvlab.linalg.trace import (
    TraceEstimate,
    frobenius_norm_estimate,
    hutchinson_trace,
    hutchpp_trace,
    xtrace,
)

ESTIMATORS = {
    "hutchinson": hutchinson_trace,
    "hutchpp": hutchpp_trace,
    "xtrace": xtrace,
}


def _generic(dim=60, seed=0):
    """Symmetric matrix with a flat, indefinite spectrum (no low-rank structure)."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return (G + G.T) / math.sqrt(2 * dim) + torch.eye(dim, dtype=torch.float64)


def _errors(estimator, A, budget, seeds, **kw):
    truth = float(A.trace())
    return [estimator(A, budget, seed=s, **kw).value - truth for s in seeds]


def _median_abs(errors):
    return statistics.median(abs(e) for e in errors)


def _rms(errors):
    return math.sqrt(statistics.mean(e * e for e in errors))


# ------------------------------------------------------------------- exactness
def test_hutchinson_exact_on_diagonal_with_rademacher():
    # ω^T diag(d) ω = Σ d_i ω_i² = Σ d_i for ω_i = ±1, for every probe
    A = torch.diag(torch.linspace(-2.0, 5.0, 30, dtype=torch.float64))
    for m in (1, 3, 40):
        est = hutchinson_trace(A, m, seed=m)
        assert est.value == pytest.approx(float(A.trace()), rel=1e-13, abs=1e-13)
        assert est.num_matvecs == m


@pytest.mark.parametrize("distribution", ["rademacher", "normal", "sphere"])
def test_hutchpp_exact_on_low_rank(distribution):
    # rank 5 <= m // 3 = 6: range(Q) contains range(A), the complement term is 0
    A, lam = synthetic.low_rank(80, 5, seed=1)
    est = hutchpp_trace(A, 18, distribution=distribution, seed=3)
    assert est.value == pytest.approx(5.0, abs=1e-10)
    assert est.num_matvecs == 18


@pytest.mark.parametrize("distribution", ["rademacher", "normal", "sphere"])
def test_xtrace_exact_on_low_rank(distribution):
    # rank 5 <= m / 2 - 1 = 5: every leave-one-out basis spans range(A)
    A, _ = synthetic.low_rank(80, 5, seed=1)
    A = A * torch.linspace(1, 2, 80, dtype=torch.float64)[:, None]  # non-symmetric
    est = xtrace(A, 12, distribution=distribution, seed=3)
    assert est.value == pytest.approx(float(A.trace()), abs=1e-10)
    # numerical rank 5 < 6 probes: A Q costs 5 products, not 6
    assert est.num_matvecs == 6 + 5


def test_xtrace_and_hutchpp_exact_with_full_budget():
    A = _generic(20)
    assert hutchpp_trace(A, 60).value == pytest.approx(float(A.trace()), rel=1e-12)
    # n = D probes: A Ω has full rank, each leave-one-out basis misses one
    # direction, which the probe's own Hutchinson term on a 1-D complement gets
    # right only with the normalised ("improved") scaling
    est = xtrace(A, 40, distribution="normal")
    assert est.value == pytest.approx(float(A.trace()), rel=1e-10)


# ------------------------------------------------------------------ unbiasedness
@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
def test_unbiased(name, distribution):
    # mean error over 150 seeds within 4.5 standard errors of zero
    A, _ = synthetic.polynomial_decay(40, 3, 1.0, seed=2)
    errors = _errors(ESTIMATORS[name], A, 6, range(150), distribution=distribution)
    se = statistics.stdev(errors) / math.sqrt(len(errors))
    assert abs(statistics.mean(errors)) < 4.5 * se


# -------------------------------------------------------------- convergence rate
def test_hutchinson_error_falls_like_inverse_sqrt_budget():
    # 16 times the budget: the RMS error falls by sqrt(16) = 4. Each RMS over 100
    # seeds has a relative standard deviation of about 7%, so their ratio is within
    # [2.8, 5.7] (about 3.5 standard deviations on either side of 4)
    A = _generic(60)
    small = _rms(_errors(hutchinson_trace, A, 8, range(100)))
    large = _rms(_errors(hutchinson_trace, A, 128, range(100)))
    assert 2.8 < small / large < 5.7


def test_hutchpp_and_xtrace_converge_faster_on_decaying_spectrum():
    # eigenvalues 1 (x5) then i^-2: the tail's Frobenius norm falls fast with the
    # sketch size, so quadrupling the budget cuts the error by far more than 2
    A, _ = synthetic.polynomial_decay(120, 5, 2.0, seed=4)
    seeds = range(20)
    hutch = _median_abs(_errors(hutchinson_trace, A, 48, seeds))
    for estimator in (hutchpp_trace, xtrace):
        small = _median_abs(_errors(estimator, A, 24, seeds))
        large = _median_abs(_errors(estimator, A, 96, seeds))
        assert small / large > 6, estimator.__name__
    # equal budget: the deflated estimators beat plain Hutchinson by a wide margin
    assert _median_abs(_errors(hutchpp_trace, A, 48, seeds)) < hutch / 10
    assert _median_abs(_errors(xtrace, A, 48, seeds)) < hutch / 10


def test_xtrace_beats_hutchinson_and_hutchpp_on_low_rank_plus_noise():
    # eight unit eigenvalues over a flat floor 1e-3: the improved XTrace (default)
    # is nearly exact on a flat complement; Rademacher XTrace and Hutch++ pay for
    # the fluctuation of ||P ω||², Hutchinson for the whole matrix
    A, _ = synthetic.low_rank_plus_noise(150, 8, 1e-3, seed=5)
    seeds = range(20)
    improved = _median_abs(_errors(xtrace, A, 30, seeds))
    plain = _median_abs(_errors(xtrace, A, 30, seeds, distribution="rademacher"))
    hutchpp = _median_abs(_errors(hutchpp_trace, A, 30, seeds))
    hutch = _median_abs(_errors(hutchinson_trace, A, 30, seeds))
    assert improved < plain / 10
    assert improved < hutchpp / 10
    assert plain < hutch / 10


# ---------------------------------------------------------------- error estimates
def test_hutchinson_std_error_is_calibrated():
    A = _generic(50)
    results = [hutchinson_trace(A, 20, seed=s) for s in range(200)]
    spread = statistics.stdev(r.value for r in results)
    reported = statistics.median(r.std_error for r in results)
    assert 0.8 < reported / spread < 1.25


def test_xtrace_error_estimate_has_the_right_scale():
    # Epperly et al.'s estimate is a heuristic; require the right order of magnitude
    A, _ = synthetic.polynomial_decay(100, 3, 1.0, seed=6)
    results = [xtrace(A, 20, seed=s) for s in range(100)]
    spread = statistics.stdev(r.value for r in results)
    reported = statistics.median(r.std_error for r in results)
    assert 0.3 < reported / spread < 3
    assert hutchinson_trace(A, 1).std_error is None
    assert xtrace(A, 2).std_error is None


# --------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_reproducible_and_independent_of_block_size(name):
    estimator = ESTIMATORS[name]
    A = _generic(30)
    a = estimator(A, 12, seed=7)
    assert estimator(A, 12, seed=7) == a
    assert estimator(A, 12, seed=8).value != a.value
    for block_size in (1, 5):
        b = estimator(A, 12, seed=7, block_size=block_size)
        assert b.value == pytest.approx(a.value, rel=1e-12, abs=1e-12)
        assert b.num_matvecs == a.num_matvecs


def test_generator_seed():
    A = _generic(30)
    a = hutchinson_trace(A, 10, seed=torch.Generator().manual_seed(1))
    b = hutchinson_trace(A, 10, seed=torch.Generator().manual_seed(1))
    assert a == b


def test_probes_fed_in_blocks():
    calls = []

    class Recording:
        def __init__(self, A):
            self.A, self.shape, self.dtype, self.device = A, A.shape, A.dtype, A.device

        def __matmul__(self, X):
            calls.append(X.shape[1])
            return self.A @ X

    A = _generic(30)
    hutchinson_trace(Recording(A), 70)
    assert calls == [32, 32, 6]
    calls.clear()
    xtrace(Recording(A), 40, block_size=8)
    assert calls == [8, 8, 4, 8, 8, 4]


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("estimator", "budget", "needs"),
    [
        (hutchinson_trace, 0, "num_matvecs >= 1"),
        (hutchpp_trace, 2, "num_matvecs >= 3"),
        (hutchpp_trace, 3 * 31, "num_matvecs // 3 <= D = 30"),
        (xtrace, 7, "an even num_matvecs >= 2"),
        (xtrace, 0, "an even num_matvecs >= 2"),
        (xtrace, 62, "num_matvecs / 2 <= D = 30"),
        (frobenius_norm_estimate, 0, "num_matvecs >= 1"),
    ],
)
def test_bad_budget(estimator, budget, needs):
    with pytest.raises(ValueError, match="needs") as info:
        estimator(_generic(30), budget)
    assert needs in str(info.value)
    assert f"Got num_matvecs={budget}." in str(info.value)


def test_bad_arguments():
    A = _generic(10)
    with pytest.raises(TypeError, match="num_matvecs must be an int"):
        hutchinson_trace(A, 4.0)
    with pytest.raises(TypeError, match="num_matvecs must be an int"):
        xtrace(A, True)
    with pytest.raises(ValueError, match="distribution must be one of"):
        hutchinson_trace(A, 4, distribution="uniform")
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        hutchinson_trace(A, 4, block_size=0)
    with pytest.raises(ValueError, match="non-negative"):
        hutchinson_trace(A, 4, seed=-1)
    with pytest.raises(ValueError, match="square"):
        hutchinson_trace(torch.zeros(3, 4, dtype=torch.float64), 2)


@pytest.mark.parametrize(
    "estimator", [hutchinson_trace, hutchpp_trace, xtrace, frobenius_norm_estimate]
)
def test_nan_operator(estimator):
    A = _generic(10)
    A[2, 3] = float("nan")
    with pytest.raises(FloatingPointError, match=estimator.__name__):
        estimator(A, 6)


# ------------------------------------------------------------ curvature operators
def test_on_hessian_operator():
    case = CASES[0]
    op = cl.HessianOperator(case.model, case.loss_fn, case.data)
    H = dense_hessian(case.model, case.loss_fn, case.data, param_names(case))
    D = H.shape[0]
    truth = float(H.trace())
    # full budget: Hutch++ is exact
    assert hutchpp_trace(op, 3 * D).value == pytest.approx(truth, rel=1e-9)
    # same probes on the operator and on its dense matrix
    a, b = hutchinson_trace(op, 10, seed=2), hutchinson_trace(H, 10, seed=2)
    assert a.value == pytest.approx(b.value, rel=1e-9)
    est = xtrace(cl.DenseOperator(H), 20)
    assert isinstance(est, TraceEstimate)
    assert float(est) == est.value


# --------------------------------------------------------------------- Frobenius
def test_frobenius_norm_estimate():
    A = _generic(50)
    truth2 = float((A * A).sum())
    results = [frobenius_norm_estimate(A, 20, seed=s) for s in range(150)]
    squared = [r.squared for r in results]
    se = statistics.stdev(squared) / math.sqrt(len(squared))
    assert abs(statistics.mean(squared) - truth2) < 4.5 * se  # unbiased
    # relative spread sqrt(2/m) ||A^2||_F / ||A||_F^2 for Gaussian probes
    predicted = math.sqrt(2 / 20) * float(torch.linalg.norm(A @ A)) / truth2
    assert 0.75 < statistics.stdev(squared) / truth2 / predicted < 1.33
    r = results[0]
    assert r.value == pytest.approx(math.sqrt(r.squared))
    assert r.num_matvecs == 20
    assert (
        0.75
        < statistics.median(x.std_error for x in results) / (statistics.stdev(squared))
        < 1.33
    )


def test_frobenius_rademacher_exact_on_diagonal():
    # ||diag(d) ω||² = Σ d_i² for ω_i = ±1
    A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    est = frobenius_norm_estimate(A, 3, distribution="rademacher")
    assert est.squared == pytest.approx(385.0, rel=1e-13)


# ---------------------------------------------------------------------- peers
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (hutchinson_trace, "hutchinson_trace"),
        (hutchpp_trace, "hutchpp_trace"),
        (xtrace, "xtrace"),
        (frobenius_norm_estimate, "hutchinson_squared_fro"),
    ],
)
def test_same_accuracy_as_curvlinops(ours, theirs):
    # same estimator (Rademacher probes, budget 12), same expectation: over 100
    # seeds each, the means agree within 4.5 combined standard errors and the
    # standard deviations within a factor 1.5 (the log of a ratio of two 100-sample
    # standard deviations scatters by about 0.1)
    curvlinops = pytest.importorskip("curvlinops")
    A, _ = synthetic.polynomial_decay(60, 3, 1.0, seed=8)
    if ours is frobenius_norm_estimate:
        truth = float((A * A).sum())
        value = lambda s: ours(A, 12, seed=s, distribution="rademacher").squared  # noqa: E731
    else:
        truth = float(A.trace())
        value = lambda s: ours(A, 12, seed=s, distribution="rademacher").value  # noqa: E731
    mine = [value(s) - truth for s in range(100)]
    peer = []
    for s in range(100):
        torch.manual_seed(1000 + s)
        peer.append(float(getattr(curvlinops, theirs)(A, 12)) - truth)
    se = math.hypot(statistics.stdev(mine), statistics.stdev(peer)) / 10
    assert abs(statistics.mean(mine) - statistics.mean(peer)) < 4.5 * se
    ratio = statistics.stdev(mine) / statistics.stdev(peer)
    assert 1 / 1.5 < ratio < 1.5


def test_hutchinson_matches_pyhessian_trace():
    # PyHessian's trace: Rademacher Hutchinson on the same Hessian. Its stopping
    # rule |mean - previous| / (previous + 1e-6) < tol stops at once when the
    # running mean is negative (the denominator lacks abs), so tol=-inf is the way
    # to run exactly maxIter probes. Both estimates within 4.5 standard errors of
    # the truth; their standard errors agree within the scatter of 100 samples.
    hess, op, H = _pyhessian_case()
    truth = float(H.trace())
    torch.manual_seed(0)
    with _float64_default():
        samples = torch.tensor(hess.trace(maxIter=100, tol=-math.inf))
    assert samples.numel() == 100
    theirs_se = float(samples.std()) / 10
    assert abs(float(samples.mean()) - truth) < 4.5 * theirs_se
    ours = hutchinson_trace(op, 100)
    assert abs(ours.value - truth) < 4.5 * ours.std_error
    assert ours.std_error == pytest.approx(theirs_se, rel=0.5)


@contextlib.contextmanager
def _float64_default():
    # PyHessian draws its vectors with the default dtype; the models are float64
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _pyhessian_case():
    """PyHessian's hessian object, our operator and the dense Hessian, one batch."""
    pyhessian = pytest.importorskip("pyhessian")
    case = CASES[0]
    X = torch.cat([x for x, _ in case.data])
    y = torch.cat([t for _, t in case.data])
    model = copy.deepcopy(case.model)
    with warnings.catch_warnings(), _float64_default():
        # PyHessian calls loss.backward(create_graph=True), which warns
        warnings.simplefilter("ignore")
        hess = pyhessian.hessian(model, case.loss_fn, data=(X, y), cuda=False)
    op = cl.HessianOperator(case.model, case.loss_fn, [(X, y)])
    H = dense_hessian(case.model, case.loss_fn, [(X, y)], param_names(case))
    return hess, op, H

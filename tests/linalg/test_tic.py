"""TIC against the dense trace of (H + δI)^{-1} C on a small network."""

from __future__ import annotations

import pytest
import torch

import curvlab as cl
from conftest import CASES
from curvlab.linalg import NegativeCurvatureError, TICEstimate, tic

DAMPING = 1e-2


@pytest.fixture(scope="module")
def problem():
    """GGN and centered gradient covariance of the 11-sample tanh MLP (D = 39)."""
    case = CASES[0]  # cross-entropy, mean: C = (1/N) sum (g - gbar)(g - gbar)^T
    H = cl.GGNOperator(case.model, case.loss_fn, case.data)
    C = cl.GradientCovarianceOperator(case.model, case.loss_fn, case.data)
    Hd, Cd = H.to_dense(), C.to_dense()
    eye = torch.eye(H.shape[0], dtype=Hd.dtype)
    truth = float(torch.linalg.solve(Hd + DAMPING * eye, Cd).trace())
    return H, C, Hd, Cd, truth


def test_tic_within_error_bar_over_seeds(problem):
    # 15 probes: 5 sketch, 5 range, 5 Hutchinson columns. The standardised error
    # then follows roughly a Student t with 4 degrees of freedom: |t| < 2 with
    # probability ~0.88 and |t| > 3.5 with ~0.025. Measured over 30 seeds: 93%
    # within 2 error bars, the largest 3.0.
    _, _, Hd, Cd, truth = problem
    z = []
    for seed in range(10):
        est = tic(Hd, Cd, DAMPING, 15, seed=seed, num_data=11)
        assert est.converged
        z.append(abs(est.value - truth) / est.std_error)
    assert max(z) < 3.5
    assert sum(v < 2 for v in z) >= 8


def test_tic_on_operators_and_gap(problem):
    H, C, _, _, truth = problem
    est = tic(H, C, DAMPING, 15, seed=0)
    assert isinstance(est, TICEstimate)
    assert est.num_data == 11  # read from the covariance operator
    assert est.gap == pytest.approx(est.value / 11)
    assert est.gap_std_error == pytest.approx(est.std_error / 11)
    assert abs(est.value - truth) < 3.5 * est.std_error
    assert est.num_covariance_matvecs == 15
    assert est.num_matvecs > 15  # CG iterations over all columns
    assert est.max_relative_residual <= 1e-8


def test_tic_exact_once_sketch_covers_rank(problem):
    # rank(C) <= N - 1 = 10 <= 33 // 3: Hutch++'s sketch holds the whole range
    _, _, Hd, Cd, truth = problem
    est = tic(Hd, Cd, DAMPING, 33, seed=3)
    assert est.value == pytest.approx(truth, rel=1e-7)


def test_tic_with_indefinite_hessian_needs_damping():
    case = CASES[1]  # relu, cross-entropy, sum: indefinite Hessian at init
    H = cl.HessianOperator(case.model, case.loss_fn, case.data)
    C = cl.GradientCovarianceOperator(case.model, case.loss_fn, case.data)
    with pytest.raises(NegativeCurvatureError, match="non-positive curvature"):
        tic(H, C, 0.0, 6)


def test_tic_bad_input(problem):
    _, _, Hd, Cd, _ = problem
    with pytest.raises(
        ValueError, match=r"damping must be a finite number >= 0\. Got -1"
    ):
        tic(Hd, Cd, -1.0, 6)
    with pytest.raises(
        ValueError, match=r"covariance_op must have the curvature's shape"
    ):
        tic(Hd, Cd[:-1, :-1], DAMPING, 6)
    with pytest.raises(ValueError, match="num_matvecs >= 3"):
        tic(Hd, Cd, DAMPING, 2)
    with pytest.raises(ValueError, match="num_data must be a positive int"):
        tic(Hd, Cd, DAMPING, 6, num_data=0)

"""The randomized Nyström preconditioner: its formula, its spectrum, its rank rule."""

from __future__ import annotations

import pytest
import torch

import curvlab as cl
from _compare import compare_matmat, rel_error
from conftest import CASES
from curvlab.linalg import (
    NystromPreconditioner,
    cg,
    nystrom_preconditioner,
    synthetic,
)


def _spectrum(dim, top, tail=1e-8):
    """``top`` eigenvalues log-spaced in [0.1, 1], the rest ``tail``."""
    lam = torch.full((dim,), tail, dtype=torch.float64)
    lam[:top] = torch.logspace(0, -1, top, dtype=torch.float64)
    return synthetic.from_spectrum(lam, seed=4)


def test_formula_matches_dense_and_formats():
    A, _ = _spectrum(24, 6)
    values, vectors = torch.linalg.eigh(A)
    values, vectors = values.flip(0)[:5], vectors.flip(1)[:, :5]
    mu = 1e-2
    P = NystromPreconditioner(values, vectors, mu, param_shapes=[(4, 3), (12,)])
    dense = (values[-1] + mu) * (vectors / (values + mu)) @ vectors.T
    dense = dense + torch.eye(24, dtype=A.dtype) - vectors @ vectors.T
    compare_matmat(P, dense, 1e-12)
    assert P.rank == 5
    assert P.is_psd


def test_exact_eigenpairs_flatten_the_top_of_the_spectrum():
    # with the exact top-l eigenpairs, P^{-1}(A + mu I) has eigenvalues
    # lambda_l + mu (l times) and lambda_i + mu for i > l
    A, lam = synthetic.polynomial_decay(30, 3, 1.0, seed=2)
    values, vectors = torch.linalg.eigh(A)
    values, vectors = values.flip(0), vectors.flip(1)
    mu, ell = 1e-3, 8
    P = NystromPreconditioner(values[:ell], vectors[:, :ell], mu)
    M = P.to_dense() @ (A + mu * torch.eye(30, dtype=A.dtype))
    got = torch.linalg.eigvals(M).real.sort(descending=True).values
    expected = torch.cat([values[ell - 1].repeat(ell), values[ell:]]) + mu
    assert torch.allclose(got, expected.sort(descending=True).values, atol=1e-12)


def test_low_rank_operator_is_solved_in_one_iteration():
    # rank 8 <= l: the sketch is exact, lambda_l = 0, P^{-1}(A + mu I) = mu I
    A, _ = synthetic.low_rank(60, 8, seed=1)
    b = torch.randn(60, dtype=torch.float64)
    P = nystrom_preconditioner(A, 1e-3, rank=12)
    assert P.num_matvecs == 12
    result = cg(A, b, 1e-3, preconditioner=P, tol=1e-10)
    assert result.num_iters <= 2
    exact = torch.linalg.solve(A + 1e-3 * torch.eye(60, dtype=A.dtype), b)
    assert rel_error(result.solution, exact) < 1e-8


@pytest.mark.parametrize("seed", range(3))
def test_auto_rank_reaches_theorem_rank_and_bounded_condition(seed):
    # 30 eigenvalues in [0.1, 1] over a tail of 1e-8, mu = 1e-3: d_eff ~ 29.8,
    # Theorem 5.1's rank 2 * ceil(1.5 d_eff) + 1 = 91; doubling from 16 stops at 128
    A, lam = _spectrum(300, 30)
    mu = 1e-3
    P = nystrom_preconditioner(A, mu, "auto", max_rank=200, seed=seed)
    deff = float((lam / (lam + mu)).sum())
    assert P.rule == "effective dimension"
    assert P.rank == 128
    assert P.num_matvecs == 128  # the doublings reuse their measurements
    assert P.effective_dimension == pytest.approx(deff, rel=1e-3)
    M = P.to_dense() @ (A + mu * torch.eye(300, dtype=A.dtype))
    eig = torch.linalg.eigvals(M).real
    assert float(eig.max() / eig.min()) < 28  # the theorem's bound, in expectation


def test_auto_rank_stops_at_max_rank():
    A, _ = _spectrum(100, 60)
    P = nystrom_preconditioner(A, 1e-3)  # default max_rank = max(16, D // 10) = 16
    assert (P.rank, P.rule) == (16, "max_rank")


def test_preconditioner_on_ggn_operator_and_in_inverse_operator():
    case = CASES[0]
    op = cl.GGNOperator(case.model, case.loss_fn, case.data, params=case.params)
    P = nystrom_preconditioner(op, 1e-4, rank=10)
    assert P.param_shapes == op.param_shapes
    V = [torch.randn(*s, dtype=torch.float64) for s in op.param_shapes]
    assert [o.shape for o in P @ V] == [v.shape for v in V]
    B = torch.randn(op.shape[0], 2, dtype=torch.float64)
    plain = cg(op, B, 1e-4, tol=1e-8)
    fast = cg(op, B, 1e-4, tol=1e-8, preconditioner=P)
    assert fast.num_iters < plain.num_iters
    inverse = cl.InverseOperator(op, 1e-4, tol=1e-8, preconditioner=P)
    assert rel_error(inverse @ B, plain.solution) < 1e-5


def test_bad_input():
    A, _ = _spectrum(30, 5)
    with pytest.raises(ValueError, match="damping must be a finite number >= 0"):
        nystrom_preconditioner(A, -1.0, rank=5)
    with pytest.raises(ValueError, match="needs damping > 0"):
        nystrom_preconditioner(A, 0.0)
    with pytest.raises(ValueError, match="test_matrix in"):
        nystrom_preconditioner(A, 1e-3, test_matrix="ssrft")
    with pytest.raises(
        ValueError, match=r"max_rank must lie in \[1, D - 1\] with D=30"
    ):
        nystrom_preconditioner(A, 1e-3, max_rank=30)
    case = CASES[0]
    hessian = cl.HessianOperator(case.model, case.loss_fn, case.data)
    with pytest.raises(ValueError, match="is_psd=False"):
        nystrom_preconditioner(hessian, 1e-3, rank=5)
    with pytest.raises(ValueError, match="must match"):
        NystromPreconditioner(torch.ones(3).double(), torch.eye(5).double(), 1.0)

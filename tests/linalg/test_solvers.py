"""CG and the Neumann series against torch.linalg.solve on dense float64 matrices.

Tolerances: CG stops at a relative residual ``tol``; the error of the solution is
then at most ``cond(A + δI) * tol`` relative. Each test states the bound it uses.
"""

from __future__ import annotations

import pytest
import torch

import curvlab as cl
from _compare import rel_error
from _truth import dense_ggn
from conftest import CASES, param_names
from curvlab.linalg import (
    NegativeCurvatureError,
    NeumannDivergenceError,
    cg,
    neumann,
    synthetic,
)

D = 40


def _spd(cond: float, seed: int = 0) -> torch.Tensor:
    """SPD matrix with eigenvalues log-spaced in [1 / cond, 1]."""
    lam = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), D)
    return synthetic.from_spectrum(lam.double(), seed=seed)[0]


def _rhs(k: int | None = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (D,) if k is None else (D, k)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _solve(A, B, damping):
    return torch.linalg.solve(A + damping * torch.eye(D, dtype=A.dtype), B)


# ------------------------------------------------------------------- accuracy
def _cond(A, damping):
    lam = torch.linalg.eigvalsh(A) + damping
    return float(lam.max() / lam.min())


@pytest.mark.parametrize(
    ("cond", "damping", "tol"),
    [
        (1e1, 0.0, 1e-12),
        (1e1, 0.5, 1e-12),
        # cond 1e6: float64 CG reaches a relative residual near 1e-10, not 1e-12
        (1e6, 0.0, 1e-10),
        (1e6, 1e-3, 1e-12),  # damping caps cond near 1e3
    ],
    ids=["well", "well-damped", "bad", "bad-damped"],
)
@pytest.mark.parametrize("k", [None, 1, 4])
def test_cg_matches_solve(cond, damping, tol, k):
    # relative error <= cond(A + damping I) * relative residual; 10x margin
    A, B = _spd(cond), _rhs(k)
    result = cg(A, B, damping, tol=tol)
    assert result.converged
    assert result.solution.shape == B.shape
    bound = 10 * _cond(A, damping) * tol
    assert rel_error(result.solution, _solve(A, B, damping)) < bound
    # the reported residuals are the true ones, up to rounding
    Bm = B.reshape(D, -1)
    X = result.solution.reshape(D, -1)
    true = (Bm - A @ X - damping * X).norm(dim=0)
    gap = (result.residual_norms - true).abs()
    assert bool((gap <= 1e-2 * true + 1e-11 * Bm.norm(dim=0)).all())
    assert bool((result.relative_residuals <= tol).all())
    assert result.num_matvecs == int(result.iterations.sum())


def test_cg_block_equals_columns_and_skips_converged_columns():
    A = _spd(1e3)
    B = _rhs(3)
    B[:, 1] = 0.0  # converged before the first iteration
    block = cg(A, B, 0.1, tol=1e-10)
    for j in (0, 2):
        single = cg(A, B[:, j], 0.1, tol=1e-10)
        assert torch.allclose(block.solution[:, j], single.solution, atol=1e-13)
        assert int(block.iterations[j]) == int(single.iterations[0])
    assert int(block.iterations[1]) == 0
    assert bool((block.solution[:, 1] == 0).all())
    assert block.num_matvecs == int(block.iterations.sum())


def test_cg_on_ggn_operator_matches_dense():
    case = CASES[0]
    op = cl.GGNOperator(case.model, case.loss_fn, case.data, params=case.params)
    G = dense_ggn(case.model, case.loss_fn, case.data, param_names(case))
    B = torch.randn(op.shape[0], 2, dtype=torch.float64)
    result = cg(op, B, 1e-2, tol=1e-12)
    assert result.converged
    exact = torch.linalg.solve(G + 1e-2 * torch.eye(len(G), dtype=G.dtype), B)
    assert rel_error(result.solution, exact) < 10 * _cond(G, 1e-2) * 1e-12


def test_cg_x0_and_exact_preconditioner():
    A, B = _spd(1e4), _rhs(2)
    exact = _solve(A, B, 0.0)
    # the exact inverse as preconditioner: one iteration
    result = cg(A, B, preconditioner=torch.linalg.inv(A), tol=1e-10)
    assert result.num_iters == 1
    assert result.converged
    assert rel_error(result.solution, exact) < 1e-8
    # starting at the solution: no iteration
    start = cg(A, B, x0=exact, tol=1e-8)
    assert start.num_iters == 0
    assert start.converged


def test_cg_budget_runs_out_with_residuals_and_warning():
    A, B = _spd(1e6), _rhs(2)
    with pytest.warns(RuntimeWarning, match="did not converge within max_iters=3"):
        result = cg(A, B, max_iters=3)
    assert not result.converged
    assert not bool(result.converged_columns.any())
    assert result.num_iters == 3
    assert bool((result.relative_residuals > 1e-6).all())
    X = result.solution
    assert torch.allclose(result.residual_norms, (B - A @ X).norm(dim=0), rtol=1e-8)


# ---------------------------------------------------------- negative curvature
def test_cg_detects_negative_curvature():
    A, lam = synthetic.indefinite(D, 6, seed=3)
    B = _rhs(2)
    with pytest.raises(NegativeCurvatureError, match="non-positive curvature") as info:
        cg(A, B)
    assert "damping=0.0" in str(info.value)
    assert "indefinite" in str(info.value)
    # too little damping is still indefinite
    with pytest.raises(NegativeCurvatureError):
        cg(A, B, damping=0.5 * float(-lam.min()))
    # enough damping makes it positive definite: CG then solves it
    damping = float(-lam.min()) + 0.1
    result = cg(A, B, damping, tol=1e-12)
    assert rel_error(result.solution, _solve(A, B, damping)) < 1e-9
    # "stop" returns the iterate before the direction, flagged
    stopped = cg(A, B, on_negative_curvature="stop")
    assert bool(stopped.negative_curvature.all())
    assert not stopped.converged


def test_cg_on_indefinite_hessian_operator_raises():
    case = CASES[1]  # relu mlp, cross-entropy: indefinite Hessian at init
    op = cl.HessianOperator(case.model, case.loss_fn, case.data)
    H = op.to_dense()
    assert float(torch.linalg.eigvalsh(H).min()) < 0
    B = torch.randn(op.shape[0], 3, dtype=torch.float64)
    with pytest.raises(NegativeCurvatureError, match="indefinite"):
        cg(op, B, max_iters=500)


# ---------------------------------------------------------------------- Neumann
@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_neumann_matches_solve(damping):
    A, B = _spd(10.0), _rhs(3)
    result = neumann(A, B, damping, scale=1.0, num_terms=1000, tol=1e-12)
    assert result.converged
    # contraction <= 1 - 0.1 per term: 1e-12 relative residual, cond 10
    assert rel_error(result.solution, _solve(A, B, damping)) < 1e-10
    true = (B - A @ result.solution - damping * result.solution).norm(dim=0)
    assert torch.allclose(result.residual_norms, true, rtol=1e-6)


def test_neumann_default_scale_and_truncation():
    A, B = _spd(10.0), _rhs(None)
    result = neumann(A, B, num_terms=5)
    assert not result.converged  # tol=0: a truncated series
    assert int(result.num_terms[0]) == 5
    assert result.num_matvecs == 20 + 5  # 20 power steps, 5 terms
    # 1 / Rayleigh quotient, and lambda_max = 1: in [1, 2) for convergence
    assert 1.0 - 1e-12 <= result.scale < 2.0
    # the truncated sum is alpha * sum_{j<5} (I - alpha A)^j b
    M = torch.eye(D, dtype=A.dtype) - result.scale * A
    expected = sum(torch.linalg.matrix_power(M, j) @ B for j in range(5))
    assert rel_error(result.solution, result.scale * expected) < 1e-12


def test_neumann_detects_divergence():
    A, B = _spd(10.0), _rhs(2)
    with pytest.raises(NeumannDivergenceError, match="scale=3.000e\\+00"):
        neumann(A, B, scale=3.0, num_terms=200)
    A_ind, _ = synthetic.indefinite(D, 4, seed=1)
    with pytest.raises(NeumannDivergenceError, match="diverges"):
        neumann(A_ind, B, scale=0.5, num_terms=500)


# -------------------------------------------------------------------- bad input
@pytest.mark.parametrize("solver", [cg, neumann])
@pytest.mark.parametrize(
    ("damping", "error", "match"),
    [
        (-1.0, ValueError, r"damping must be a finite number >= 0\. Got -1\.0"),
        (float("nan"), ValueError, r"damping must be a finite number >= 0\. Got nan"),
        ("0.1", TypeError, r"damping must be a real number >= 0\. Got str"),
    ],
)
def test_bad_damping(solver, damping, error, match):
    with pytest.raises(error, match=match):
        solver(_spd(10.0), _rhs(1), damping)


@pytest.mark.parametrize("solver", [cg, neumann])
def test_bad_rhs(solver):
    A = _spd(10.0)
    with pytest.raises(
        ValueError, match=rf"shape \(D,\) or \(D, k\) with D={D}\. Got \(39, 2\)"
    ):
        solver(A, torch.ones(D - 1, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"dtype torch\.float64\. Got torch\.float32"):
        solver(A, torch.ones(D))
    with pytest.raises(TypeError, match="must be a torch.Tensor .* Got list"):
        solver(A, [1.0] * D)
    with pytest.raises(ValueError, match="must be finite"):
        solver(A, torch.full((D,), float("nan"), dtype=torch.float64))


def test_bad_operator_and_preconditioner():
    A = _spd(10.0)
    with pytest.raises(ValueError, match="must be symmetric"):
        cg(cl.DenseOperator(A + torch.triu(A, 1)), _rhs(1))
    with pytest.raises(
        ValueError, match=rf"preconditioner must have shape \({D}, {D}\)"
    ):
        cg(A, _rhs(1), preconditioner=torch.eye(D - 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive definite"):
        cg(A, _rhs(1), preconditioner=-torch.eye(D, dtype=torch.float64))
    with pytest.raises(ValueError, match="on_negative_curvature"):
        cg(A, _rhs(1), on_negative_curvature="ignore")
    with pytest.raises(ValueError, match="max_iters must be >= 0"):
        cg(A, _rhs(1), max_iters=-1)


def test_cg_takes_any_operator_as_preconditioner():
    # a Jacobi preconditioner built as an operator (as a KFAC inverse would be):
    # the inverse of the diagonal, through InverseOperator on a DenseOperator
    scales = torch.logspace(0, 4, D, dtype=torch.float64)
    A = _spd(10.0) * torch.sqrt(scales[:, None] * scales[None, :])  # badly scaled
    B = _rhs(2)
    diagonal = cl.DenseOperator(torch.diag(A.diagonal()), is_psd=True)
    jacobi = cl.InverseOperator(diagonal, method="dense")
    plain = cg(A, B, tol=1e-10, max_iters=5000, warn=False)
    fast = cg(A, B, tol=1e-10, preconditioner=jacobi)
    assert fast.converged
    assert fast.num_iters < plain.num_iters
    exact = torch.linalg.solve(A, B)
    assert rel_error(fast.solution, exact) < 10 * _cond(A, 0.0) * 1e-10

"""Power iteration with deflation (PyHessian's eigenvalue method)."""

import contextlib
import copy
import warnings

import pytest
import torch

import curvlab as cl
from _truth import dense_hessian
from conftest import CASES, param_names
from curvlab.linalg import synthetic
from curvlab.linalg._random import gaussian, generator
from curvlab.linalg.power import PowerIterationResult, power_iteration


def _top_by_magnitude(A, k):
    lam, U = torch.linalg.eigh(A)
    order = torch.argsort(lam.abs(), descending=True)[:k]
    return lam[order], U[:, order]


def test_matches_eigh_top_k():
    # |λ| = 0.6^i with alternating signs: gaps of 0.6 per pair, fast convergence
    A, _ = synthetic.indefinite(80, 6, 0.6, seed=1)
    res = power_iteration(A, 4, tol=1e-12, max_iter=1000)
    lam, U = _top_by_magnitude(A, 4)
    torch.testing.assert_close(res.eigenvalues, lam, rtol=1e-9, atol=1e-12)
    overlap = (res.eigenvectors.T @ U).diagonal().abs()
    assert float(overlap.min()) > 1 - 1e-6
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(res.eigenvectors.T @ res.eigenvectors, eye)
    assert bool(res.converged.all())
    assert res.num_matvecs == int(res.num_iterations.sum())


def test_default_tolerance_accuracy():
    # PyHessian's defaults (tol 1e-3): the Rayleigh quotient converges at rate
    # (λ2/λ1)^2 = 0.36 per step, so its error at the stop is below ~tol
    A, lam = synthetic.indefinite(80, 6, 0.6, seed=1)
    res = power_iteration(A, 2)
    assert bool(res.converged.all())
    torch.testing.assert_close(res.eigenvalues, lam[:2], rtol=2e-3, atol=0)
    assert int(res.num_iterations.max()) < 30


def _pyhessian_loop(A, k, max_iter, tol, seed):
    """PyHessian's ``hessian.eigenvalues`` loop, transcribed on a dense matrix."""
    found, values, iterations = [], [], []
    for i in range(k):
        v = gaussian((A.shape[0],), generator(seed, i), dtype=A.dtype, device="cpu")
        v = v / v.norm()
        eigenvalue, count = None, 0
        for _ in range(max_iter):
            count += 1
            for u in found:
                v = v - (v @ u) * u
            v = v / v.norm()
            Hv = A @ v
            tmp = float(Hv @ v)
            v = Hv / Hv.norm()
            if eigenvalue is None:
                eigenvalue = tmp
            elif abs(eigenvalue - tmp) / (abs(eigenvalue) + 1e-6) < tol:
                break
            else:
                eigenvalue = tmp
        for u in found:
            v = v - (v @ u) * u
        found.append(v / v.norm())
        values.append(tmp)
        iterations.append(count)
    return values, iterations


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_stopping_rule_is_pyhessians(tol):
    A, _ = synthetic.polynomial_decay(60, 1, 1.0, seed=2)
    values, iterations = _pyhessian_loop(A, 3, 200, tol, seed=5)
    res = power_iteration(A, 3, max_iter=200, tol=tol, seed=5)
    assert res.num_iterations.tolist() == iterations
    torch.testing.assert_close(
        res.eigenvalues, torch.tensor(values, dtype=torch.float64), rtol=1e-10, atol=0
    )


def test_not_converged_warns():
    A, _ = synthetic.polynomial_decay(50, 1, 0.5, seed=3)
    with pytest.warns(RuntimeWarning, match=r"eigenpair\(s\) \[1, 2\] did not meet"):
        res = power_iteration(A, 2, max_iter=3, tol=1e-12)
    assert not bool(res.converged.any())
    assert res.num_iterations.tolist() == [3, 3]
    assert res.num_matvecs == 6


def test_zero_operator():
    res = power_iteration(torch.zeros(5, 5, dtype=torch.float64), 2)
    assert res.eigenvalues.tolist() == [0.0, 0.0]
    assert bool(res.converged.all())


def test_reproducible_by_seed():
    A, _ = synthetic.indefinite(40, 4, 0.5, seed=4)
    a = power_iteration(A, 2, seed=3)
    b = power_iteration(A, 2, seed=3)
    assert torch.equal(a.eigenvectors, b.eigenvectors)
    c = power_iteration(A, 2, seed=4)
    assert not torch.equal(a.eigenvectors, c.eigenvectors)
    g = power_iteration(A, 2, seed=torch.Generator().manual_seed(0))
    assert isinstance(g, PowerIterationResult)


def test_bad_arguments():
    A, _ = synthetic.indefinite(10, 2, seed=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        power_iteration(A, 0)
    with pytest.raises(ValueError, match="k must be <= D = 10. Got k=11"):
        power_iteration(A, 11)
    with pytest.raises(TypeError, match="max_iter must be an int"):
        power_iteration(A, 1, max_iter=2.5)
    with pytest.raises(ValueError, match="tol must be >= 0"):
        power_iteration(A, 1, tol=-1.0)
    B = A.clone()
    B[0, 1] += 1
    with pytest.raises(ValueError, match="symmetric"):
        power_iteration(B, 1)


class _NaNAfter:
    """Symmetric operator whose products turn NaN after ``good`` calls."""

    is_symmetric = True

    def __init__(self, A, good):
        self.A, self.good = A, good
        self.shape, self.dtype, self.device = A.shape, A.dtype, A.device

    def __matmul__(self, X):
        self.good -= 1
        return self.A @ X if self.good >= 0 else torch.full_like(X, float("nan"))


def test_nan_operator():
    A, _ = synthetic.indefinite(10, 2, seed=0)
    with pytest.raises(FloatingPointError, match="eigenpair 2, iteration 1"):
        power_iteration(_NaNAfter(A, 5), 2, max_iter=5, tol=0.0)
    with pytest.raises(FloatingPointError, match="power iteration, eigenpair 1"):
        power_iteration(_NaNAfter(A, 0), 1)


def test_on_hessian_operator():
    case = CASES[0]
    op = cl.HessianOperator(case.model, case.loss_fn, case.data)
    H = dense_hessian(case.model, case.loss_fn, case.data, param_names(case))
    lam, _ = _top_by_magnitude(H, 2)
    res = power_iteration(op, 2, tol=1e-10, max_iter=2000)
    torch.testing.assert_close(res.eigenvalues, lam, rtol=1e-6, atol=1e-10)


# ---------------------------------------------------------------------- peers
@contextlib.contextmanager
def _float64_default():
    # PyHessian draws its vectors with the default dtype; the models are float64
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def test_matches_pyhessian_eigenvalues():
    # same method, different start vectors: both reach the dense top-2 eigenvalues
    # by magnitude; with tol=1e-8 the Rayleigh quotients are accurate to ~1e-6
    pyhessian = pytest.importorskip("pyhessian")
    case = CASES[0]
    X = torch.cat([x for x, _ in case.data])
    y = torch.cat([t for _, t in case.data])
    H = dense_hessian(case.model, case.loss_fn, [(X, y)], param_names(case))
    lam, _ = _top_by_magnitude(H, 2)
    with warnings.catch_warnings(), _float64_default():
        # PyHessian calls loss.backward(create_graph=True), which warns
        warnings.simplefilter("ignore")
        model = copy.deepcopy(case.model)
        hess = pyhessian.hessian(model, case.loss_fn, data=(X, y), cuda=False)
        torch.manual_seed(0)
        theirs, _ = hess.eigenvalues(maxIter=2000, tol=1e-8, top_n=2)
    op = cl.HessianOperator(case.model, case.loss_fn, [(X, y)])
    ours = power_iteration(op, 2, max_iter=2000, tol=1e-8)
    torch.testing.assert_close(ours.eigenvalues, lam, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(
        torch.tensor(theirs, dtype=torch.float64), lam, rtol=1e-5, atol=1e-8
    )

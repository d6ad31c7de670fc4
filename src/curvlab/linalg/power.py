r"""Power iteration with deflation: PyHessian's top-eigenvalue method.

Kept for comparison with PyHessian (Yao et al. 2020) and the many papers that report
its numbers; :func:`curvlab.linalg.eigsh` (restarted Lanczos) reaches the same
eigenvalues with far fewer products and should be preferred for new measurements.

The method finds eigenpairs one after the other. For eigenpair :math:`i`, starting
from a normalised Gaussian vector, each iteration

1. orthonormalises :math:`v` against the eigenvectors already found (Gram--Schmidt,
   the deflation),
2. multiplies, :math:`w = Av`, and takes the Rayleigh quotient
   :math:`\lambda_t = v^\top w`,
3. sets :math:`v = w / \|w\|`,

and stops at the first :math:`t \ge 2` with

.. math::

    \frac{|\lambda_t - \lambda_{t-1}|}{|\lambda_{t-1}| + 10^{-6}} < \mathrm{tol},

PyHessian's rule (``hessian.eigenvalues`` with ``maxIter=100, tol=1e-3``). It
converges to the eigenvalue of largest *magnitude* of the deflated operator, at the
rate :math:`|\lambda_{i+1}/\lambda_i|` per product, and the stopping rule measures
the change of the Rayleigh quotient, not the residual: a slowly converging pair can
stop early with an eigenvalue accurate to about ``tol`` but a poor eigenvector.

Differences from PyHessian, none of which changes the method: the start vectors come
from the seeded streams of :mod:`curvlab.linalg._random`; the Gram--Schmidt step is
repeated once ("twice is enough") and normalises exactly (PyHessian divides by
:math:`\|v\| + 10^{-6}`); the returned eigenvalue is the last Rayleigh quotient
:math:`\lambda_t` (PyHessian returns :math:`\lambda_{t-1}` on convergence, within
``tol`` of it); the returned eigenvector is the last :math:`v` orthonormalised
against the earlier ones.

References:
    - Yao, Z., Gholami, A., Keutzer, K., & Mahoney, M. W. (2020). PyHessian: Neural
      networks through the lens of the Hessian. IEEE BigData.
    - Golub, G. H., & Van Loan, C. F. (2013). Matrix Computations, 4th ed., §8.2.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from curvlab._checks import check_int
from curvlab.linalg._operator import CountedOperator
from curvlab.linalg._random import gaussian, generator

__all__ = ["PowerIterationResult", "power_iteration"]

#: Added to the denominator of the relative change, as in PyHessian.
_STOP_OFFSET = 1e-6


@dataclass(frozen=True)
class PowerIterationResult:
    """Eigenpairs found by power iteration with deflation.

    Attributes:
        eigenvalues: ``(k,)`` Rayleigh quotients, in discovery order (roughly by
            decreasing magnitude, not sorted).
        eigenvectors: ``(D, k)`` orthonormal eigenvector estimates.
        num_matvecs: Products spent over all eigenpairs.
        converged: ``(k,)`` bool, whether each pair met the stopping rule within
            ``max_iter`` iterations.
        num_iterations: ``(k,)`` products spent on each pair.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    num_matvecs: int
    converged: Tensor
    num_iterations: Tensor


def _orthonormalize(v: Tensor, U: Tensor) -> Tensor:
    """``v`` minus its projection on the columns of ``U``, normalised (or zero)."""
    for _ in range(2):
        v = v - U @ (U.T @ v)
    norm = v.norm()
    return v / norm if norm > 0 else v


def power_iteration(
    op,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int | torch.Generator = 0,
) -> PowerIterationResult:
    r"""Top-``k`` eigenpairs (by magnitude) of a symmetric operator, PyHessian's way.

    See the module docstring for the iteration and the stopping rule. Each pair
    costs one product per iteration, at most ``max_iter``; the pairs are found one
    after the other (the method cannot use blocked products).

    Args:
        op: Symmetric square operator ``(D, D)``: a
            :class:`~curvlab.operators.CurvatureOperator`, a tensor, or any object
            with ``shape``, ``dtype``, ``device`` and ``@``.
        k: Number of eigenpairs, ``1 <= k <= D``.
        max_iter: Maximum iterations (products) per pair, ``>= 1``.
        tol: Relative change of the Rayleigh quotient that stops a pair, ``>= 0``
            (0 runs ``max_iter`` iterations).
        seed: Seed; start vector ``i`` comes from stream ``(seed, i)`` (or a
            ``torch.Generator`` drawn in order).

    Returns:
        Eigenvalues in discovery order, eigenvectors, products, convergence flags
        and iterations per pair.

    Raises:
        TypeError: If ``op`` is not an operator or a count is not an int.
        ValueError: If ``op`` declares itself non-symmetric, or an argument is out
            of range.
        FloatingPointError: If a product is not finite.

    Warns:
        RuntimeWarning: If some pair did not meet the stopping rule.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([5.0, -3.0, 1.0, 0.5], dtype=torch.float64))
        >>> res = power_iteration(A, 2, tol=1e-10, max_iter=500)
        >>> [round(x, 6) for x in res.eigenvalues.tolist()]
        [5.0, -3.0]
    """
    A = CountedOperator(op, symmetric=True)
    D = A.dim
    check_int("k", k, 1)
    check_int("max_iter", max_iter, 1)
    if k > D:
        raise ValueError(f"k must be <= D = {D}. Got k={k}.")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0. Got {tol}.")
    if not isinstance(seed, torch.Generator):
        generator(seed)  # validate

    U = A.zeros(D, 0)
    eigenvalues, converged, iterations = [], [], []
    for i in range(k):
        gen = seed if isinstance(seed, torch.Generator) else generator(seed, i)
        v = _orthonormalize(gaussian((D,), gen, dtype=A.dtype, device=A.device), U)
        previous, done, lam, t = None, False, 0.0, 0
        for t in range(1, max_iter + 1):
            v = _orthonormalize(v, U)
            w = A.apply(v, step=f"power iteration, eigenpair {i + 1}, iteration {t}")
            lam = float(v @ w)
            norm = w.norm()
            if norm == 0:  # v in the null space of the deflated operator
                done = True
                break
            v = w / norm
            if previous is not None and (
                abs(lam - previous) / (abs(previous) + _STOP_OFFSET) < tol
            ):
                done = True
                break
            previous = lam
        U = torch.cat([U, _orthonormalize(v, U)[:, None]], dim=1)
        eigenvalues.append(lam)
        converged.append(done)
        iterations.append(t)
    if not all(converged):
        missed = [i + 1 for i, c in enumerate(converged) if not c]
        warnings.warn(
            f"power_iteration: eigenpair(s) {missed} did not meet the stopping rule "
            f"(relative change < tol={tol}) within max_iter={max_iter} iterations; "
            "their eigenvalues are the last Rayleigh quotients.",
            RuntimeWarning,
            stacklevel=2,
        )
    return PowerIterationResult(
        eigenvalues=torch.tensor(eigenvalues, dtype=A.dtype, device=A.device),
        eigenvectors=U,
        num_matvecs=A.num_matvecs,
        converged=torch.tensor(converged, device=A.device),
        num_iterations=torch.tensor(iterations, device=A.device),
    )

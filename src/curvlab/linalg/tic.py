r"""The Takeuchi information criterion, by Hutch++ probes and CG solves.

For a model trained on ``N`` samples with mean loss :math:`L(\theta) = \frac1N
\sum_n \ell_n(\theta)`, Takeuchi (1976) corrects the training loss by

.. math::
    \mathrm{TIC} = \operatorname{tr}\bigl(H^{-1} C\bigr), \qquad
    \mathbb E[L_{\mathrm{test}}] - \mathbb E[L_{\mathrm{train}}]
    \approx \frac{\mathrm{TIC}}{N},

with :math:`H` the Hessian of the mean loss and :math:`C` the covariance of the
per-sample gradients :math:`g_n = \nabla \ell_n`; Thomas, Pedregosa, van
Merriënboer, Manzagol, Bengio & Le Roux (2020) relate it to the noise and
curvature of neural network training. For networks :math:`H` is singular and
indefinite, so :func:`tic` damps it, and a GGN or Fisher may stand in for it.
:func:`tic` estimates

.. math::
    \operatorname{tr}\bigl((H + \delta I)^{-1} C\bigr)

for any symmetric curvature :math:`H` (Hessian, GGN, Fisher, KFAC) with
:math:`H + \delta I` positive definite and any covariance operator :math:`C`,
applying :math:`A = (H + \delta I)^{-1} C` column block by column block (one
product with :math:`C`, then one block CG solve, :func:`curvlab.linalg.cg`) and
estimating :math:`\operatorname{tr} A` with Hutch++
(:func:`curvlab.linalg.hutchpp_trace`): the centered :math:`C` has rank at most
``N - 1``, so the sketch captures much of it and the estimate is exact once
``num_probes // 3 >= rank(C)``. The error bar is the standard error of the
Hutchinson part of Hutch++ (from few probes, itself a rough estimate); the CG
solves add a bias of at most about :math:`\kappa\,\mathrm{tol}` relative, with
:math:`\kappa` the condition number of :math:`H + \delta I`, which the error bar
does not include.

**Which covariance and which normalization.** Pass
:class:`~curvlab.operators.GradientCovarianceOperator` (``centered=True``, the
default): for cross-entropy with ``reduction="mean"`` it is
:math:`C = \frac1N \sum_n (g_n - \bar g)(g_n - \bar g)^\top`, the centered
covariance with the :math:`1/N` (maximum-likelihood) normalization, which
matches the Hessian of the *mean* loss; ``unbiased=True`` gives :math:`1/(N-1)`.
``centered=False`` (the empirical Fisher) differs by :math:`\bar g \bar g^\top`,
negligible at a minimum. ``gap`` divides the TIC by ``N``, read from the
covariance operator's ``num_data`` unless given. With ``reduction="sum"`` both
:math:`H` and :math:`C` carry a factor ``N`` that cancels in the TIC, but the
damping then acts on the sum's scale.

References:
    - Takeuchi, K. (1976). Distribution of information statistics and a
      criterion of model fitting. Suri-Kagaku (Mathematical Sciences) 153.
    - Thomas, V., Pedregosa, F., van Merriënboer, B., Manzagol, P.-A., Bengio,
      Y., & Le Roux, N. (2020). On the interplay between noise and curvature and
      its effect on optimization and generalization. AISTATS.
    - Meyer, R. A., Musco, C., Musco, C., & Woodruff, D. P. (2021). Hutch++:
      Optimal stochastic trace estimation. SOSA.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from curvlab.linalg._operator import CountedOperator
from curvlab.linalg.solvers import cg, check_damping, symmetric_operator
from curvlab.linalg.trace import hutchpp_trace

__all__ = ["TICEstimate", "tic"]


@dataclass(frozen=True)
class TICEstimate:
    r"""An estimate of :math:`\operatorname{tr}((H + \delta I)^{-1} C)`.

    Attributes:
        value: The TIC estimate.
        std_error: Standard error of ``value`` (Hutch++'s Hutchinson part;
            ``None`` with fewer than 2 Hutchinson probes).
        gap: ``value / N``, the estimate of the generalization gap (``None``
            without ``N``).
        gap_std_error: ``std_error / N``.
        num_data: ``N``.
        damping: :math:`\delta`.
        num_probes: Columns of :math:`A` multiplied (Hutch++'s budget).
        num_matvecs: Products with the curvature operator (CG iterations summed
            over columns).
        num_covariance_matvecs: Products with the covariance operator.
        converged: Whether every CG solve met its tolerance.
        max_relative_residual: Largest relative CG residual.
    """

    value: float
    std_error: float | None
    gap: float | None
    gap_std_error: float | None
    num_data: int | None
    damping: float
    num_probes: int
    num_matvecs: int
    num_covariance_matvecs: int
    converged: bool
    max_relative_residual: float

    def __float__(self) -> float:
        return self.value


class _DampedInverseTimes:
    """``X -> (H + δI)^{-1} C X`` by one block CG solve per call, with a record."""

    def __init__(self, H: CountedOperator, C: CountedOperator, damping, options):
        self.H, self.C, self.damping, self.options = H, C, damping, options
        self.shape, self.dtype, self.device = H.shape, H.dtype, H.device
        self.converged = True
        self.max_relative_residual = 0.0

    def __matmul__(self, X: Tensor) -> Tensor:
        CX = self.C.apply(X, step="tic covariance product")
        result = cg(self.H.op, CX, self.damping, warn=False, **self.options)
        self.H.num_matvecs += result.num_matvecs
        self.converged &= result.converged
        if result.rhs_norms.numel():
            worst = float(result.relative_residuals.max())
            self.max_relative_residual = max(self.max_relative_residual, worst)
        return result.solution


def tic(
    curvature_op,
    covariance_op,
    damping: float,
    num_probes: int,
    *,
    num_data: int | None = None,
    tol: float = 1e-8,
    max_iters: int | None = None,
    preconditioner=None,
    distribution: str = "rademacher",
    seed: int | torch.Generator = 0,
    block_size: int | None = None,
) -> TICEstimate:
    r"""Estimate the TIC :math:`\operatorname{tr}((H + \delta I)^{-1} C)` and the gap.

    See the module docstring for the definition, the covariance and its
    normalization.

    Args:
        curvature_op: Symmetric ``(D, D)`` curvature :math:`H` of the mean loss
            (Hessian, GGN, Fisher, ...); :math:`H + \delta I` must be positive
            definite.
        covariance_op: ``(D, D)`` gradient covariance :math:`C`, e.g.
            :class:`~curvlab.operators.GradientCovarianceOperator`.
        damping: :math:`\delta \ge 0`.
        num_probes: Hutch++ budget ``m >= 3`` (``m // 3`` sketch columns,
            ``m // 3`` range columns, the rest Hutchinson probes); each costs one
            product with :math:`C` and one CG solve with :math:`H`.
        num_data: ``N`` for the gap; default ``covariance_op.num_data``.
        tol: Relative residual of the CG solves.
        max_iters: CG iteration budget per solve (default ``10 D``).
        preconditioner: Preconditioner of :math:`H + \delta I` for CG (e.g.
            :func:`curvlab.linalg.nystrom_preconditioner` of a PSD curvature).
        distribution: Probe distribution, ``"rademacher"``, ``"normal"`` or
            ``"sphere"``.
        seed: Seed of the probes.
        block_size: Columns per solve (default ``min(m // 3, 32)``).

    Returns:
        The TIC, its standard error, the gap ``TIC / N`` and the costs.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If the operators differ in shape, the damping is negative or
            NaN, the budget is out of range, or ``N`` is not positive.
        NegativeCurvatureError: If :math:`H + \delta I` is not positive definite
            along a CG direction.

    Warns:
        RuntimeWarning: If a CG solve stopped above its tolerance.

    Example:
        >>> from curvlab.linalg import synthetic
        >>> H, _ = synthetic.polynomial_decay(30, 3, 1.0, seed=0)
        >>> C, _ = synthetic.low_rank(30, 4, seed=1)
        >>> est = tic(H, C, 0.1, 15, num_data=100)
        >>> exact = torch.linalg.solve(H + 0.1 * torch.eye(30).double(), C).trace()
        >>> abs(est.value - float(exact)) < 1e-6, est.gap == est.value / 100
        (True, True)
    """
    H = symmetric_operator(curvature_op, "curvature_op")
    C = CountedOperator(covariance_op, what="covariance_op")
    if C.dim != H.dim:
        raise ValueError(
            f"covariance_op must have the curvature's shape ({H.dim}, {H.dim}). "
            f"Got ({C.dim}, {C.dim})."
        )
    if C.dtype != H.dtype:
        raise ValueError(
            f"covariance_op must have the curvature's dtype {H.dtype}. Got {C.dtype}."
        )
    delta = check_damping(damping)
    if num_data is None:
        num_data = getattr(covariance_op, "num_data", None)
    if num_data is not None and (
        isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1
    ):
        raise ValueError(f"num_data must be a positive int. Got {num_data!r}.")
    options = {"tol": tol, "max_iters": max_iters, "preconditioner": preconditioner}
    A = _DampedInverseTimes(H, C, delta, options)
    estimate = hutchpp_trace(
        A, num_probes, distribution=distribution, seed=seed, block_size=block_size
    )
    if not A.converged:
        warnings.warn(
            "Some CG solves of the TIC stopped above tolerance (largest relative "
            f"residual {A.max_relative_residual:.3e}, tol={tol}): the estimate is "
            "biased. Raise max_iters, add damping or use a preconditioner.",
            RuntimeWarning,
            stacklevel=2,
        )
    error = estimate.std_error
    return TICEstimate(
        value=estimate.value,
        std_error=error,
        gap=None if num_data is None else estimate.value / num_data,
        gap_std_error=None if num_data is None or error is None else error / num_data,
        num_data=num_data,
        damping=delta,
        num_probes=estimate.num_matvecs,
        num_matvecs=H.num_matvecs,
        num_covariance_matvecs=C.num_matvecs,
        converged=A.converged,
        max_relative_residual=A.max_relative_residual,
    )

r"""Stochastic estimators of the diagonal of a square operator, from products alone.

- :func:`hutchinson_diagonal`: the estimator of Bekas, Kokiopoulou & Saad (2007),
  :math:`\operatorname{diag}(A) \approx (\sum_i \omega_i \odot A\omega_i) \oslash
  (\sum_i \omega_i \odot \omega_i)`. Exact for a diagonal matrix with Rademacher
  probes; the error of entry :math:`k` falls like :math:`\|A_{k,:}\|/\sqrt m`.
- :func:`xdiag`: XDiag (Epperly, Tropp & Webber 2024), the exchangeable version of
  Diag++: the diagonal of :math:`A` on the range of :math:`A\Omega_{-i}` exactly,
  plus Hutchinson's diagonal on its complement with probe :math:`\omega_i`,
  averaged over :math:`i`. Much better than Hutchinson on (nearly) low-rank
  matrices, exact on a matrix of rank below ``m / 2``.

These estimate ``diag(A)`` of any operator from products only; the exact or
backpropagated diagonals of network curvature matrices (HesScale, exact GGN
diagonals) live in :mod:`curvlab.diagonal`. Probes come from the same reproducible
streams as :mod:`curvlab.linalg.trace` (Hutchinson's diagonal and trace with one seed
use the same probes).

References:
    - Bekas, C., Kokiopoulou, E., & Saad, Y. (2007). An estimator for the diagonal
      of a matrix. Applied Numerical Mathematics, 57(11-12).
    - Epperly, E. N., Tropp, J. A., & Webber, R. J. (2024). XTrace: Making the most
      of every sample in stochastic trace estimation. SIAM Journal on Matrix
      Analysis and Applications (SIMAX).
    - Baston, R. A., & Nakatsukasa, Y. (2022). Stochastic diagonal estimation:
      probabilistic bounds and an improved algorithm (Diag++). arXiv:2201.10684.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from curvlab.linalg._operator import CountedOperator
from curvlab.linalg.trace import _exchangeable_sketch, _probe_products

__all__ = ["DiagonalEstimate", "hutchinson_diagonal", "xdiag"]


@dataclass(frozen=True)
class DiagonalEstimate:
    r"""An estimate of the diagonal of a square operator.

    Attributes:
        value: ``(D,)`` estimate of :math:`\operatorname{diag}(A)`, on the
            operator's dtype and device.
        num_matvecs: Products spent (columns multiplied by the operator).
        std_error: ``(D,)`` entrywise standard error estimate, or ``None`` where
            the method gives none (a single probe).
    """

    value: Tensor
    num_matvecs: int
    std_error: Tensor | None = None


def hutchinson_diagonal(
    op,
    num_matvecs: int,
    *,
    distribution: str = "rademacher",
    seed: int | torch.Generator = 0,
    block_size: int | None = None,
) -> DiagonalEstimate:
    r"""Estimate :math:`\operatorname{diag}(A)` with Bekas et al.'s estimator.

    .. math::

        \widehat{\operatorname{diag}}(A)_k =
        \frac{\sum_{i=1}^m \omega_{ik} (A\omega_i)_k}{\sum_{i=1}^m \omega_{ik}^2}
        = A_{kk} + \sum_{j \ne k} A_{kj}
        \frac{\sum_i \omega_{ik}\omega_{ij}}{\sum_i \omega_{ik}^2}.

    The second term has mean zero for probes with independent symmetric entries
    (flip the sign of :math:`\omega_{\cdot j}`), so the estimator is unbiased. With
    Rademacher probes the denominator is ``m`` (curvlinops' ``hutchinson_diag``
    and skerch's ``hutch``) and a diagonal :math:`A` is recovered exactly; with
    Gaussian probes the normalisation by :math:`\sum_i \omega_{ik}^2` removes the
    spread of the probes' own magnitudes. The standard error is the delta-method
    error of this ratio, :math:`\sqrt{\sum_i r_{ik}^2 / (m(m-1))} \,/\,
    \overline{\omega_{\cdot k}^2}` with :math:`r_{ik} = \omega_{ik}(A\omega_i)_k -
    \hat d_k \omega_{ik}^2` (the sample standard deviation over :math:`\sqrt m` for
    Rademacher probes).

    Args:
        op: Square operator ``(D, D)``: a
            :class:`~curvlab.operators.CurvatureOperator`, a tensor, or any object
            with ``shape``, ``dtype``, ``device`` and ``@``.
        num_matvecs: Number ``m >= 1`` of probes, one product each.
        distribution: ``"rademacher"`` (default), ``"normal"`` or ``"sphere"``.
        seed: Seed of the probe stream (or a ``torch.Generator`` drawn in order).
        block_size: Columns per product (default ``min(m, 32)``); it changes memory
            and speed, not the result.

    Returns:
        The ``(D,)`` estimate, ``num_matvecs = m`` and the entrywise standard error
        (``None`` for ``m = 1``).

    Raises:
        TypeError: If ``op`` is not an operator or a count is not an int.
        ValueError: If ``num_matvecs < 1`` or an argument is out of range.
        FloatingPointError: If a product is not finite.

    Example:
        >>> import torch
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> est = hutchinson_diagonal(A, 1000)
        >>> bool((est.value - torch.tensor([2.0, 3.0])).abs().max() < 0.15)
        True
    """
    A, m, products = _probe_products(
        op, "hutchinson_diagonal", num_matvecs, distribution, seed, block_size
    )
    # Running sums of y = z - c w, w, y², y w, w² with z = ω ⊙ Aω, w = ω ⊙ ω and a
    # shift c (the first block's estimate) that keeps the variance sums from
    # cancelling catastrophically.
    sums = A.zeros(5, A.dim)
    shift = None
    for V, AV in products:
        z = V * AV
        w = V * V
        if shift is None:
            shift = z.sum(1) / w.sum(1)
        y = z - shift[:, None] * w
        sums += torch.stack([y.sum(1), w.sum(1), (y * y).sum(1), (y * w).sum(1),
                             (w * w).sum(1)])  # fmt: skip
    sy, sw, syy, syw, sww = sums
    delta = sy / sw
    value = shift + delta
    if m < 2:
        return DiagonalEstimate(value, A.num_matvecs, None)
    # residuals r = z - value w = y - delta w
    residual2 = (syy - 2 * delta * syw + delta**2 * sww).clamp_min(0)
    std_error = torch.sqrt(residual2 / (m * (m - 1))) / (sw / m)
    return DiagonalEstimate(value, A.num_matvecs, std_error)


def xdiag(
    op,
    num_matvecs: int,
    *,
    distribution: str = "rademacher",
    seed: int | torch.Generator = 0,
    block_size: int | None = None,
) -> DiagonalEstimate:
    r"""Estimate :math:`\operatorname{diag}(A)` of a symmetric operator with XDiag.

    With :math:`n = m/2` probes :math:`\Omega`, :math:`Q_{(i)}` an orthonormal basis
    of :math:`\operatorname{range}(A\Omega_{-i})` and :math:`P_i = I - Q_{(i)}
    Q_{(i)}^\top`:

    .. math::

        \widehat{\operatorname{diag}}(A) = \frac1n \sum_{i=1}^n \Big[
        \operatorname{diag}(Q_{(i)} Q_{(i)}^\top A)
        + \omega_i \odot P_i A \omega_i \Big].

    Each term is unbiased (the first is exact on the range of :math:`Q_{(i)}`, the
    second is Hutchinson's diagonal of :math:`P_i A` with a probe independent of
    :math:`P_i`). All :math:`Q_{(i)}` come from one QR of :math:`A\Omega` (see
    :func:`curvlab.linalg.trace._exchangeable_basis`); :math:`Q_{(i)}^\top A =
    (AQ_{(i)})^\top` uses the symmetry of :math:`A`. Products: :math:`n` for
    :math:`A\Omega`, :math:`r \le n` for :math:`AQ` (fewer on exactly low-rank
    matrices; the realized count is returned). ``std_error`` is the entrywise spread
    of the :math:`n` terms over :math:`\sqrt n`, as XTrace's error estimate.
    The estimate is exact when :math:`\operatorname{rank}(A) \le n - 1`.

    Args:
        op: Symmetric square operator ``(D, D)`` (see :func:`hutchinson_diagonal`).
        num_matvecs: Even budget ``m >= 2`` with ``m / 2 <= D``.
        distribution: ``"rademacher"`` (default, as Epperly et al. and curvlinops),
            ``"normal"`` or ``"sphere"``.
        seed: Seed of the probe stream.
        block_size: Columns per product (default ``min(m / 2, 32)``).

    Returns:
        The ``(D,)`` estimate, the products spent and the entrywise error estimate
        (``None`` for ``m = 2``).

    Raises:
        TypeError: If ``op`` is not an operator or a count is not an int.
        ValueError: If ``op`` declares itself non-symmetric, or the budget is odd,
            below 2, or ``m / 2 > D``.
        FloatingPointError: If a product is not finite.

    Example:
        >>> import torch
        >>> from curvlab.linalg import synthetic
        >>> A, _ = synthetic.low_rank(50, 4)
        >>> est = xdiag(A, 10)  # exact once m / 2 >= rank + 1
        >>> torch.allclose(est.value, A.diagonal(), atol=1e-10)
        True
    """
    A = CountedOperator(op, symmetric=True)
    Om, Y, Qr, Ry, S, Z = _exchangeable_sketch(
        A, "xdiag", num_matvecs, distribution, seed, block_size
    )
    n = Om.shape[1]
    QS = Qr @ S
    # (I - P_i) A ω_i = Y_i - Q_r (I - s_i s_i^T) Q_r^T Y_i, column by column
    residual = Y - Qr @ Ry + QS * (S * Ry).sum(0)
    terms = (Qr * Z).sum(1, keepdim=True) - QS * (Z @ S) + Om * residual
    value = terms.mean(1)
    std_error = terms.std(1) / math.sqrt(n) if n >= 2 else None
    return DiagonalEstimate(value, A.num_matvecs, std_error)

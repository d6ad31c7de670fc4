r"""Stochastic trace estimators and a Frobenius-norm estimate, from products alone.

Three estimators of :math:`\operatorname{tr}(A)` for a square operator :math:`A`,
each spending a budget of ``num_matvecs`` products (one column = one product):

- :func:`hutchinson_trace`: Girard--Hutchinson, :math:`\frac1m\sum_i \omega_i^\top
  A\omega_i`. Unbiased for any probe distribution with
  :math:`\mathbb E[\omega\omega^\top] = I`; the error falls like
  :math:`\|A\|_F/\sqrt m`.
- :func:`hutchpp_trace`: Hutch++ (Meyer, Musco, Musco & Woodruff 2021). A third of
  the budget sketches the range of :math:`A`, a third takes the trace exactly on
  that range, the rest runs Hutchinson on the complement. On a matrix of rank
  :math:`r` and budget :math:`\ge 3r` it is exact; for PSD matrices the error falls
  like :math:`1/m` instead of :math:`1/\sqrt m`.
- :func:`xtrace`: XTrace (Epperly, Tropp & Webber 2024), the exchangeable version of
  Hutch++: every probe serves both to sketch the range (with the others) and as a
  Hutchinson probe on the complement of the others' range. Half the budget
  measures :math:`A\Omega`, half :math:`AQ`. By default it uses the paper's
  "improved" variant (probes on the sphere, the complement term normalised). It also
  returns the error estimate of the paper (the spread of the :math:`m/2`
  leave-one-out estimates).

:func:`frobenius_norm_estimate` estimates :math:`\|A\|_F^2 = \operatorname{tr}
(A^\top A) = \mathbb E\|A\omega\|^2` the same way.

Probes are drawn from reproducible streams: probe column ``j`` of stream ``s`` comes
from ``curvlab.linalg._random.generator(seed, s, j)``, drawn on the CPU and moved, so
a result does not depend on ``block_size`` (the number of columns handed to ``op``
at once), on the device, or on which other estimators ran. Hutchinson's trace and
diagonal estimators with the same seed use the same probes.

References:
    - Hutchinson, M. F. (1989). A stochastic estimator of the trace of the influence
      matrix for Laplacian smoothing splines. Communications in Statistics -
      Simulation and Computation.
    - Meyer, R. A., Musco, C., Musco, C., & Woodruff, D. P. (2021). Hutch++: Optimal
      stochastic trace estimation. Symposium on Simplicity in Algorithms (SOSA).
    - Epperly, E. N., Tropp, J. A., & Webber, R. J. (2024). XTrace: Making the most
      of every sample in stochastic trace estimation. SIAM Journal on Matrix
      Analysis and Applications (SIMAX).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from curvlab._checks import check_int
from curvlab.linalg._operator import CountedOperator
from curvlab.linalg._random import gaussian, generator, rademacher

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DISTRIBUTIONS",
    "FrobeniusEstimate",
    "TraceEstimate",
    "frobenius_norm_estimate",
    "hutchinson_trace",
    "hutchpp_trace",
    "xtrace",
]

#: Probe distributions: ``±1`` entries, standard normal entries, or uniform on the
#: sphere of radius ``sqrt(D)``. All satisfy ``E[ω ω^T] = I``.
DISTRIBUTIONS = ("rademacher", "normal", "sphere")

#: Columns handed to the operator at once when ``block_size`` is not given.
DEFAULT_BLOCK_SIZE = 32


@dataclass(frozen=True)
class TraceEstimate:
    r"""An estimate of a trace.

    Attributes:
        value: The estimate of :math:`\operatorname{tr}(A)`.
        num_matvecs: Products spent (columns multiplied by the operator).
        std_error: Estimated standard error of ``value`` where the method gives one
            (Hutchinson: sample standard deviation over :math:`\sqrt m`; Hutch++:
            the same for its Hutchinson part; XTrace: the spread of its
            leave-one-out estimates over :math:`\sqrt{m/2}`), else ``None``.
    """

    value: float
    num_matvecs: int
    std_error: float | None = None

    def __float__(self) -> float:
        return self.value


@dataclass(frozen=True)
class FrobeniusEstimate:
    r"""An estimate of a Frobenius norm.

    Attributes:
        value: The estimate of :math:`\|A\|_F`, the square root of ``squared``.
        squared: The unbiased estimate of :math:`\|A\|_F^2`.
        num_matvecs: Products spent.
        std_error: Estimated standard error of ``squared`` (``None`` for one probe).
    """

    value: float
    squared: float
    num_matvecs: int
    std_error: float | None = None

    def __float__(self) -> float:
        return self.value


# ----------------------------------------------------------------------- checks
def _check_budget(method: str, num_matvecs, requirement: str, ok) -> int:
    """Raise a ``ValueError`` saying what ``method`` needs unless ``ok(budget)``."""
    if isinstance(num_matvecs, bool) or not isinstance(num_matvecs, int):
        raise TypeError(
            f"num_matvecs must be an int. Got {type(num_matvecs).__name__}."
        )
    if not ok(num_matvecs):
        raise ValueError(
            f"{method} needs {requirement}. Got num_matvecs={num_matvecs}."
        )
    return num_matvecs


def _check_distribution(distribution: str, allowed=DISTRIBUTIONS) -> str:
    if distribution not in allowed:
        raise ValueError(
            f"distribution must be one of {', '.join(map(repr, allowed))}. "
            f"Got {distribution!r}."
        )
    return distribution


def _block_size(block_size: int | None, total: int) -> int:
    if block_size is None:
        return max(1, min(total, DEFAULT_BLOCK_SIZE))
    return check_int("block_size", block_size, 1)


def _blocks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


# ----------------------------------------------------------------------- probes
class _ProbeStream:
    """Probe columns ``start:stop`` of one reproducible stream.

    With an int ``seed``, column ``j`` comes from ``generator(seed, stream, j)`` and
    any range can be drawn in any order. With a ``torch.Generator``, columns are
    drawn from it in the order requested (the callers draw them in order).
    """

    def __init__(self, distribution, dim, seed, stream, *, dtype, device):
        self.distribution = _check_distribution(distribution)
        self.dim = dim
        self.dtype = dtype
        self.device = device
        if isinstance(seed, torch.Generator):
            self._gen = seed
        else:
            generator(seed)  # validate now, with the user's value in the message
            self._gen = None
        self._seed = seed
        self._stream = stream

    def _column(self, j: int) -> Tensor:
        gen = (
            self._gen
            if self._gen is not None
            else generator(self._seed, self._stream, j)
        )
        if self.distribution == "rademacher":
            return rademacher((self.dim,), gen, dtype=torch.float64, device="cpu")
        x = gaussian((self.dim,), gen, dtype=torch.float64, device="cpu")
        if self.distribution == "sphere":
            x = x * (math.sqrt(self.dim) / x.norm())
        return x

    def draw(self, start: int, stop: int) -> Tensor:
        """Return the ``(D, stop - start)`` probe block on the target dtype/device."""
        X = torch.stack([self._column(j) for j in range(start, stop)], dim=1)
        return X.to(dtype=self.dtype, device=self.device)


def _apply(A: CountedOperator, X: Tensor, size: int, step: str) -> Tensor:
    """``A @ X`` with the columns of ``X`` handed over ``size`` at a time."""
    if X.shape[1] == 0:
        return torch.zeros_like(X)
    return torch.cat(
        [A.apply(X[:, i:j], step=step) for i, j in _blocks(X.shape[1], size)], dim=1
    )


def _probe_products(op, method: str, num_matvecs, distribution, seed, block_size):
    """Check a budget of one product per probe; return ``A``, ``m`` and the products.

    The products are an iterator over the probe blocks ``(V, A V)`` of stream 0,
    computed as they are taken.
    """
    A = CountedOperator(op)
    m = _check_budget(method, num_matvecs, "num_matvecs >= 1", _at_least(1))
    size = _block_size(block_size, m)
    probes = _ProbeStream(distribution, A.dim, seed, 0, dtype=A.dtype, device=A.device)
    blocks = (probes.draw(start, stop) for start, stop in _blocks(m, size))
    return A, m, ((V, A.apply(V, step=method)) for V in blocks)


def _mean_and_error(samples: Tensor) -> tuple[float, float | None]:
    m = samples.numel()
    value = float(samples.mean())
    if m < 2:
        return value, None
    return value, float(samples.std() / math.sqrt(m))


# -------------------------------------------------------------------- estimators
def hutchinson_trace(
    op,
    num_matvecs: int,
    *,
    distribution: str = "rademacher",
    seed: int | torch.Generator = 0,
    block_size: int | None = None,
) -> TraceEstimate:
    r"""Estimate :math:`\operatorname{tr}(A)` with Girard--Hutchinson's estimator.

    .. math::

        \widehat{\operatorname{tr}}(A) = \frac1m \sum_{i=1}^m \omega_i^\top A
        \omega_i, \qquad \mathbb E[\omega\omega^\top] = I
        \ \Rightarrow\ \mathbb E[\omega^\top A\omega]
        = \operatorname{tr}(A\,\mathbb E[\omega\omega^\top])
        = \operatorname{tr}(A).

    With Rademacher probes the variance is :math:`\frac2m(\|A\|_F^2 -
    \sum_i A_{ii}^2)`, with Gaussian probes :math:`\frac2m\|A\|_F^2` (symmetric
    :math:`A`). PyHessian's ``hessian.trace`` is this estimator with Rademacher
    probes and a stopping rule instead of a fixed budget.

    Args:
        op: Square operator ``(D, D)``: a :class:`~curvlab.operators.CurvatureOperator`,
            a tensor, or any object with ``shape``, ``dtype``, ``device`` and ``@``.
        num_matvecs: Number ``m >= 1`` of probes, one product each.
        distribution: ``"rademacher"``, ``"normal"`` or ``"sphere"`` (uniform on the
            sphere of radius :math:`\sqrt D`).
        seed: Seed of the probe stream (or a ``torch.Generator`` drawn in order).
        block_size: Columns per product (default ``min(m, 32)``); it changes memory
            and speed, not the result.

    Returns:
        The estimate, ``num_matvecs = m`` and the standard error
        (sample standard deviation over :math:`\sqrt m`, ``None`` for ``m = 1``).

    Raises:
        TypeError: If ``op`` is not an operator or a count is not an int.
        ValueError: If ``num_matvecs < 1``, or an argument is out of range.
        FloatingPointError: If a product is not finite.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
        >>> hutchinson_trace(A, 4).value  # exact: diagonal A, Rademacher probes
        15.0
    """
    A, _, products = _probe_products(
        op, "hutchinson_trace", num_matvecs, distribution, seed, block_size
    )
    value, error = _mean_and_error(torch.cat([(V * AV).sum(0) for V, AV in products]))
    return TraceEstimate(value, A.num_matvecs, error)


def hutchpp_trace(
    op,
    num_matvecs: int,
    *,
    distribution: str = "rademacher",
    seed: int | torch.Generator = 0,
    block_size: int | None = None,
) -> TraceEstimate:
    r"""Estimate :math:`\operatorname{tr}(A)` with Hutch++.

    With :math:`k = \lfloor m/3 \rfloor` sketch probes :math:`S` and :math:`g = m -
    2k` Hutchinson probes :math:`G`, :math:`Q = \operatorname{orth}(AS)` and
    :math:`P = I - QQ^\top`:

    .. math::

        \widehat{\operatorname{tr}}(A) = \operatorname{tr}(Q^\top A Q)
        + \frac1g \sum_{i=1}^g (P g_i)^\top A (P g_i).

    The first term is the exact trace on :math:`\operatorname{range}(Q)`, the
    second Hutchinson's unbiased estimate of :math:`\operatorname{tr}(PAP)`, so the
    estimate is unbiased; it is exact when :math:`\operatorname{rank}(A) \le k`.
    Products: :math:`k` for :math:`AS`, :math:`k` for :math:`AQ`, :math:`g` for the
    complement (Meyer et al.'s even split when ``m`` is a multiple of 3; the
    remainder goes to :math:`g`).

    Args:
        op: Square operator ``(D, D)`` (see :func:`hutchinson_trace`).
        num_matvecs: Budget ``m >= 3`` with ``m // 3 <= D``.
        distribution: ``"rademacher"``, ``"normal"`` or ``"sphere"`` (both sets of
            probes).
        seed: Seed; the sketch uses stream 0, the Hutchinson probes stream 1.
        block_size: Columns per product (default ``min(m // 3, 32)``).

    Returns:
        The estimate, ``num_matvecs = m`` and the standard error of the Hutchinson
        part (``None`` when ``g = 1``).

    Raises:
        TypeError: If ``op`` is not an operator or a count is not an int.
        ValueError: If the budget is below 3 or ``m // 3 > D``.
        FloatingPointError: If a product is not finite.

    Example:
        >>> from curvlab.linalg import synthetic
        >>> A, _ = synthetic.low_rank(50, 4)  # trace 4, rank 4
        >>> round(hutchpp_trace(A, 12).value, 8)  # exact once m // 3 >= rank
        4.0
    """
    A = CountedOperator(op)
    D = A.dim
    m = _check_budget(
        "hutchpp_trace",
        num_matvecs,
        f"num_matvecs >= 3 with num_matvecs // 3 <= D = {D}",
        lambda b: b >= 3 and b // 3 <= D,
    )
    k, g = m // 3, m - 2 * (m // 3)
    size = _block_size(block_size, k)
    sketch = _ProbeStream(distribution, D, seed, 0, dtype=A.dtype, device=A.device)
    Q, _ = torch.linalg.qr(_apply(A, sketch.draw(0, k), size, "hutchpp_trace sketch"))
    top = float((Q * _apply(A, Q, size, "hutchpp_trace range")).sum())
    probes = _ProbeStream(distribution, D, seed, 1, dtype=A.dtype, device=A.device)
    samples = []
    for start, stop in _blocks(g, size):
        G = probes.draw(start, stop)
        G = G - Q @ (Q.T @ G)
        samples.append((G * A.apply(G, step="hutchpp_trace complement")).sum(0))
    rest, error = _mean_and_error(torch.cat(samples))
    return TraceEstimate(top + rest, A.num_matvecs, error)


def _exchangeable_basis(Y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Leave-one-out bases of :math:`\operatorname{range}(Y)` for XTrace/XDiag.

    With :math:`Y = Q_r R_r` (rank :math:`r`, by the SVD of the QR factor ``R``,
    singular values below :math:`10\,m\,\epsilon\,\sigma_1`, i.e. at rounding
    level, dropped), the
    projector onto the span of all columns but :math:`i` is :math:`Q_r (I - s_i
    s_i^\top) Q_r^\top`. If column :math:`i` is needed for the rank (leverage
    :math:`\|V_r^\top e_i\|^2 = 1`), :math:`s_i` is the unit vector along
    :math:`R_r^{+\top} e_i`, orthogonal to every other column of :math:`R_r`
    (for full rank this is Epperly et al.'s normalised column of
    :math:`R^{-\top}`); otherwise removing column :math:`i` keeps the span and
    :math:`s_i = 0`. The SVD makes exactly low-rank matrices (where ``R`` is
    singular and its inverse meaningless) exact rather than unstable.

    Args:
        Y: ``(D, m)`` sketch ``A Ω``.

    Returns:
        ``Q_r`` ``(D, r)``, ``Q_r^T Y`` ``(r, m)`` and ``S`` ``(r, m)`` whose columns
        are the :math:`s_i` (zero where not needed).
    """
    m = Y.shape[1]
    Q, R = torch.linalg.qr(Y)
    U, sig, Vh = torch.linalg.svd(R)
    eps = torch.finfo(Y.dtype).eps
    r = int((sig > sig[0] * 10 * m * eps).sum()) if float(sig[0]) > 0 else 0
    Qr = Q @ U[:, :r]
    S = Vh[:r] / sig[:r, None]
    S = S / S.norm(dim=0, keepdim=True).clamp_min(torch.finfo(Y.dtype).tiny)
    if r < m:
        leverage = (Vh[:r] ** 2).sum(0)
        S = S * (leverage > 1 - math.sqrt(eps)).to(S.dtype)
    return Qr, Qr.T @ Y, S


def _exchangeable_sketch(
    A: CountedOperator,
    method: str,
    num_matvecs,
    distribution: str,
    seed,
    block_size: int | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""The products XTrace and XDiag share: half the budget each on Y and Z.

    Draws ``n = m / 2`` probes :math:`\Omega`, forms :math:`Y = A\Omega`, its
    leave-one-out basis (:func:`_exchangeable_basis`) and :math:`Z = A Q_r`.

    Returns:
        ``(Omega, Y, Q_r, R_y, S, Z)``.

    Raises:
        ValueError: If the budget is odd, below 2, or ``m / 2 > D``.
    """
    D = A.dim
    m = _check_budget(
        method,
        num_matvecs,
        f"an even num_matvecs >= 2 with num_matvecs / 2 <= D = {D}",
        lambda b: b >= 2 and b % 2 == 0 and b // 2 <= D,
    )
    n = m // 2
    size = _block_size(block_size, n)
    probes = _ProbeStream(distribution, D, seed, 0, dtype=A.dtype, device=A.device)
    Om = probes.draw(0, n)
    Y = _apply(A, Om, size, f"{method} sketch")
    Qr, Ry, S = _exchangeable_basis(Y)
    Z = _apply(A, Qr, size, f"{method} range")
    return Om, Y, Qr, Ry, S, Z


def xtrace(
    op,
    num_matvecs: int,
    *,
    distribution: str = "sphere",
    seed: int | torch.Generator = 0,
    block_size: int | None = None,
) -> TraceEstimate:
    r"""Estimate :math:`\operatorname{tr}(A)` with XTrace (exchangeable Hutch++).

    With :math:`n = m/2` probes :math:`\Omega = [\omega_1, \dots, \omega_n]`, let
    :math:`Q_{(i)}` be an orthonormal basis of :math:`\operatorname{range}(A
    \Omega_{-i})` (all probes but :math:`i`) and :math:`P_i = I - Q_{(i)}
    Q_{(i)}^\top`. Each probe gives the Hutch++ estimate

    .. math::

        t_i = \operatorname{tr}(Q_{(i)}^\top A Q_{(i)})
        + c_i\,\omega_i^\top P_i A P_i\,\omega_i,
        \qquad \widehat{\operatorname{tr}}(A) = \frac1n\sum_i t_i,

    unbiased because :math:`Q_{(i)}` does not depend on :math:`\omega_i`. All
    :math:`Q_{(i)}` come from one QR of :math:`A\Omega` by a rank-one downdate (see
    :func:`_exchangeable_basis`), so the cost is :math:`n` products for
    :math:`A\Omega` and :math:`r \le n` for :math:`AQ` (:math:`r` the numerical rank
    of :math:`A\Omega`; on an exactly low-rank matrix fewer than ``m`` products are
    spent and the realized count is returned). For the rotation-invariant
    distributions (``"normal"``, ``"sphere"``) :math:`c_i = (D - \operatorname{rank}
    Q_{(i)}) / \|P_i\omega_i\|^2`: the "improved" XTrace of Epperly et al., their
    recommended variant and the default here. Given :math:`Q_{(i)}`, the direction
    of :math:`P_i\omega_i` is uniform on the complement's sphere, so the estimate
    stays unbiased, and the fluctuation of :math:`\|P_i\omega_i\|^2` no longer
    enters; it is exact on a flat complement spectrum, and on low-rank-plus-noise
    matrices its error is orders of magnitude below the Rademacher version's
    (``"normal"`` and ``"sphere"`` then give the same estimate, which depends on the
    probes' directions only). For Rademacher probes :math:`c_i = 1` (the estimator
    of curvlinops' ``xtrace``). ``std_error`` is the paper's error estimate
    :math:`\operatorname{std}(t_i)/\sqrt n`.

    The estimate is exact when :math:`\operatorname{rank}(A) \le n - 1`.

    Args:
        op: Square operator ``(D, D)`` (see :func:`hutchinson_trace`).
        num_matvecs: Even budget ``m >= 2`` with ``m / 2 <= D``.
        distribution: ``"sphere"`` (default; uniform on the sphere of radius
            :math:`\sqrt D`, the improved XTrace), ``"normal"`` (the same estimate)
            or ``"rademacher"`` (no normalisation).
        seed: Seed of the probe stream.
        block_size: Columns per product (default ``min(m / 2, 32)``).

    Returns:
        The estimate, the products spent and the error estimate (``None`` for
        ``m = 2``).

    Raises:
        TypeError: If ``op`` is not an operator or a count is not an int.
        ValueError: If the budget is odd, below 2, or ``m / 2 > D``.
        FloatingPointError: If a product is not finite.

    Example:
        >>> from curvlab.linalg import synthetic
        >>> A, _ = synthetic.low_rank(50, 4)  # trace 4, rank 4
        >>> round(xtrace(A, 10).value, 8)  # exact once m / 2 >= rank + 1
        4.0
    """
    A = CountedOperator(op)
    D = A.dim
    Om, Y, Qr, Ry, S, Z = _exchangeable_sketch(
        A, "xtrace", num_matvecs, distribution, seed, block_size
    )
    H = Qr.T @ Z
    W = Qr.T @ Om
    T = Z.T @ Om
    V = W - S * (S * W).sum(0)  # Q_r^T P_(i) ω_i = (I - s_i s_i^T) W_i
    top = H.trace() - ((H @ S) * S).sum(0)
    rest = (Om * Y).sum(0) - (T * V).sum(0) - (Ry * V).sum(0) + ((H @ V) * V).sum(0)
    if distribution in ("normal", "sphere"):
        rank_i = Qr.shape[1] - (S.norm(dim=0) > 0).to(S.dtype)
        norm2 = (Om * Om).sum(0) - (V * V).sum(0)
        usable = (D - rank_i > 0) & (norm2 > 0)
        rest = torch.where(usable, rest * (D - rank_i) / norm2.where(usable, 1), 0)
    value, error = _mean_and_error(top + rest)
    return TraceEstimate(value, A.num_matvecs, error)


def frobenius_norm_estimate(
    op,
    num_matvecs: int,
    *,
    distribution: str = "normal",
    seed: int | torch.Generator = 0,
    block_size: int | None = None,
) -> FrobeniusEstimate:
    r"""Estimate :math:`\|A\|_F` from :math:`\|A\|_F^2 = \mathbb E\|A\omega\|^2`.

    .. math::

        \widehat{\|A\|_F^2} = \frac1m \sum_{i=1}^m \|A\omega_i\|^2,
        \qquad \mathbb E\|A\omega\|^2 = \operatorname{tr}(A^\top A\,
        \mathbb E[\omega\omega^\top]) = \|A\|_F^2.

    The squared estimate is unbiased; its square root (``value``) is biased low by
    Jensen's inequality, by a relative :math:`O(1/m)`. With Gaussian probes and
    symmetric :math:`A` the relative standard deviation of the squared estimate is
    :math:`\sqrt{2/m}\,\|A^2\|_F/\|A\|_F^2 \le \sqrt{2/m}`. This is the a-posteriori
    error estimate of sketched methods (Tropp et al.), with Gaussian probes by
    default.

    Args:
        op: Square operator ``(D, D)`` (see :func:`hutchinson_trace`).
        num_matvecs: Number ``m >= 1`` of probes.
        distribution: ``"normal"`` (default), ``"rademacher"`` or ``"sphere"``.
        seed: Seed of the probe stream.
        block_size: Columns per product (default ``min(m, 32)``).

    Returns:
        Norm, squared norm, ``num_matvecs = m`` and the standard error of the
        squared norm.

    Raises:
        TypeError: If ``op`` is not an operator or a count is not an int.
        ValueError: If ``num_matvecs < 1`` or an argument is out of range.
        FloatingPointError: If a product is not finite.

    Example:
        >>> import torch
        >>> A = 3 * torch.eye(100, dtype=torch.float64)
        >>> est = frobenius_norm_estimate(A, 50)  # exact value 30
        >>> abs(est.value - 30) < 3
        True
    """
    A, _, products = _probe_products(
        op, "frobenius_norm_estimate", num_matvecs, distribution, seed, block_size
    )
    squared, error = _mean_and_error(
        torch.cat([(AV * AV).sum(0) for _, AV in products])
    )
    return FrobeniusEstimate(
        math.sqrt(max(squared, 0.0)), squared, A.num_matvecs, error
    )


def _at_least(minimum: int):
    return lambda b: b >= minimum

r"""CholeskyQR2 over row blocks, with a shifted first pass when needed.

For a tall :math:`Y \in \mathbb{R}^{D \times k}` read in row blocks
:math:`Y_b`, one pass accumulates the float64 Gram matrix
:math:`G = \sum_b Y_b^\top Y_b` and factors :math:`G = R^\top R` (Cholesky);
then :math:`Q = Y R^{-1}`. One pass leaves :math:`\|Q^\top Q - I\|` of order
:math:`u\,\kappa(Y)^2`; a second pass on :math:`Q` (CholeskyQR2, Fukaya,
Nakatsukasa, Yanagisawa & Yamamoto 2014) brings it to :math:`O(u)` when
:math:`\kappa(Y) \lesssim u^{-1/2}`. When Cholesky fails or :math:`G` is
ill-conditioned (:math:`\kappa(G) > 10^{-2}/u`), the first pass factors
:math:`G + \sigma I` with :math:`\sigma = 11 (Dk + k(k+1))\, u\, \|G\|_2`
(shifted CholeskyQR3, Fukaya, Kannan, Nakatsukasa, Yamamoto & Yanagisawa 2020)
and two plain passes follow (a later pass whose Cholesky fails is shifted too,
and two plain passes follow it).

:math:`Q` is never stored: :math:`R = R_p \cdots R_1` is kept as its factors,
:math:`T_i = R_i^{-1}` are formed by ``k x k`` triangular solves, and a row
block of :math:`Q` is :math:`(Y_b T_1) \cdots T_p`; products
:math:`\Psi^\top Q` follow from :math:`\Psi^\top Y` the same way. The passes
are plain reductions over blocks: in this process, or as a Dask map-reduce
(:mod:`curvlab.store.solve`).
Measured in issue 12 at ``D = 10^6``, ``k = 256`` from ``.npy`` files: 13 s and
0.29 GiB, against 64 s and 10.5 GiB for an in-memory float64 QR.

References:
    - Fukaya, Nakatsukasa, Yanagisawa & Yamamoto (2014). CholeskyQR2: a simple
      and communication-avoiding algorithm for computing a tall-skinny QR
      factorization on a large-scale parallel system. ScalA 2014.
    - Fukaya, Kannan, Nakatsukasa, Yamamoto & Yanagisawa (2020). Shifted
      Cholesky QR for computing the QR factorization of ill-conditioned
      matrices. SIAM J. Sci. Comput. 42(1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "CholeskyQRInfo",
    "apply_r_inverse",
    "cholesky_qr2",
    "cholesky_step",
    "r_inverse",
]

_EPS = torch.finfo(torch.float64).eps


class CholeskyQRInfo(NamedTuple):
    r"""Diagnostics of a streamed CholeskyQR.

    Attributes:
        passes: Passes over the data (2, or 3 with a shift).
        shifted: Whether a pass was shifted.
        shift: The first pass's shift :math:`\sigma` (0 when not shifted).
        gram_condition: :math:`\kappa(G)` of the first pass's Gram matrix
            (``inf`` if it was not positive definite).
    """

    passes: int
    shifted: bool
    shift: float
    gram_condition: float


def r_inverse(factors: Iterable[Tensor]) -> list[Tensor]:
    r"""The inverses :math:`R_i^{-1}` of the factors, as ``(k, k)`` float64 matrices.

    Formed by triangular solves on ``k x k``; a row block of :math:`Q` is then
    the products :math:`(Y_b R_1^{-1}) R_2^{-1} \cdots`, applied one by one as
    the passes computed them (merging them into one matrix would lose the
    second pass's correction when :math:`R_1` is ill-conditioned). Matrix
    products ran faster per flop than block triangular solves at ``k = 1500``
    on 2 cores, with the same :math:`O(u\,\kappa(R_i))` forward error.

    Args:
        factors: Upper triangular ``(k, k)`` factors, first pass first.

    Returns:
        The inverses, in the same order.
    """
    out = []
    for R in factors:
        eye = torch.eye(R.shape[0], dtype=torch.float64)
        out.append(torch.linalg.solve_triangular(R, eye, upper=True))
    return out


def apply_r_inverse(X: Tensor, inverses: Iterable[Tensor]) -> Tensor:
    """``X R_1^{-1} R_2^{-1} ...`` in float64, one product per factor.

    Args:
        X: ``(b, k)``.
        inverses: From :func:`r_inverse` (the last may be multiplied by more).

    Returns:
        ``(b, k)`` (or as wide as the last matrix) float64.
    """
    X = X.to(torch.float64)
    for T in inverses:
        X = X @ T
    return X


def cholesky_step(
    gram: Tensor, rows: int, *, allow_shift: bool, first: bool = True
) -> tuple[Tensor, float, float]:
    r"""Factor one pass's Gram matrix, shifting it when it is ill-conditioned.

    Args:
        gram: ``(k, k)`` float64 Gram matrix.
        rows: ``D``, the number of rows it sums over (for the shift).
        allow_shift: Shift instead of failing.
        first: The first pass: shift also when Cholesky succeeds but
            :math:`\kappa(G) > 10^{-2}/u` (later passes shift only if it fails).

    Returns:
        ``(R, shift, condition)``: upper triangular ``R`` with
        ``R^T R = gram + shift I``, the shift, :math:`\kappa(G)`.

    Raises:
        ValueError: If the matrix is not positive definite and no shift is
            allowed (the data are rank deficient or not finite).
    """
    gram = (gram + gram.mT) / 2
    k = gram.shape[0]
    values = torch.linalg.eigvalsh(gram)
    top, low = float(values[-1]), float(values[0])
    condition = top / low if low > 0 else float("inf")
    L, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0 and (condition < 1e-2 / _EPS or not first):
        return L.mT.contiguous(), 0.0, condition
    if not allow_shift:
        raise ValueError(
            "CholeskyQR: the Gram matrix of a pass is not positive definite "
            f"(condition {condition:.2e}): the outer sketch is numerically rank "
            "deficient or not finite."
        )
    shift = 11 * (rows * k + k * (k + 1)) * _EPS * max(top, 0.0)
    if not shift > 0:
        raise ValueError("CholeskyQR: the outer sketch is zero.")
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    L, info = torch.linalg.cholesky_ex(gram + shift * eye)
    if int(info) != 0:
        raise ValueError("CholeskyQR: the shifted Gram matrix is not definite.")
    return L.mT.contiguous(), shift, condition


def streamed_r(
    gram_pass: Callable[[list[Tensor]], Tensor], rows: int
) -> tuple[list[Tensor], CholeskyQRInfo]:
    """The factors of ``R`` from passes of ``gram_pass``.

    ``gram_pass(inverses)`` returns the Gram matrix of
    ``apply_r_inverse(Y, inverses)``, the inverses of the factors so far.

    Args:
        gram_pass: Returns the float64 Gram matrix of ``Y`` times the inverse
            of the given factors (one pass over the data).
        rows: ``D``.

    Returns:
        The upper triangular factors (first pass first) and diagnostics.
    """
    factors: list[Tensor] = []
    shifted, shift, condition, plain = False, 0.0, 0.0, 0
    while plain < 2:
        if len(factors) == 6:
            raise ValueError(
                "CholeskyQR did not reach two unshifted passes in 6: the outer "
                "sketch is too far from full column rank."
            )
        first = not factors
        R, step_shift, step_condition = cholesky_step(
            gram_pass(r_inverse(factors)), rows, allow_shift=True, first=first
        )
        factors.append(R)
        if first:
            shift, condition = step_shift, step_condition
        shifted = shifted or step_shift > 0
        plain = 0 if step_shift > 0 else plain + 1
    return factors, CholeskyQRInfo(len(factors), shifted, shift, condition)


def _blocks(rows: int, block_rows: int):
    return [(a, min(a + block_rows, rows)) for a in range(0, rows, block_rows)]


def cholesky_qr2(
    Y: Tensor, *, block_rows: int = 1 << 16
) -> tuple[Tensor, Tensor, CholeskyQRInfo]:
    r"""Thin QR of a tall ``Y`` by streamed CholeskyQR2 (module docstring).

    The same passes the out-of-core solve makes over stored columns, here over
    row blocks of a tensor. ``R`` has a positive diagonal.

    Args:
        Y: ``(D, k)`` real tensor, ``k <= D``, full column rank.
        block_rows: Rows per block.

    Returns:
        ``(Q, R, info)``: ``Q`` ``(D, k)`` in float64 with orthonormal columns,
        ``R`` ``(k, k)`` upper triangular float64 with ``Y = Q R``, diagnostics.

    Raises:
        ValueError: If ``Y`` is not a tall matrix or is rank deficient beyond
            what the shift repairs.

    Example:
        >>> Y = torch.randn(1000, 5, dtype=torch.float64)
        >>> Q, R, info = cholesky_qr2(Y, block_rows=128)
        >>> torch.allclose(Q @ R, Y), info.passes
        (True, 2)
    """
    if not isinstance(Y, Tensor) or Y.ndim != 2 or Y.shape[1] > Y.shape[0]:
        got = tuple(Y.shape) if isinstance(Y, Tensor) else type(Y).__name__
        raise ValueError(f"Y must be a tall matrix (D, k) with k <= D. Got {got}.")
    blocks = _blocks(Y.shape[0], block_rows)

    def gram_pass(inverses):
        G = torch.zeros(Y.shape[1], Y.shape[1], dtype=torch.float64)
        for a, b in blocks:
            X = apply_r_inverse(Y[a:b], inverses)
            G += X.mT @ X
        return G

    factors, info = streamed_r(gram_pass, Y.shape[0])
    T = r_inverse(factors)
    Q = torch.cat([apply_r_inverse(Y[a:b], T) for a, b in blocks])
    R = factors[0]
    for F in factors[1:]:
        R = F @ R
    return Q, R, info

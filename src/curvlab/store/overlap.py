r"""Mask overlaps on eigenvectors stored on disk, block by block.

The streaming versions of :func:`curvlab.subspace.mask_overlap` and
:func:`curvlab.subspace.overlap_curve` for a
:class:`~curvlab.store.StoredEigenvectors` (any object with ``shape``,
``gather(indices)`` and ``blocks()``): the paper's analysis without a ``D x k``
array in memory. Magnitude and random masks need only the rows they select
(gathered block by block), so their overlaps are the in-memory functions'
results bit for bit; the best mask needs the row norms of every prefix
:math:`U_{:, :k}`, kept as a running top-``k`` over row blocks (equal up to
the order of float64 summation). Memory: :math:`O(D + K^2 + \sum k)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor

from curvlab.subspace._checks import check_mask, default_atol
from curvlab.subspace.masks import (
    OverlapCurve,
    _best_from_norms,
    _curve,
    _curve_arguments,
    _ranked_overlaps_all,
    _ranked_overlaps_top_k,
    _row_norms_squared,
)

__all__ = ["mask_overlap", "overlap_curve"]


def _check_columns(U, atol: float | None):
    """Squared column norms within ``atol`` of 1, in one pass over the blocks."""
    norms = torch.zeros(U.shape[1], dtype=torch.float64)
    for _, rows in U.blocks():
        norms += rows.to(torch.float64).square().sum(0)
    atol = default_atol(U.dtype) if atol is None else atol
    error = float((norms - 1.0).abs().max())
    if not error <= atol:
        raise ValueError(
            "U must have orthonormal columns: squared column norms within "
            f"{atol:.2e} of 1 expected. Got a deviation of {error:.2e}."
        )


def mask_overlap(mask: Tensor, U, *, check: bool = True, atol=None) -> float:
    r"""Overlap of a mask with the span of stored eigenvectors.

    :math:`\|U_{S,:}\|_F^2 / \min(|S|, m)`, as
    :func:`curvlab.subspace.mask_overlap`, reading only the masked rows.

    Args:
        mask: 1-D integer tensor of distinct indices in ``[0, D)`` (CPU).
        U: :class:`~curvlab.store.StoredEigenvectors` ``(D, m)``.
        check: Check the squared column norms (one pass over ``U``).
        atol: Tolerance of the check (default :math:`10\sqrt{\varepsilon}`).

    Returns:
        The overlap in :math:`[0, 1]`.

    Raises:
        ValueError: If the mask is invalid or ``U`` is not orthonormal.
        TypeError: If the mask is no integer tensor.
    """
    check_mask(mask, U.shape[0])
    if check:
        _check_columns(U, atol)
    total = U.gather(mask.cpu()).to(torch.float64).square().sum()
    return float(total) / min(mask.numel(), U.shape[1])


def _best_top_k(U, ks: Tensor) -> Tensor:
    """Best-mask overlaps for ``eigenspace="top_k"``: running top-``k`` per ``k``."""
    tops = [torch.empty(0, dtype=torch.float64) for _ in ks]
    columns = ks - 1
    for _, rows in U.blocks():
        cumulative = rows[:, : int(ks.max())].to(torch.float64).square().cumsum(1)
        prefix = cumulative[:, columns]  # (b, len(ks))
        for j, k in enumerate(ks.tolist()):
            merged = torch.cat([tops[j], prefix[:, j]])
            tops[j] = torch.topk(merged, min(k, len(merged)), sorted=False).values
    return torch.stack([t.sum() / k for t, k in zip(tops, ks.tolist(), strict=True)])


def overlap_curve(
    params_or_vector: Tensor | Iterable[Tensor],
    U,
    ks: Iterable[int] | Tensor,
    *,
    eigenspace: Literal["top_k", "all"] = "top_k",
    best: bool = True,
    num_random: int = 10,
    seed: int = 0,
    check: bool = True,
    atol: float | None = None,
) -> OverlapCurve:
    r"""Overlap curves of magnitude, best and random masks with stored eigenvectors.

    The same curves as :func:`curvlab.subspace.overlap_curve` (same arguments,
    same random masks for the same ``seed``), computed block by block.

    Args:
        params_or_vector: The ``(D,)`` parameters (CPU) or a list of tensors.
        U: :class:`~curvlab.store.StoredEigenvectors` ``(D, K)``, columns in
            the order of interest.
        ks: Mask sizes.
        eigenspace: ``"top_k"`` (the paper) or ``"all"``.
        best: Also compute the best-mask overlaps (one pass over ``U``).
        num_random: Number of random masks.
        seed: Seed of the random masks.
        check: Check the squared column norms (one pass over ``U``).
        atol: Tolerance of the check.

    Returns:
        The curves, float64 CPU tensors.

    Raises:
        ValueError: If the parameters do not have ``D`` entries, ``ks`` or
            ``eigenspace`` or ``num_random`` are invalid, or ``U`` is not
            orthonormal.
        TypeError: If an input has a wrong type.
    """
    D, K = U.shape
    if check:
        _check_columns(U, atol)
    flat, top_k, ks = _curve_arguments(
        params_or_vector, torch.device("cpu"), (D, K), ks, eigenspace, num_random
    )
    kmax = int(ks.max())
    norms = None
    if not top_k:
        norms = torch.cat([_row_norms_squared(rows) for _, rows in U.blocks()])

    def overlaps(ranked: Tensor) -> Tensor:
        if top_k:
            rows = U.gather(ranked[:kmax])
            return _ranked_overlaps_top_k(rows, torch.arange(kmax), ks)
        return _ranked_overlaps_all(norms, ranked, ks, K)

    best_values = None
    if best:
        best_values = _best_top_k(U, ks) if top_k else _best_from_norms(norms, ks, K)
    return _curve(overlaps, flat, ks, D, K, eigenspace, num_random, seed, best_values)

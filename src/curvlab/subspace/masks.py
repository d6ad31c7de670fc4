r"""Parameter masks and their overlap with an eigenspace.

A mask selects ``k`` of the ``D`` parameters. It is represented by its indices:
a sorted ``torch.long`` tensor of length ``k``, never by the ``(D, k)`` 0/1
matrix :math:`M` whose columns are the unit vectors :math:`e_i, i \in S`. That
matrix is orthonormal, so :math:`\operatorname{span}(M)` is a point of the
Grassmannian (Fernandez et al., 2025, §2), and its overlap with the span of an
orthonormal :math:`U \in \mathbb R^{D \times k}` needs only the masked rows:

.. math::
    \operatorname{ov}(S, U) = \frac1k \|M^\top U\|_F^2
        = \frac1k \|U_{S,:}\|_F^2 = \frac1k \sum_{i \in S} \|u_{i,:}\|_2^2 .

Every function here works on row norms and gathered rows (Python loops run
over chunks of rows or over ``k``, never over single rows), in :math:`O(D k)`
time or less and :math:`O(D + k^2)` extra memory, on any device, in float32 or
float64. Squares are summed in float64 whatever
the input dtype: the cumulative sums over up to millions of rows would lose
digits in float32, and float64 costs little next to reading ``U``.

Chance level: the rows of an orthonormal :math:`U` have squared norms summing to
:math:`k`, so a uniformly random mask of size :math:`k` has
:math:`\mathbb E\,\|U_{S,:}\|_F^2 = k \cdot k/D`, an expected overlap of
:math:`k/D` (reference notes ``papers.md`` §1.3).

References:
    - Fernandez, Schneider, Mahsereci & Hennig (2025). Connecting parameter
      magnitudes and Hessian eigenspaces at scale using sketched methods.
      TMLR; arXiv 2504.14701. (First version: "What apples tell about oranges",
      ICLR 2024 submission.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from curvlab.subspace._checks import (
    check_basis,
    check_index_tensor,
    check_mask,
    check_orthonormal_fast,
    check_size,
    chunk_rows,
    orthonormalize_basis,
)

__all__ = [
    "OverlapCurve",
    "best_mask",
    "iou",
    "magnitude_mask",
    "mask_overlap",
    "overlap_curve",
    "random_mask",
]


def _flat(
    params_or_vector: Tensor | Iterable[Tensor], device: torch.device | None = None
) -> Tensor:
    """Flatten a vector or parameter tensors (as ``parameters_to_vector``)."""
    if isinstance(params_or_vector, Tensor):
        if params_or_vector.ndim != 1:
            raise ValueError(
                "A parameter vector must be 1-D (pass a list for parameter-shaped "
                f"tensors). Got shape {tuple(params_or_vector.shape)}."
            )
        flat = params_or_vector.detach()
    elif isinstance(params_or_vector, Iterable) and not isinstance(
        params_or_vector, str
    ):
        tensors = list(params_or_vector)
        if not tensors or not all(isinstance(t, Tensor) for t in tensors):
            raise TypeError(
                "params_or_vector must be a 1-D tensor or a non-empty list of "
                "tensors. Got a list with entries of types "
                f"{sorted({type(t).__name__ for t in tensors})}."
            )
        devices = {t.device for t in tensors}
        if len(devices) > 1:
            raise ValueError(
                "All parameters must be on one device. Got "
                f"{sorted(map(str, devices))}."
            )
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    else:
        raise TypeError(
            "params_or_vector must be a 1-D tensor or a list of tensors. Got "
            f"{type(params_or_vector).__name__}."
        )
    if flat.dtype.is_complex or flat.dtype == torch.bool:
        raise TypeError(f"Parameters must be real numbers. Got {flat.dtype}.")
    if flat.numel() == 0:
        raise ValueError("Parameters must have at least one entry. Got none.")
    if device is not None and flat.device != device:
        raise ValueError(
            f"The parameters and U must be on the same device. Got {flat.device} "
            f"and {device}."
        )
    if flat.dtype.is_floating_point and not bool(torch.isfinite(flat).all()):
        raise ValueError("Parameters must be finite. Got NaN or infinite entries.")
    return flat


def _ranked_top(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest scores, largest first, ties by lower index.

    Deterministic on every device: :func:`torch.topk` finds the ``k``-th
    largest value ``t``; all entries above ``t`` are taken, then the entries
    equal to ``t`` with the lowest indices. A stable sort orders the result.
    """
    threshold = torch.topk(scores, k, sorted=False).values.min()
    above = torch.nonzero(scores > threshold).squeeze(1)
    tied = torch.nonzero(scores == threshold).squeeze(1)[: k - above.numel()]
    chosen = torch.cat([above, tied]).sort().values  # ascending indices
    order = torch.sort(scores[chosen], descending=True, stable=True).indices
    return chosen[order]


def magnitude_mask(params_or_vector: Tensor | Iterable[Tensor], k: int) -> Tensor:
    r"""Magnitude mask: the indices of the ``k`` largest :math:`|\theta_i|`.

    Ties are broken towards lower indices, so the result is deterministic and
    masks are nested: ``magnitude_mask(theta, k)`` is contained in
    ``magnitude_mask(theta, k + 1)``.

    Args:
        params_or_vector: The flat ``(D,)`` parameter vector, or a list (any
            iterable, e.g. ``model.parameters()``) of parameter tensors,
            flattened and concatenated in order (as
            ``torch.nn.utils.parameters_to_vector`` does).
        k: Mask size, ``1 <= k <= D``.

    Returns:
        The ``k`` indices, sorted ascending, ``torch.long``, on the parameters'
        device.

    Raises:
        TypeError: If the input is neither a tensor nor a list of tensors, is
            complex, or ``k`` is no integer.
        ValueError: If the vector is not 1-D, has non-finite entries, the
            parameters are on several devices, or ``k`` is out of range.

    Example:
        >>> magnitude_mask(torch.tensor([0.1, -3.0, 2.0, 0.5]), 2)
        tensor([1, 2])
        >>> magnitude_mask([torch.ones(2, 2), torch.ones(3)], 3)  # ties: lowest
        tensor([0, 1, 2])
    """
    flat = _flat(params_or_vector)
    k = check_size(k, flat.numel())
    return _ranked_top(flat.abs(), k).sort().values


def random_mask(
    D: int,
    k: int,
    seed: int = 0,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> Tensor:
    """A uniformly random mask: ``k`` distinct indices out of ``D``.

    The indices are drawn on the CPU (the first ``k`` entries of a random
    permutation), so a seed gives the same mask on every device.

    Args:
        D: Number of parameters.
        k: Mask size, ``1 <= k <= D``.
        seed: Seed of a fresh CPU generator; ignored when ``generator`` is given.
        generator: A CPU generator to draw from instead (it advances).
        device: Device of the result (default: CPU).

    Returns:
        The ``k`` indices, sorted ascending, ``torch.long``.

    Raises:
        TypeError: If ``D`` or ``k`` is no integer.
        ValueError: If ``D < 1`` or ``k`` is out of range.

    Example:
        >>> mask = random_mask(10, 3, seed=0)
        >>> mask.shape, bool((mask == random_mask(10, 3, seed=0)).all())
        (torch.Size([3]), True)
    """
    D = check_size(D, math.inf, "D")  # type: ignore[arg-type]
    k = check_size(k, D)
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    mask = torch.randperm(D, generator=generator)[:k].sort().values
    return mask if device is None else mask.to(device)


def _row_norms_squared(U: Tensor) -> Tensor:
    """Squared row norms of ``U`` in float64, chunk by chunk of rows."""
    D = U.shape[0]
    norms = torch.empty(D, dtype=torch.float64, device=U.device)
    step = chunk_rows(U)
    for start in range(0, D, step):
        chunk = U[start : start + step].to(torch.float64, copy=True)
        norms[start : start + step] = chunk.square_().sum(1)
    return norms


def _best_overlaps_top_k(U: Tensor, ks: Tensor) -> Tensor:
    r"""Best-mask overlaps: top-``k`` squared row norms of ``U[:, :k]``, over ``k``.

    The squared row norms :math:`\|U_{i, :k}\|^2` are accumulated in float64
    from ``k`` to ``k``: one column at a time between close ``k`` (an
    :math:`O(D)` strided pass each), chunk by chunk of rows over a wider gap.
    Each ``k`` then costs one top-``k`` selection, :math:`O(D)`.
    """
    D = U.shape[0]
    row_norms = torch.zeros(D, dtype=torch.float64, device=U.device)
    done = 0
    values = []
    for k in ks.tolist():
        if k - done > 8:
            row_norms += _row_norms_squared(U[:, done:k])
        else:
            for column in range(done, k):
                row_norms += U[:, column].to(torch.float64, copy=True).square_()
        done = k
        values.append(torch.topk(row_norms, k, sorted=False).values.sum() / k)
    return torch.stack(values).cpu()


def _prepare_basis(
    U: Tensor, orthonormalize: bool, check: bool, atol: float | None
) -> Tensor:
    check_basis(U, "U")
    if orthonormalize:
        return orthonormalize_basis(U)
    if check:
        check_orthonormal_fast(U, "U", atol)
    return U


def best_mask(
    U: Tensor,
    k: int,
    *,
    orthonormalize: bool = False,
    check: bool = True,
    atol: float | None = None,
) -> Tensor:
    r"""The best mask of size ``k``: the ``k`` rows of ``U`` with the largest norms.

    No mask of size ``k`` has a larger overlap with :math:`\operatorname{span}(U)`,
    since the overlap :math:`\frac1k \sum_{i \in S} \|u_{i,:}\|^2` is a sum over
    the chosen rows (the "best" mask of Fernandez et al.'s mnist_mini study).
    Ties are broken towards lower indices.

    Args:
        U: ``(D, m)`` orthonormal basis (float dtype, any device).
        k: Mask size, ``1 <= k <= D``.
        orthonormalize: Replace ``U`` by the ``Q`` factor of its reduced QR.
        check: Check orthonormality in :math:`O(D m)` (squared column norms
            within ``atol`` of 1, and :math:`\|U^\top U x - x\| \le`
            ``atol`` :math:`\|x\|` for a random :math:`x`).
        atol: Tolerance of the check; ``None`` for :math:`10\sqrt{\varepsilon}`
            of the dtype (``3.5e-3`` in float32, ``1.5e-7`` in float64).

    Returns:
        The ``k`` indices, sorted ascending, ``torch.long``, on ``U``'s device.

    Raises:
        TypeError: If ``U`` is no real floating tensor or ``k`` no integer.
        ValueError: If ``U`` is not ``(D, m)`` with ``1 <= m <= D``, is not
            orthonormal, or ``k`` is out of range.

    Example:
        >>> U = torch.tensor([[0.6], [0.0], [0.8]], dtype=torch.float64)
        >>> best_mask(U, 1)
        tensor([2])
    """
    U = _prepare_basis(U, orthonormalize, check, atol)
    k = check_size(k, U.shape[0])
    return _ranked_top(_row_norms_squared(U), k).sort().values


def iou(mask_a: Tensor, mask_b: Tensor) -> float:
    r"""Intersection over union of two masks, :math:`|A \cap B| / |A \cup B|`.

    For masks of equal size ``k`` it is a function of their overlap
    :math:`\operatorname{ov} = |A \cap B|/k` as subspaces:
    :math:`\mathrm{IoU} = \operatorname{ov}/(2 - \operatorname{ov})`.

    Args:
        mask_a: 1-D integer tensor of distinct indices.
        mask_b: 1-D integer tensor of distinct indices, same device.

    Returns:
        The IoU in :math:`[0, 1]`.

    Raises:
        TypeError: If a mask is no integer tensor.
        ValueError: If a mask is not 1-D, is empty or has duplicates, or the
            devices differ.

    Example:
        >>> iou(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]))
        0.5
    """
    check_index_tensor(mask_a, "mask_a")
    check_index_tensor(mask_b, "mask_b")
    if mask_a.device != mask_b.device:
        raise ValueError(
            "mask_a and mask_b must be on the same device. Got "
            f"{mask_a.device} and {mask_b.device}."
        )
    intersection = int(torch.isin(mask_a, mask_b).sum())
    return intersection / (mask_a.numel() + mask_b.numel() - intersection)


def mask_overlap(
    mask: Tensor,
    U: Tensor,
    *,
    orthonormalize: bool = False,
    check: bool = True,
    atol: float | None = None,
) -> float:
    r"""Overlap between a mask's coordinate subspace and the span of ``U``.

    .. math::
        \operatorname{ov}(S, U) = \frac{\|U_{S,:}\|_F^2}{\min(|S|, m)}
            = \frac{\|M^\top U\|_F^2}{\min(|S|, m)},

    the mean squared cosine of the :math:`\min(|S|, m)` principal angles
    between :math:`\operatorname{span}(e_i : i \in S)` and
    :math:`\operatorname{span}(U)` (:func:`~curvlab.subspace.overlap` with the
    mask matrix :math:`M`, without forming it). With :math:`|S| = m = k`, as
    in the paper (mask size = eigenspace dimension), this is
    :math:`\|U_{S,:}\|_F^2 / k` (``papers.md`` §1.3). Summed in float64.

    Args:
        mask: 1-D integer tensor of distinct indices in ``[0, D)``, on ``U``'s
            device.
        U: ``(D, m)`` orthonormal basis (float dtype, any device).
        orthonormalize: Replace ``U`` by the ``Q`` factor of its reduced QR.
        check: Check orthonormality in :math:`O(D m)` (see :func:`best_mask`).
        atol: Tolerance of the check; ``None`` for :math:`10\sqrt{\varepsilon}`.

    Returns:
        The overlap in :math:`[0, 1]`.

    Raises:
        TypeError: If ``U`` is no real floating tensor or ``mask`` no integer
            tensor.
        ValueError: If a shape is wrong, the mask has duplicates or indices out
            of range, the devices differ, or ``U`` is not orthonormal.

    Example:
        >>> U = torch.tensor([[0.6], [0.0], [0.8]], dtype=torch.float64)
        >>> round(mask_overlap(torch.tensor([0]), U), 12)
        0.36
    """
    U = _prepare_basis(U, orthonormalize, check, atol)
    check_mask(mask, U.shape[0])
    if mask.device != U.device:
        raise ValueError(
            f"mask and U must be on the same device. Got {mask.device} and {U.device}."
        )
    total = U[mask].to(torch.float64).square().sum()
    return float(total) / min(mask.numel(), U.shape[1])


class OverlapCurve(NamedTuple):
    r"""Mask overlaps for several mask sizes ``k`` (from :func:`overlap_curve`).

    All tensors are float64 on the CPU, one entry per ``k`` (``random``: one
    row per random mask).

    Attributes:
        ks: The mask sizes, ascending, ``torch.long``.
        magnitude: Overlap of the magnitude mask.
        best: Overlap of the best mask (the largest any mask reaches); NaN when
            not computed.
        random_mean: Mean overlap of the random masks; NaN when there are none.
        random: ``(num_random, len(ks))`` overlaps of each random mask.
        chance: Expected overlap of a uniformly random mask (:math:`k/D` for
            ``eigenspace="top_k"``).
        eigenspace: ``"top_k"`` or ``"all"`` (see :func:`overlap_curve`).
    """

    ks: Tensor
    magnitude: Tensor
    best: Tensor
    random_mean: Tensor
    random: Tensor
    chance: Tensor
    eigenspace: str

    @property
    def ratio(self) -> Tensor:
        """Magnitude overlap over the chance level."""
        return self.magnitude / self.chance


def _ranked_overlaps_top_k(U: Tensor, ranked: Tensor, ks: Tensor) -> Tensor:
    r"""Overlaps :math:`\|U_{S_k, :k}\|_F^2/k` of nested masks, all ``k`` at once.

    ``S_k = ranked[:k]``. With :math:`A = U_{\text{ranked}[:K], :K}^{\circ 2}`,
    :math:`\|U_{S_k,:k}\|_F^2 = \sum_{\max(i,j) < k} A_{ij}`: the cumulative sum
    of :math:`g_m = \sum_{j \le m} A_{mj} + \sum_{i < m} A_{im}`.
    """
    K = int(ks.max())
    block = U[ranked[:K], :K].to(torch.float64).square()  # (K, K)
    shells = block.tril().sum(1) + block.triu(1).sum(0)
    totals = shells.cumsum(0).cpu()
    return totals[ks - 1] / ks


def _ranked_overlaps_all(norms: Tensor, ranked: Tensor, ks: Tensor, m: int) -> Tensor:
    r"""Overlaps :math:`\|U_{S_k,:}\|_F^2/\min(k, m)` of nested masks."""
    K = int(ks.max())
    totals = norms[ranked[:K]].cumsum(0).cpu()
    return totals[ks - 1] / ks.clamp(max=m)


def _curve_arguments(
    params_or_vector, device, shape: tuple[int, int], ks, eigenspace, num_random
) -> tuple[Tensor, bool, Tensor]:
    """Check the arguments of an overlap curve against a ``(D, K)`` basis.

    Shared by :func:`overlap_curve` and its streaming twin
    :func:`curvlab.store.overlap_curve`.

    Returns:
        The flat parameters on ``device``, whether the eigenspace is
        ``"top_k"``, and the checked mask sizes.

    Raises:
        ValueError: If the parameters do not have ``D`` entries, or
            ``eigenspace``, ``num_random`` or ``ks`` are out of range.
        TypeError: If ``num_random`` is not an int.
    """
    D, K = shape
    flat = _flat(params_or_vector, device)
    if flat.numel() != D:
        raise ValueError(
            f"The parameters must have D={D} entries, as U has rows. Got "
            f"{flat.numel()}."
        )
    if eigenspace not in ("top_k", "all"):
        raise ValueError(f"eigenspace must be 'top_k' or 'all'. Got {eigenspace!r}.")
    if isinstance(num_random, bool) or not isinstance(num_random, int):
        raise TypeError(f"num_random must be an int. Got {type(num_random).__name__}.")
    if num_random < 0:
        raise ValueError(f"num_random must be at least 0. Got {num_random}.")
    top_k = eigenspace == "top_k"
    return flat, top_k, _check_ks(ks, K if top_k else D)


def _check_ks(ks: Iterable[int] | Tensor, high: int) -> Tensor:
    if isinstance(ks, Tensor):
        ks = ks.reshape(-1).tolist()
    values = [check_size(k, high, "every k in ks") for k in ks]
    if not values:
        raise ValueError("ks must hold at least one mask size. Got none.")
    return torch.tensor(sorted(set(values)), dtype=torch.long)


def overlap_curve(
    params_or_vector: Tensor | Iterable[Tensor],
    U: Tensor,
    ks: Iterable[int] | Tensor,
    *,
    eigenspace: Literal["top_k", "all"] = "top_k",
    best: bool = True,
    num_random: int = 10,
    seed: int = 0,
    orthonormalize: bool = False,
    check: bool = True,
    atol: float | None = None,
) -> OverlapCurve:
    r"""Overlap of magnitude, best and random masks with an eigenbasis, for many ``k``.

    With the columns of ``U`` sorted as the eigenvalues of interest (the paper:
    by :math:`|\lambda|`, descending) and :math:`S_k` the magnitude mask of size
    ``k``, the default ``eigenspace="top_k"`` follows Fernandez et al. (2025)
    (``papers.md`` §1.3): mask size and eigenspace dimension are both ``k``,

    .. math::
        \operatorname{ov}(k) = \frac1k \|U_{S_k, :k}\|_F^2,
        \qquad \mathbb E_{\text{random } S}\,\operatorname{ov}(k) = \frac kD .

    ``eigenspace="all"`` keeps the whole ``(D, K)`` basis for every ``k``:
    :math:`\operatorname{ov}(k) = \|U_{S_k,:}\|_F^2 / \min(k, K)`, with chance
    level :math:`\max(k, K)/D`.

    One pass for all ``k``: the magnitude masks are nested (ties broken towards
    lower indices), so :math:`|\theta|` is ranked once (a top-:math:`K`
    selection, :math:`O(D)`), the :math:`K \times K` block of ``U``'s rows in
    that order is gathered, and the overlaps of all ``k`` are cumulative sums of
    its squared entries over the "shells" :math:`\max(i, j) = k - 1`
    (``"all"``: cumulative sums of the squared row norms in that order). Each of
    the ``num_random`` random masks is the prefix of one random permutation and
    costs the same. The best mask for ``"top_k"`` needs the row norms of each
    :math:`U_{:, :k}`: they are accumulated from one ``k`` to the next, with
    one top-``k`` selection per ``k`` (:math:`O(D K + D\,|\text{ks}|)` time,
    :math:`O(D)` float64 memory; at :math:`D = 10^6` and all ``k`` up to
    :math:`K = 1000` this is seconds, against milliseconds for the magnitude
    and random masks); for ``"all"`` they are computed once. All squares are
    summed in float64. Extra memory: :math:`O(D + K^2)`.

    Args:
        params_or_vector: The ``(D,)`` parameter vector or a list of parameter
            tensors (flattened in order).
        U: ``(D, K)`` orthonormal eigenbasis, columns in the order of interest
            (float dtype, any device; the parameters must be on its device).
        ks: Mask sizes; ``1 <= k <= K`` for ``"top_k"``, ``1 <= k <= D`` for
            ``"all"``. Sorted and deduplicated.
        eigenspace: ``"top_k"`` (the paper) or ``"all"``, see above.
        best: Also compute the best-mask overlaps (otherwise NaN).
        num_random: Number of random masks (0 for none).
        seed: Seed of the random masks (drawn on the CPU, as
            :func:`random_mask`).
        orthonormalize: Replace ``U`` by the ``Q`` factor of its reduced QR.
        check: Check orthonormality in :math:`O(D K)` (see :func:`best_mask`).
            At large ``D`` the check (three passes over ``U``) costs more than
            the magnitude and random curves; pass ``False`` for repeated calls
            on a basis already checked.
        atol: Tolerance of the check; ``None`` for :math:`10\sqrt{\varepsilon}`.

    Returns:
        The curves, float64 CPU tensors.

    Raises:
        TypeError: If an input has a wrong type.
        ValueError: If the parameters do not have ``D`` entries or are on
            another device, ``ks`` is empty or out of range, ``eigenspace`` or
            ``num_random`` is invalid, or ``U`` is not orthonormal.

    Example:
        >>> D, K = 200, 10
        >>> U = torch.linalg.qr(torch.randn(D, K, dtype=torch.float64)).Q
        >>> theta = torch.randn(D, dtype=torch.float64)
        >>> curve = overlap_curve(theta, U, [1, 5, 10])
        >>> mask = magnitude_mask(theta, 5)
        >>> M = torch.zeros(D, 5, dtype=torch.float64)
        >>> M[mask, torch.arange(5)] = 1.0  # the dense mask matrix
        >>> dense = float((M.T @ U[:, :5]).square().sum() / 5)
        >>> abs(float(curve.magnitude[1]) - dense) < 1e-14
        True
    """
    U = _prepare_basis(U, orthonormalize, check, atol)
    D, K = U.shape
    flat, top_k, ks = _curve_arguments(
        params_or_vector, U.device, (D, K), ks, eigenspace, num_random
    )
    norms = None if top_k else _row_norms_squared(U)

    def overlaps(ranked: Tensor) -> Tensor:
        if top_k:
            return _ranked_overlaps_top_k(U, ranked.to(U.device), ks)
        return _ranked_overlaps_all(norms, ranked.to(U.device), ks, K)

    best_values = None
    if best:
        best_values = (
            _best_overlaps_top_k(U, ks) if top_k else _best_from_norms(norms, ks, K)
        )
    return _curve(overlaps, flat, ks, D, K, eigenspace, num_random, seed, best_values)


def _best_from_norms(norms: Tensor, ks: Tensor, K: int) -> Tensor:
    """Best-mask overlaps on the whole eigenspace from the squared row norms."""
    top = torch.topk(norms, int(ks.max())).values.cumsum(0).cpu()
    return top[ks - 1] / ks.clamp(max=K)


def _curve(
    overlaps, flat, ks, D, K, eigenspace, num_random, seed, best_values
) -> OverlapCurve:
    """Assemble an :class:`OverlapCurve` from ``overlaps(ranked indices)``.

    Shared by :func:`overlap_curve` and its streaming twin
    :func:`curvlab.store.overlap_curve`; ``best_values`` is ``None`` when the
    best mask is not asked for.
    """
    top_k = eigenspace == "top_k"
    kmax = int(ks.max())
    ks_float = ks.to(torch.float64)
    magnitude = overlaps(_ranked_top(flat.abs(), kmax))
    generator = torch.Generator().manual_seed(seed)
    random = torch.empty(num_random, len(ks), dtype=torch.float64)
    for draw in range(num_random):
        random[draw] = overlaps(torch.randperm(D, generator=generator)[:kmax])
    random_mean = random.mean(0) if num_random else torch.full_like(ks_float, math.nan)
    if best_values is None:
        best_values = torch.full_like(ks_float, math.nan)
    chance = (ks_float if top_k else ks_float.clamp(min=K)) / D
    return OverlapCurve(
        ks=ks,
        magnitude=magnitude,
        best=best_values,
        random_mean=random_mean,
        random=random,
        chance=chance,
        eigenspace=eigenspace,
    )

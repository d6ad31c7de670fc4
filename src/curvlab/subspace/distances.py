r"""Distances on the Grassmannian, and the overlap between subspaces.

Every metric is a function of the principal angles
:math:`0 \le \theta_1 \le \dots \le \theta_k \le \pi/2` between two
:math:`k`-dimensional subspaces of :math:`\mathbb R^D`
(:func:`~curvlab.subspace.principal_angles`). With :math:`P_i = O_i O_i^\top`
the orthogonal projectors of orthonormal bases :math:`O_1, O_2`:

- ``geodesic`` (arc length): :math:`\|\theta\|_2`, in
  :math:`[0, \tfrac\pi2 \sqrt k]`;
- ``chordal_2``: :math:`\max_i 2\sin(\theta_i/2)`, in :math:`[0, \sqrt 2]`;
- ``chordal_F``: :math:`\|2\sin(\theta/2)\|_2`, in :math:`[0, \sqrt{2k}]`;
- ``projection_2``: :math:`\max_i \sin\theta_i = \|P_1 - P_2\|_2`, in
  :math:`[0, 1]`;
- ``projection_F``: :math:`\|\sin\theta\|_2 = \|P_1 - P_2\|_F / \sqrt 2`, in
  :math:`[0, \sqrt k]`;
- ``fubini_study`` (acute angle): :math:`\arccos \prod_i \cos\theta_i =
  \arccos |\det(O_1^\top O_2)|`, in :math:`[0, \pi/2]`;
- ``binet_cauchy``: :math:`(1 - \prod_i \cos^2\theta_i)^{1/2}`, in :math:`[0, 1]`;
- ``martin``: :math:`(-\log \prod_i \cos^2\theta_i)^{1/2}`, in
  :math:`[0, \infty]`.

The first six names, their formulas and ranges are those of the notebook
``10a_grassmannian_metrics.ipynb`` of Fernandez et al. (reference notes
``papers.md`` §1.2; Edelman, Arias & Smith 1998 §4.3). Ye & Lim (2016,
Table 2) name ``chordal_2`` the spectral distance, ``chordal_F`` the
Procrustes distance and ``projection_F`` the chordal distance; the
Binet-Cauchy and Martin distances follow their Table 2. With
``normalized=True`` each distance is divided by its maximum, so 0 means equal
subspaces and 1 the largest distance, except ``martin``, which is unbounded
(infinite as soon as one angle is :math:`\pi/2`) and is mapped to
:math:`1 - \exp(-d_M^2/k) = 1 - (\prod_i \cos^2\theta_i)^{1/k}`, one minus the
geometric mean of the squared cosines: monotone in :math:`d_M`, 0 for equal
subspaces, 1 when one angle is :math:`\pi/2`, but not a linear rescaling.

The **overlap** :math:`\frac1k \sum_i \cos^2\theta_i = \frac1k \|O_1^\top
O_2\|_F^2 = 1 - d_{p,F}^2/k` is a similarity in :math:`[0, 1]`, the metric the
paper calls most useful: it does not saturate and its chance level for a random
subspace is :math:`k/D`.

Distances require subspaces of equal dimension: Ye & Lim extend some of them to
unequal dimensions in more than one way, and the paper compares only equal
``k``. :func:`overlap` and :func:`~curvlab.subspace.principal_angles` accept
unequal dimensions.

References:
    - Edelman, Arias & Smith (1998). The geometry of algorithms with
      orthogonality constraints. SIAM Journal on Matrix Analysis and
      Applications 20(2), §4.3.
    - Ye & Lim (2016). Schubert varieties and distances between subspaces of
      different dimensions. SIAM Journal on Matrix Analysis and Applications
      37(3), Table 2.
    - Fernandez, Schneider, Mahsereci & Hennig (2025). Connecting parameter
      magnitudes and Hessian eigenspaces at scale using sketched methods.
      TMLR; arXiv 2504.14701.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from curvlab.subspace._checks import prepare_pair
from curvlab.subspace.angles import _principal_angles

__all__ = [
    "METRICS",
    "Metric",
    "distance_from_angles",
    "grassmann_distance",
    "max_distance",
    "overlap",
]

Metric = Literal[
    "geodesic",
    "chordal_2",
    "chordal_F",
    "projection_2",
    "projection_F",
    "fubini_study",
    "binet_cauchy",
    "martin",
]

#: The metric names :func:`grassmann_distance` accepts, in table order.
METRICS: tuple[str, ...] = get_args(Metric)


def _check_metric(metric: str):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}. Got {metric!r}.")


def max_distance(metric: Metric, k: int) -> float:
    r"""The largest value of a metric between two ``k``-dimensional subspaces.

    Reached when the subspaces are orthogonal (all angles :math:`\pi/2`).

    Args:
        metric: A name from :data:`METRICS`.
        k: The subspaces' dimension.

    Returns:
        The maximum (``inf`` for ``martin``).

    Raises:
        ValueError: If the metric is unknown or ``k < 1``.

    Example:
        >>> max_distance("geodesic", 4)  # (pi / 2) * sqrt(4)
        3.141592653589793
    """
    _check_metric(metric)
    if k < 1:
        raise ValueError(f"k must be at least 1. Got {k}.")
    return {
        "geodesic": math.pi / 2 * math.sqrt(k),
        "chordal_2": math.sqrt(2.0),
        "chordal_F": math.sqrt(2.0 * k),
        "projection_2": 1.0,
        "projection_F": math.sqrt(k),
        "fubini_study": math.pi / 2,
        "binet_cauchy": 1.0,
        "martin": math.inf,
    }[metric]


def _log_cos_squared(angles: Tensor) -> Tensor:
    """``log(cos(theta)^2)``, accurate for small and for large angles."""
    small = angles < math.pi / 4
    from_sines = torch.log1p(-torch.sin(torch.where(small, angles, 0.0)).square())
    from_cosines = 2.0 * torch.log(torch.cos(torch.where(small, 0.0, angles)))
    return torch.where(small, from_sines, from_cosines)


def distance_from_angles(
    angles: Tensor, metric: Metric = "geodesic", *, normalized: bool = False
) -> Tensor:
    r"""A Grassmannian distance from the principal angles.

    See the module docstring for the formulas. The products of cosines are
    computed as :math:`\exp \sum_i \log\cos^2\theta_i`, with
    :math:`\log\cos^2\theta = \operatorname{log1p}(-\sin^2\theta)` below
    :math:`\pi/4`, and
    :math:`d_{FS} = \operatorname{atan2}\bigl((1 - \prod\cos^2)^{1/2},
    \prod\cos\bigr)`, so that small angles keep their relative accuracy.

    Args:
        angles: ``(..., k)`` principal angles in :math:`[0, \pi/2]` along the
            last axis (a batch of pairs is allowed).
        metric: A name from :data:`METRICS`.
        normalized: Divide by the metric's maximum (:func:`max_distance`), so
            the value lies in :math:`[0, 1]`; ``martin`` maps to
            :math:`1 - \exp(-d_M^2/k)` instead.

    Returns:
        The ``(...)`` distances, in the dtype of ``angles``.

    Raises:
        ValueError: If the metric is unknown or ``angles`` has no last axis of
            length at least 1.

    Example:
        >>> angles = torch.tensor([0.0, math.pi / 2], dtype=torch.float64)
        >>> float(distance_from_angles(angles, "projection_F") ** 2)  # sum sin^2
        1.0
        >>> float(distance_from_angles(angles, "geodesic", normalized=True))
        0.7071067811865476
    """
    _check_metric(metric)
    if angles.ndim < 1 or angles.shape[-1] < 1:
        raise ValueError(
            f"angles must have shape (..., k) with k >= 1. Got {tuple(angles.shape)}."
        )
    k = angles.shape[-1]
    if metric == "geodesic":
        value = torch.linalg.vector_norm(angles, dim=-1)
    elif metric == "chordal_2":
        value = 2.0 * torch.sin(angles.amax(-1) / 2)
    elif metric == "chordal_F":
        value = 2.0 * torch.linalg.vector_norm(torch.sin(angles / 2), dim=-1)
    elif metric == "projection_2":
        value = torch.sin(angles.amax(-1))
    elif metric == "projection_F":
        value = torch.linalg.vector_norm(torch.sin(angles), dim=-1)
    else:
        log_cos2 = _log_cos_squared(angles).sum(-1)  # log prod cos^2 <= 0
        if metric == "martin":
            if normalized:
                return -torch.expm1(log_cos2 / k)
            return torch.sqrt(-log_cos2)
        sine = torch.sqrt(-torch.expm1(log_cos2))  # (1 - prod cos^2)^(1/2)
        if metric == "binet_cauchy":
            value = sine
        else:  # fubini_study
            value = torch.atan2(sine, torch.exp(log_cos2 / 2))
    if normalized:
        value = value / max_distance(metric, k)
    return value


def grassmann_distance(
    U: Tensor,
    V: Tensor,
    metric: Metric = "geodesic",
    *,
    normalized: bool = False,
    orthonormalize: bool = False,
    atol: float | None = None,
) -> Tensor:
    r"""Grassmannian distance between the spans of ``U`` and ``V``.

    Computes the principal angles (:func:`~curvlab.subspace.principal_angles`,
    accurate for small angles) and then :func:`distance_from_angles`; the
    formulas, ranges and references are in the module docstring.

    Args:
        U: ``(D, k)`` orthonormal basis, float32 or float64.
        V: ``(D, k)`` orthonormal basis, same shape, dtype and device.
        metric: One of ``"geodesic"``, ``"chordal_2"``, ``"chordal_F"``,
            ``"projection_2"``, ``"projection_F"``, ``"fubini_study"``,
            ``"binet_cauchy"``, ``"martin"``.
        normalized: Map to :math:`[0, 1]` by dividing by the metric's maximum
            (``martin``: :math:`1 - \exp(-d_M^2/k)`).
        orthonormalize: Replace each basis by the ``Q`` factor of its reduced QR
            instead of checking orthonormality.
        atol: Tolerance of the orthonormality check
            :math:`\max_{ij} |(U^\top U - I)_{ij}| \le` ``atol``; ``None`` for
            :math:`10\sqrt{\varepsilon}` of the dtype.

    Returns:
        The distance, a 0-d tensor with the inputs' dtype and device.

    Raises:
        TypeError: If an input is no float32/float64 tensor.
        ValueError: If the metric is unknown, a shape is wrong, the shapes,
            dtypes or devices differ, or a basis is not orthonormal within
            ``atol``.

    Example:
        >>> D, k = 50, 4
        >>> U = torch.linalg.qr(torch.randn(D, k, dtype=torch.float64)).Q
        >>> V = torch.linalg.qr(torch.randn(D, k, dtype=torch.float64)).Q
        >>> P = U @ U.T - V @ V.T
        >>> d = grassmann_distance(U, V, "projection_F")
        >>> bool(torch.isclose(d, torch.linalg.norm(P) / math.sqrt(2)))
        True
    """
    _check_metric(metric)
    U, V = prepare_pair(U, V, equal_k=True, orthonormalize=orthonormalize, atol=atol)
    return distance_from_angles(_principal_angles(U, V), metric, normalized=normalized)


def overlap(
    U: Tensor,
    V: Tensor,
    *,
    orthonormalize: bool = False,
    atol: float | None = None,
) -> Tensor:
    r"""Overlap of two subspaces: the mean squared cosine of their principal angles.

    .. math::
        \operatorname{ov}(U, V) = \frac1m \sum_{i=1}^{m} \cos^2\theta_i
            = \frac{\|U^\top V\|_F^2}{m}, \qquad m = \min(p, q),

    a similarity in :math:`[0, 1]` (1: one subspace contains the other; 0:
    orthogonal). For ``p == q = k`` it is the paper's overlap
    :math:`\|O_1^\top O_2\|_F^2 / k = 1 - d_{p,F}^2 / k`. Its expectation for a
    uniformly random subspace (or a random mask) against a fixed one of equal
    dimension ``k`` is :math:`k/D`. The sum of squares is accumulated in
    float64.

    Args:
        U: ``(D, p)`` orthonormal basis, float32 or float64.
        V: ``(D, q)`` orthonormal basis, same ``D``, dtype and device.
        orthonormalize: As in :func:`grassmann_distance`.
        atol: As in :func:`grassmann_distance`.

    Returns:
        The overlap, a 0-d tensor with the inputs' dtype and device.

    Raises:
        TypeError: If an input is no float32/float64 tensor.
        ValueError: If a shape is wrong, ``D``, dtypes or devices differ, or a
            basis is not orthonormal within ``atol``.

    Example:
        >>> U = torch.eye(4, 2, dtype=torch.float64)  # span(e1, e2)
        >>> V = torch.eye(4, dtype=torch.float64)[:, 1:3]  # span(e2, e3)
        >>> float(overlap(U, V))  # angles 0 and pi/2
        0.5
    """
    U, V = prepare_pair(U, V, equal_k=False, orthonormalize=orthonormalize, atol=atol)
    m = min(U.shape[1], V.shape[1])
    total = (U.mT @ V).square().sum(dtype=torch.float64)
    return (total / m).to(U.dtype)

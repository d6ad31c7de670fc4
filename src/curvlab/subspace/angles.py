r"""Principal angles between subspaces, accurate for small angles too.

For subspaces :math:`\mathcal U = \operatorname{span}(U)` and
:math:`\mathcal V = \operatorname{span}(V)` with orthonormal bases
:math:`U \in \mathbb R^{D \times p}`, :math:`V \in \mathbb R^{D \times q}`, the
:math:`m = \min(p, q)` principal angles
:math:`0 \le \theta_1 \le \dots \le \theta_m \le \pi/2` have cosines the
singular values of :math:`U^\top V` and, for :math:`q \le p`, sines the
singular values of :math:`(I - U U^\top) V`.

References:
    - Björck & Golub (1973). Numerical methods for computing angles between
      linear subspaces. Mathematics of Computation 27(123).
    - Knyazev & Argentati (2002). Principal angles between subspaces in an
      A-based scalar product: algorithms and perturbation estimates. SIAM
      Journal on Scientific Computing 23(6).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from curvlab.subspace._checks import prepare_pair

__all__ = ["principal_angles"]

#: Angles whose sine is below this (below :math:`\pi/4`) come from the sines,
#: the others from the cosines.
_SWITCH = 1.0 / math.sqrt(2.0)


def _principal_angles(U: Tensor, V: Tensor) -> Tensor:
    """Principal angles of orthonormal bases (no checks), ascending."""
    if V.shape[1] > U.shape[1]:
        U, V = V, U
    # now q = V.shape[1] <= p = U.shape[1]: m = q angles
    UtV = U.mT @ V
    cosines = torch.linalg.svdvals(UtV).clamp(0.0, 1.0)  # descending
    sines = torch.linalg.svdvals(V - U @ UtV).clamp(0.0, 1.0).flip(0)  # ascending
    # rank i of the ascending angles: cosines[i] (descending) and sines[i]
    from_sines = torch.asin(sines)
    from_cosines = torch.acos(cosines)
    angles = torch.where(sines < _SWITCH, from_sines, from_cosines)
    return angles.sort().values


def principal_angles(
    U: Tensor,
    V: Tensor,
    *,
    orthonormalize: bool = False,
    atol: float | None = None,
) -> Tensor:
    r"""Principal angles between the spans of ``U`` and ``V``, ascending.

    The sine-cosine algorithm of Björck & Golub (1973) in the form of Knyazev &
    Argentati (2002), Alg. 3.1 with the Euclidean product: with :math:`q \le p`
    (the arguments are swapped otherwise, angles are symmetric),

    .. math::
        \cos\theta_i = \sigma_i(U^\top V), \qquad
        \sin\theta_i = \sigma_{m+1-i}\bigl(V - U (U^\top V)\bigr),

    and :math:`\theta_i = \arcsin(\sin\theta_i)` where
    :math:`\sin\theta_i < 1/\sqrt 2` (:math:`\theta_i < \pi/4`),
    :math:`\arccos(\cos\theta_i)` otherwise. Taking small angles from the
    sines keeps them accurate to relative precision: an angle of ``1e-10``
    has a cosine that rounds to 1 in float64, so ``arccos`` alone returns 0.
    Large angles come from cosines for the symmetric reason. The accuracy of a
    small angle is limited by the orthonormality of the bases (an error
    :math:`\epsilon` in :math:`U^\top U = I` gives an absolute error about
    :math:`\epsilon`), so pass bases orthonormal to working precision.

    Cost: two products and two SVDs, :math:`O(D p q)`.

    Args:
        U: ``(D, p)`` orthonormal basis, float32 or float64.
        V: ``(D, q)`` orthonormal basis, same dtype and device. ``p != q`` is
            allowed: there are :math:`\min(p, q)` angles.
        orthonormalize: Replace each basis by the ``Q`` factor of its reduced QR
            (full column rank needed) instead of checking orthonormality.
        atol: Tolerance of the orthonormality check
            :math:`\max_{ij} |(U^\top U - I)_{ij}| \le` ``atol``; ``None`` for
            :math:`10\sqrt{\varepsilon}` (``3.5e-3`` in float32, ``1.5e-7``
            in float64).

    Returns:
        The :math:`\min(p, q)` angles in :math:`[0, \pi/2]`, ascending, with
        the inputs' dtype and device.

    Raises:
        TypeError: If an input is no float32/float64 tensor.
        ValueError: If an input is not 2-D with ``1 <= k <= D``, the numbers of
            rows, dtypes or devices differ, or a basis is not orthonormal
            within ``atol``.

    Example:
        >>> import math
        >>> U = torch.eye(3, 1, dtype=torch.float64)
        >>> V = torch.tensor([[math.cos(1e-10)], [math.sin(1e-10)], [0.0]],
        ...                  dtype=torch.float64)
        >>> float(principal_angles(U, V)[0])  # arccos would give 0.0
        1e-10
        >>> float(torch.acos((U.mT @ V).squeeze()))
        0.0
    """
    U, V = prepare_pair(U, V, equal_k=False, orthonormalize=orthonormalize, atol=atol)
    return _principal_angles(U, V)

r"""Spectral densities smoothed the way LayerHessians draws them.

A spectral measure :math:`\mu = \sum_j w_j \delta_{\lambda_j}` (eigenvalues of
mass :math:`1/D`, or SLQ quadrature nodes and weights) becomes a density by
Gaussian smoothing on a grid,

.. math::

    \rho(t) = \sum_j w_j\, \mathcal N(t;\, \lambda_j, s^2),

following ``LanczosLoop`` in ``LayerHessians/hessian/hessian.py`` (Sankar et al.
2021, after Papyan 2019): 1024 grid points over the range of the atoms widened by
5% on both sides, the width :math:`s` set by their 128 Lanczos steps, each
Gaussian cut off where it falls below :math:`10^{-8}` of its peak (details in
:func:`layerhessians_density`).

References:
    - A. R. Sankar, Y. Khasbage, R. Vigneswaran, V. N. Balasubramanian (2021). A
      deeper look at the Hessian eigenspectrum of deep neural networks and its
      applications to regularization. AAAI. arXiv:2012.03801. The smoothing:
      ``LanczosLoop`` in ``yashkhasbage25/HTR``,
      ``LayerHessians/hessian/hessian.py``.
    - V. Papyan (2019). Measurements of three-level hierarchical structure in the
      outliers in the spectrum of deepnet Hessians. ICML. arXiv:1901.08244.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["layerhessians_density"]

# LayerHessians' smoothing (``LayerHessians/hessian/hessian.py``, ``LanczosLoop``):
# 1024 grid points, 128 Lanczos steps setting the kernel width, 5% margins, a
# Gaussian truncated where it falls below 1e-8 of its peak.
_LH_POINTS = 1024
_LH_RESOLUTION = 128
_LH_MARGIN = 0.05
_LH_KAPPA = 1.25
_LH_TRUNCATE = 1e-8


def _kernel_density(points: Tensor, nodes: Tensor, weights: Tensor, width: float):
    """``sum_j w_j N(points; nodes_j, width^2)``, truncated below 1e-8 of the peak."""
    reach = width * math.sqrt(-2.0 * math.log(_LH_TRUNCATE))
    out = torch.zeros_like(points)
    norm = 1.0 / math.sqrt(2.0 * math.pi * width**2)
    for start in range(0, points.numel(), 2048):
        x = points[start : start + 2048, None]
        diff = x - nodes
        kernel = torch.exp(-0.5 * (diff / width) ** 2) * (diff.abs() < reach)
        out[start : start + 2048] = (kernel @ weights) * norm
    return out


def _lh_smooth(
    nodes, weights, *, num_points, resolution, margin=_LH_MARGIN, bounds=None
):
    nodes = torch.as_tensor(nodes, dtype=torch.float64).reshape(-1)
    weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if bounds is None:
        used = nodes[weights > 0]
        lb, ub = float(used.min()), float(used.max())
    else:
        lb, ub = (float(b) for b in bounds)
    if not ub > lb:  # a single eigenvalue: a window of +-1% (at least +-0.01)
        half = max(abs(lb), 1.0) * 1e-2
        lb, ub = lb - half, ub + half
    sigma = (2.0 / (resolution - 1)) / math.sqrt(8.0 * math.log(_LH_KAPPA))
    # keep the extreme atoms >= 6 kernel widths inside the window: 2m/(1+2m) >= 6σ
    margin = max(margin, 3 * sigma / (1 - 6 * sigma))
    pad = margin * (ub - lb)
    lb, ub = lb - pad, ub + pad
    c, d = (lb + ub) / 2, (ub - lb) / 2
    normalised = torch.linspace(-1.0, 1.0, num_points, dtype=torch.float64)
    density = _kernel_density(normalised, (nodes - c) / d, weights, sigma) / d
    return normalised * d + c, density, sigma * d


def layerhessians_density(
    nodes,
    weights=None,
    *,
    num_points: int = _LH_POINTS,
    resolution: int = _LH_RESOLUTION,
    margin: float = _LH_MARGIN,
    bounds: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Smooth a spectral measure into a density the way LayerHessians does.

    Following ``LanczosLoop`` in ``LayerHessians/hessian/hessian.py`` (after
    Papyan 2019): the range :math:`[l, u]` is widened by ``margin`` (5%) of its
    length on both sides and mapped to :math:`[-1, 1]` by
    :math:`x = (t - c)/d`, :math:`c = (l+u)/2`, :math:`d = (u-l)/2`; on
    ``num_points`` (1024) equispaced points of :math:`[-1, 1]` the density is
    :math:`\sum_j w_j\, \mathcal N(x; x_j, \sigma^2)` with
    :math:`\sigma = \frac{2/(M-1)}{\sqrt{8 \ln 1.25}}`, :math:`M` = ``resolution``
    (128, their number of Lanczos steps), each Gaussian cut off where it falls
    below :math:`10^{-8}` of its peak; then it is mapped back, :math:`t = x d + c`
    and density :math:`/d`, so that it integrates to one over :math:`t`. For
    :math:`M < 100` the margin grows beyond 5% to keep the extreme atoms six
    kernel widths inside the window (for :math:`M = 128` it stays 5%).

    The published code takes :math:`l, u` from a separate 64-step Lanczos run
    (extreme Ritz values widened by their residual bounds); here they default to
    the extreme atoms of the measure, which for exact eigenvalues are the exact
    bounds.

    Args:
        nodes: Atoms (eigenvalues or quadrature nodes).
        weights: Their masses, summing to one (``None``: uniform ``1/n``).
        num_points: Grid points.
        resolution: :math:`M`, sets the kernel width (about 0.6% of the range for
            128).
        margin: Fraction of the range added on each side.
        bounds: ``(l, u)`` to use instead of the extreme atoms.

    Returns:
        ``(grid, density)``, float64 tensors of ``num_points`` entries.

    Raises:
        ValueError: For ``num_points < 2``, ``resolution < 10`` or a negative
            margin.
    """
    if num_points < 2 or resolution < 10 or margin < 0:
        raise ValueError(
            "num_points must be >= 2, resolution >= 10 and margin >= 0. Got "
            f"{num_points}, {resolution}, {margin}."
        )
    nodes = torch.as_tensor(nodes, dtype=torch.float64).reshape(-1)
    if weights is None:
        weights = torch.full_like(nodes, 1.0 / nodes.numel())
    grid, density, _ = _lh_smooth(
        nodes,
        weights,
        num_points=num_points,
        resolution=resolution,
        margin=margin,
        bounds=bounds,
    )
    return grid, density

r"""Distances between spectra, and of every layer's spectrum to the full one.

For probability measures :math:`\mu, \nu` on the line with CDFs :math:`F, G`,
the Wasserstein-1 distance is

.. math::

    W_1(\mu, \nu) = \int_0^1 |F^{-1}(u) - G^{-1}(u)|\, du
                  = \int_{\mathbb R} |F(t) - G(t)|\, dt

(Villani 2009): the mass times the distance it has to move along the eigenvalue
axis to turn one spectrum into the other. :func:`wasserstein_1` computes it
exactly between two discrete measures (eigenvalues, SLQ nodes with their
weights) with ``scipy.stats.wasserstein_distance``; :func:`density_wasserstein_1`
between two densities on a common grid; :func:`spectrum_distance` picks one of
these, or LayerHessians' published matching
(:func:`~curvlab.subspace.spectra.matching.layerhessians_match`), for two
:class:`~curvlab.subspace.spectra.records.BlockSpectrum` records; and
:func:`layer_full_distances` gives all three for every layer against the full
spectrum at every step, the table behind Sankar et al.'s (2021) matching plots.

References:
    - C. Villani (2009). *Optimal Transport: Old and New*, Springer (for
      :math:`W_1` on the line as the :math:`L^1` distance of the CDFs).
    - A. R. Sankar, Y. Khasbage, R. Vigneswaran, V. N. Balasubramanian (2021). A
      deeper look at the Hessian eigenspectrum of deep neural networks and its
      applications to regularization. AAAI. arXiv:2012.03801.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

import numpy
import torch
from torch import Tensor

from curvlab.subspace._checks import check_values, check_weights
from curvlab.subspace.spectra.matching import layerhessians_match

if TYPE_CHECKING:
    from curvlab.subspace.spectra.records import BlockSpectrum, LayerwiseSpectra

__all__ = [
    "DISTANCES",
    "LayerFullDistance",
    "density_wasserstein_1",
    "layer_full_distances",
    "spectrum_distance",
    "wasserstein_1",
]

#: Distance kinds of :func:`spectrum_distance`.
DISTANCES = ("wasserstein", "density_wasserstein", "layerhessians")


def wasserstein_1(a, b, weights_a=None, weights_b=None) -> float:
    r"""Exact Wasserstein-1 distance between two discrete distributions on the line.

    For probability measures :math:`\mu = \sum_i p_i \delta_{a_i}` and
    :math:`\nu = \sum_j q_j \delta_{b_j}` with CDFs :math:`F, G` and quantile
    functions :math:`F^{-1}, G^{-1}`,

    .. math::

        W_1(\mu, \nu) = \int_0^1 |F^{-1}(u) - G^{-1}(u)|\, du
                      = \int_{\mathbb R} |F(t) - G(t)|\, dt ,

    computed exactly as a sum over the merged sorted support (Villani 2009) by
    ``scipy.stats.wasserstein_distance(a, b, weights_a, weights_b)``, in NumPy
    float64, after the checks below. The sizes may differ; without weights each
    atom has mass :math:`1/n`. Between the eigenvalues of two matrices of sizes
    :math:`D_1, D_2` this is the distance of their empirical spectral
    distributions.

    Args:
        a: 1-D values (tensor, array or sequence).
        b: 1-D values.
        weights_a: Non-negative masses of ``a`` (normalised to sum 1); ``None``
            for uniform.
        weights_b: Non-negative masses of ``b``.

    Returns:
        The distance, in the units of the values.

    Raises:
        ValueError: For empty, non-finite or not 1-D values, or weights of the
            wrong length, negative, or summing to zero.

    Example:
        >>> wasserstein_1([0.0, 1.0], [0.0, 1.0, 2.0])  # |1/2 - 1/3| + |1 - 2/3|
        0.5
        >>> wasserstein_1([0.0, 1.0], [5.0, 6.0])  # translation by 5
        5.0
    """
    from scipy.stats import wasserstein_distance  # SciPy's stats load in 0.5 s

    u = check_values(a, "a")
    v = check_values(b, "b")
    wu = None if weights_a is None else check_weights(weights_a, u.size, "weights_a")
    wv = None if weights_b is None else check_weights(weights_b, v.size, "weights_b")
    return float(wasserstein_distance(u, v, wu, wv))


def density_wasserstein_1(grid, p, q) -> float:
    r"""Wasserstein-1 distance between two densities given on a common grid.

    Each density becomes a discrete measure on the grid points with masses
    :math:`p_i \Delta_i` (trapezoid cell widths :math:`\Delta_i`), normalised to
    one, and

    .. math::

        W_1 = \sum_{i} |P_i - Q_i|\, (t_{i+1} - t_i), \qquad
        P_i = \sum_{j \le i} \tilde p_j ,

    the distance :func:`wasserstein_1` computes between those measures, here
    summed directly over the common grid (``scipy.stats.wasserstein_distance``
    would sort the grid listed twice and normalise in another order, which moves
    the last digits). Unlike :func:`layerhessians_match` it moves mass along the
    eigenvalue axis: a density shifted by :math:`s` is at distance :math:`|s|`.

    Args:
        grid: 1-D ascending points, at least two.
        p: Non-negative density values on ``grid``.
        q: Non-negative density values on ``grid``.

    Returns:
        The distance.

    Raises:
        ValueError: For a grid that is not ascending, lengths that differ, or
            densities that are negative or zero everywhere.
    """
    t = check_values(grid, "grid")
    if t.size < 2 or not (numpy.diff(t) > 0).all():
        raise ValueError("grid must hold at least two strictly ascending points.")
    cells = numpy.empty_like(t)
    cells[1:-1] = (t[2:] - t[:-2]) / 2
    cells[0], cells[-1] = (t[1] - t[0]) / 2, (t[-1] - t[-2]) / 2
    masses = []
    for label, values in (("p", p), ("q", q)):
        m = check_weights(values, t.size, label) * cells
        masses.append(numpy.cumsum(m) / m.sum())
    P, Q = masses
    return float(numpy.sum(numpy.abs(P[:-1] - Q[:-1]) * numpy.diff(t)))


def _common_grid(a: BlockSpectrum, b: BlockSpectrum) -> Tensor:
    """The union of both grids: each resolves its own density, so both do."""
    return torch.unique(torch.cat([a.grid, b.grid]))  # sorted


def spectrum_distance(
    a: BlockSpectrum, b: BlockSpectrum, kind: str = "wasserstein"
) -> float:
    """Distance between two spectra.

    Args:
        a: A spectrum with a measure (``"exact"`` or ``"slq"``).
        b: Another.
        kind: ``"wasserstein"``: :func:`wasserstein_1` between the spectral
            measures (eigenvalues, or SLQ nodes with their weights), no smoothing;
            ``"density_wasserstein"``: :func:`density_wasserstein_1` between the
            smoothed densities re-evaluated on a common grid, the union of their
            two grids (each resolves its own density's kernel);
            ``"layerhessians"``: :func:`layerhessians_match` on the two stored
            density vectors, as the paper computed it.

    Returns:
        The distance.

    Raises:
        ValueError: For an unknown kind or a spectrum without a measure.
    """
    if kind not in DISTANCES:
        raise ValueError(f"kind must be one of {DISTANCES}. Got {kind!r}.")
    a._need_measure()
    b._need_measure()
    if kind == "wasserstein":
        return wasserstein_1(a.nodes, b.nodes, a.weights, b.weights)
    if kind == "layerhessians":
        return layerhessians_match(a.density, b.density)
    grid = _common_grid(a, b)
    return density_wasserstein_1(grid, a.density_on(grid), b.density_on(grid))


class LayerFullDistance(NamedTuple):
    """How far one layer's spectrum is from the full one at one step.

    Attributes:
        step: The training step.
        layer: The block's name.
        depth: Its position among the blocks, in depth order (0: the first).
        dim: Its dimension :math:`D_l`.
        wasserstein: :func:`wasserstein_1` between the spectral measures.
        density_wasserstein: :func:`density_wasserstein_1` between the smoothed
            densities on a common grid.
        layerhessians: The published matching distance
            (:func:`~curvlab.subspace.spectra.matching.layerhessians_match`).
    """

    step: int
    layer: str
    depth: int
    dim: int
    wasserstein: float
    density_wasserstein: float
    layerhessians: float


def layer_full_distances(
    spectra_by_step: Mapping[int, LayerwiseSpectra],
) -> list[LayerFullDistance]:
    """Distances of every layer's spectrum to the full one, at every step.

    The three kinds of :func:`spectrum_distance` (:data:`DISTANCES`) for each
    block against the full spectrum of the same step: the table behind Sankar
    et al.'s matching plots. ``row._asdict()`` is a table row.

    Args:
        spectra_by_step: Layerwise spectra (with the full spectrum and at least
            one block, each with a measure) by step.

    Returns:
        One row per step and block: steps ascending, blocks in their order.

    Raises:
        ValueError: If a step lacks the full spectrum or block spectra, or a
            spectrum has no measure (``method="lanczos"``).

    Example:
        >>> import torch
        >>> from curvlab.subspace.spectra import LayerwiseSpectra, block_spectrum
        >>> H = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
        >>> spectra = LayerwiseSpectra(
        ...     full=block_spectrum(H),
        ...     blocks={"a": block_spectrum(H[:2, :2]), "b": block_spectrum(H[2:, 2:])},
        ... )
        >>> rows = layer_full_distances({7: spectra})
        >>> [(r.step, r.layer, r.depth, r.dim, r.wasserstein) for r in rows]
        [(7, 'a', 0, 2, 1.0), (7, 'b', 1, 2, 1.0)]
    """
    rows = []
    for step in sorted(spectra_by_step):
        layerwise = spectra_by_step[step]
        if layerwise.full is None:
            raise ValueError(f"The full spectrum of step {step} is missing.")
        if not layerwise.blocks:
            raise ValueError(f"No layer spectra for step {step}.")
        for depth, (name, block) in enumerate(layerwise.blocks.items()):
            rows.append(
                LayerFullDistance(
                    step=step,
                    layer=name,
                    depth=depth,
                    dim=block.dim,
                    wasserstein=spectrum_distance(layerwise.full, block),
                    density_wasserstein=spectrum_distance(
                        layerwise.full, block, "density_wasserstein"
                    ),
                    layerhessians=spectrum_distance(
                        layerwise.full, block, "layerhessians"
                    ),
                )
            )
    return rows

r"""Layerwise versus full spectra, and distances between spectra.

The *layer Hessian* :math:`H_l = \partial^2 \mathcal L / \partial \theta_l^2` is the
diagonal block of the Hessian on one layer's parameters :math:`\theta_l`. Sankar et
al. (2021) compare the spectrum of each :math:`H_l` with that of the full Hessian
during training and find the middle layers closest to it. This package computes
those spectra for any curvature operator and measures how far apart they are,
one module per job:

- :mod:`~curvlab.subspace.spectra.blocks`: which parameters make a block
  (:func:`default_blocks`: one per module, or LayerHessians' weights only) and
  the block of an operator (:func:`block_operator`; a sum is blocked term by
  term).
- :mod:`~curvlab.subspace.spectra.layerwise`: the spectrum of one operator
  (:func:`block_spectrum`: ``"exact"`` eigenvalues, ``"lanczos"`` extremes, an
  ``"slq"`` density) and of every diagonal block next to the full one
  (:func:`layerwise_spectra`).
- :mod:`~curvlab.subspace.spectra.split`: the same for the Gauss-Newton part
  :math:`G` and the residual :math:`H - G` of the Hessian
  (:func:`ggn_residual_split`; Sagun et al. 2017; Papyan 2019).
- :mod:`~curvlab.subspace.spectra.records`: the results,
  :class:`BlockSpectrum` (a discrete probability measure on the eigenvalue
  axis, the extreme eigenvalues and a smoothed density), :class:`LayerwiseSpectra`
  and :class:`SplitSpectra`, with their JSON form.
- :mod:`~curvlab.subspace.spectra.smoothing`: a measure smoothed into a density
  the way LayerHessians draws it (:func:`layerhessians_density`).
- :mod:`~curvlab.subspace.spectra.distances`: :func:`wasserstein_1` between
  eigenvalue distributions (exact 1-D :math:`W_1`, any sizes and weights),
  :func:`density_wasserstein_1` between densities on a common grid,
  :func:`spectrum_distance` between two records, and
  :func:`layer_full_distances`, every layer against the full spectrum at every
  step.
- :mod:`~curvlab.subspace.spectra.matching`: :func:`layerhessians_match`, the
  published matching procedure exactly, quirk included.

Each module states its mathematics and lists its references.
"""

from curvlab.subspace.spectra.blocks import block_operator, default_blocks
from curvlab.subspace.spectra.distances import (
    DISTANCES,
    LayerFullDistance,
    density_wasserstein_1,
    layer_full_distances,
    spectrum_distance,
    wasserstein_1,
)
from curvlab.subspace.spectra.layerwise import (
    MAX_EXACT_DIM,
    METHODS,
    block_spectrum,
    layerwise_spectra,
)
from curvlab.subspace.spectra.matching import (
    layerhessians_density_transform,
    layerhessians_match,
)
from curvlab.subspace.spectra.records import (
    BlockSpectrum,
    LayerwiseSpectra,
    SplitSpectra,
)
from curvlab.subspace.spectra.smoothing import layerhessians_density
from curvlab.subspace.spectra.split import ggn_residual_split

__all__ = [
    "DISTANCES",
    "MAX_EXACT_DIM",
    "METHODS",
    "BlockSpectrum",
    "LayerFullDistance",
    "LayerwiseSpectra",
    "SplitSpectra",
    "block_operator",
    "block_spectrum",
    "default_blocks",
    "density_wasserstein_1",
    "ggn_residual_split",
    "layer_full_distances",
    "layerhessians_density",
    "layerhessians_density_transform",
    "layerhessians_match",
    "layerwise_spectra",
    "spectrum_distance",
    "wasserstein_1",
]

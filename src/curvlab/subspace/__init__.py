r"""Subspace metrics: principal angles, Grassmannian distances, masks and overlap.

Compare two subspaces of parameter space, such as a Hessian eigenspace and the
span of a parameter mask, as points of the Grassmannian:

- :func:`principal_angles`: the angles, accurate for small angles too;
- :func:`grassmann_distance` (eight metrics, :data:`METRICS`, optionally
  normalised to :math:`[0, 1]`), :func:`distance_from_angles`,
  :func:`max_distance`;
- :func:`overlap`: the mean squared cosine of the angles,
  :math:`\|U^\top V\|_F^2 / k`;
- masks as sorted index tensors: :func:`magnitude_mask`, :func:`random_mask`,
  :func:`best_mask`, :func:`iou`, :func:`mask_overlap`, and
  :func:`overlap_curve` for all mask sizes of one eigenbasis in one pass;
- layerwise versus full spectra (:mod:`curvlab.subspace.spectra`):
  :func:`layerwise_spectra`, :func:`ggn_residual_split`, the distances
  :func:`wasserstein_1`, :func:`density_wasserstein_1` and
  :func:`layerhessians_match` (the published LayerHessians procedure), and
  :func:`layer_full_distances` (every layer against the full spectrum, per step).

Bases are ``(D, k)`` tensors with orthonormal columns; the mask functions scale
to eigenbases with millions of rows on any device.
"""

from curvlab.subspace.angles import principal_angles
from curvlab.subspace.distances import (
    METRICS,
    Metric,
    distance_from_angles,
    grassmann_distance,
    max_distance,
    overlap,
)
from curvlab.subspace.masks import (
    OverlapCurve,
    best_mask,
    iou,
    magnitude_mask,
    mask_overlap,
    overlap_curve,
    random_mask,
)
from curvlab.subspace.spectra import (
    BlockSpectrum,
    LayerFullDistance,
    LayerwiseSpectra,
    SplitSpectra,
    block_operator,
    block_spectrum,
    default_blocks,
    density_wasserstein_1,
    ggn_residual_split,
    layer_full_distances,
    layerhessians_density,
    layerhessians_density_transform,
    layerhessians_match,
    layerwise_spectra,
    spectrum_distance,
    wasserstein_1,
)

__all__ = [
    "METRICS",
    "BlockSpectrum",
    "LayerFullDistance",
    "LayerwiseSpectra",
    "Metric",
    "OverlapCurve",
    "SplitSpectra",
    "best_mask",
    "block_operator",
    "block_spectrum",
    "default_blocks",
    "density_wasserstein_1",
    "distance_from_angles",
    "ggn_residual_split",
    "grassmann_distance",
    "iou",
    "layer_full_distances",
    "layerhessians_density",
    "layerhessians_density_transform",
    "layerhessians_match",
    "layerwise_spectra",
    "magnitude_mask",
    "mask_overlap",
    "max_distance",
    "overlap",
    "overlap_curve",
    "principal_angles",
    "random_mask",
    "spectrum_distance",
    "wasserstein_1",
]

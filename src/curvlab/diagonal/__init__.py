"""Hessian and GGN diagonals that need the model's structure.

- :func:`hesscale`, :func:`hesscale_batch`: HesScale, HesScaleGN and BL89
  diagonals backpropagated at about the cost of a gradient
  (Elsayed & Mahmood 2022, arXiv 2210.11639), for ``nn.Sequential`` models with
  :class:`Residual` blocks.
- :func:`exact_ggn_diagonal`, :func:`mc_ggn_diagonal`,
  :func:`exact_hessian_diagonal`: exact and Monte-Carlo references for any model.
"""

from curvlab.diagonal.backprop import (
    VARIANTS,
    HesScaleBatch,
    Residual,
    check_supported,
    hesscale,
    hesscale_batch,
)
from curvlab.diagonal.exact import (
    exact_ggn_diagonal,
    exact_hessian_diagonal,
    mc_ggn_diagonal,
)

__all__ = [
    "VARIANTS",
    "HesScaleBatch",
    "Residual",
    "check_supported",
    "exact_ggn_diagonal",
    "exact_hessian_diagonal",
    "hesscale",
    "hesscale_batch",
    "mc_ggn_diagonal",
]

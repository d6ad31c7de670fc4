"""Optimizers that use Hessian diagonals.

Backpropagated (:class:`AdaHesScale`, :class:`AdaHesScaleGN`) or estimated from
Hessian-vector products (:class:`AdaHessian`).
"""

from curvlab.optim.adahesscale import AdaHesScale, AdaHesScaleGN
from curvlab.optim.adahessian import AdaHessian, hutchinson_hessian_diagonal

__all__ = ["AdaHesScale", "AdaHesScaleGN", "AdaHessian", "hutchinson_hessian_diagonal"]

"""Optimizers that use backpropagated Hessian diagonals."""

from curvlab.optim.adahesscale import AdaHesScale, AdaHesScaleGN

__all__ = ["AdaHesScale", "AdaHesScaleGN"]

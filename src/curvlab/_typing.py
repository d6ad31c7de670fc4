"""Type aliases shared across curvlab."""

from __future__ import annotations

from torch import Tensor

TensorList = list[Tensor]
"""Tensors shaped like a model's parameters (optionally with a column axis)."""

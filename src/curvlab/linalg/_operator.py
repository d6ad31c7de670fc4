"""How the algorithms of :mod:`curvlab.linalg` see an operator.

Every function in this package takes *any* square linear map: a
:class:`~curvlab.operators.CurvatureOperator`, one of its blocks, a plain
``(D, D)`` tensor, or a user's object with ``shape``, ``dtype``, ``device`` and ``@``
on ``(D,)`` / ``(D, k)`` tensors. :class:`CountedOperator` wraps it once, checks it,
counts products (one column = one product, as ``num_matvecs`` everywhere), and
rejects non-finite products with a message that names the step that produced them.
"""

from __future__ import annotations

import torch
from torch import Tensor


class CountedOperator:
    """A square linear map that counts its products and checks their values.

    Attributes:
        op: The wrapped operator.
        dim: ``D``, the side of the square map.
        dtype: Dtype of products.
        device: Device of products.
        num_matvecs: Columns multiplied so far.
    """

    def __init__(self, op, *, symmetric: bool = False, what: str = "op"):
        """Wrap and check an operator.

        Args:
            op: The operator (see module docstring).
            symmetric: Whether the algorithm needs ``op`` to be symmetric. An operator
                that declares ``is_symmetric = False`` is then refused; one that
                declares nothing is trusted.
            what: How to name the operator in messages.

        Raises:
            TypeError: If ``op`` lacks ``shape``/``dtype``/``device`` or ``@``.
            ValueError: If ``op`` is not square, or declared non-symmetric where
                symmetry is required.
        """
        if isinstance(op, Tensor):
            op = _TensorMap(op)
        missing = [a for a in ("shape", "dtype", "device") if not hasattr(op, a)]
        if missing or not hasattr(op, "__matmul__"):
            raise TypeError(
                f"{what} must have shape, dtype, device and support `{what} @ X`. "
                f"Got {type(op).__name__} missing "
                f"{missing or ['__matmul__']}."
            )
        shape = tuple(op.shape)
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"{what} must be square (D, D). Got shape {shape}.")
        if symmetric and getattr(op, "is_symmetric", True) is False:
            raise ValueError(
                f"{what} must be symmetric for this algorithm, but it declares "
                "is_symmetric=False. Use sketched_svd for non-symmetric operators."
            )
        if not op.dtype.is_floating_point:
            raise TypeError(f"{what} must have a floating dtype. Got {op.dtype}.")
        self.op = op
        self.dim = shape[0]
        self.dtype = op.dtype
        self.device = torch.device(op.device)
        self.is_psd = bool(getattr(op, "is_psd", False))
        self.num_matvecs = 0
        self._what = what

    @property
    def shape(self) -> tuple[int, int]:
        """``(D, D)``."""
        return (self.dim, self.dim)

    def __matmul__(self, X: Tensor) -> Tensor:
        """Apply the operator to ``(D,)`` or ``(D, k)``, counting and checking.

        Args:
            X: The input, on the operator's device and dtype.

        Returns:
            ``op @ X``, of the same shape.
        """
        return self.apply(X)

    def apply(self, X: Tensor, step: str = "") -> Tensor:
        """Apply the operator, naming ``step`` if the product is not finite.

        Args:
            X: ``(D,)`` or ``(D, k)`` input.
            step: Where in the algorithm this product happens (for messages).

        Returns:
            The product.

        Raises:
            FloatingPointError: If the product contains NaN or Inf.
            ValueError: If the product has the wrong shape.
        """
        Y = check_product_shape(
            self.op @ X, X.shape, self._what, f"shaped like X {tuple(X.shape)}"
        )
        self.num_matvecs += 1 if X.ndim == 1 else X.shape[1]
        return check_product_finite(Y, self._what, step, self.num_matvecs)

    def zeros(self, *shape: int) -> Tensor:
        """Zeros on the operator's dtype and device."""
        return torch.zeros(*shape, dtype=self.dtype, device=self.device)


class _TensorMap:
    """A plain tensor seen as an operator (symmetry is checked, not assumed)."""

    def __init__(self, matrix: Tensor):
        self.matrix = matrix
        self.shape = tuple(matrix.shape)
        self.dtype = matrix.dtype
        self.device = matrix.device
        square = matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1]
        # NaN/Inf entries are left to the product check, which names the step.
        self.is_symmetric = square and bool(
            torch.allclose(matrix, matrix.mT, rtol=1e-12, atol=0, equal_nan=True)
            or not torch.isfinite(matrix).all()
        )

    def __matmul__(self, X: Tensor) -> Tensor:
        return self.matrix @ X


def check_product_shape(Y, shape, what: str, expected: str) -> Tensor:
    """Return the product ``Y`` if it is a tensor of ``shape``.

    Args:
        Y: What ``op @ X`` returned.
        shape: The shape it must have.
        what: How to name the operator.
        expected: The shape in words, for the message.

    Returns:
        ``Y``.

    Raises:
        ValueError: If ``Y`` is no tensor of that shape.
    """
    if not isinstance(Y, Tensor) or tuple(Y.shape) != tuple(shape):
        got = tuple(Y.shape) if isinstance(Y, Tensor) else type(Y).__name__
        raise ValueError(f"{what} @ X must return a tensor {expected}. Got {got}.")
    return Y


def check_product_finite(Y: Tensor, what: str, step: str, number: int) -> Tensor:
    """Return the product ``Y`` if it holds no NaN or Inf.

    Args:
        Y: The product.
        what: How to name the operator.
        step: Where in the algorithm the product happens (``""``: not said).
        number: Products counted so far, this one included.

    Returns:
        ``Y``.

    Raises:
        FloatingPointError: If ``Y`` holds NaN or Inf.
    """
    if not bool(torch.isfinite(Y).all()):
        where = f" in {step}" if step else ""
        raise FloatingPointError(
            f"The product of {what} returned NaN or Inf{where} (product number "
            f"{number}). Check the model, data and loss for non-finite values."
        )
    return Y

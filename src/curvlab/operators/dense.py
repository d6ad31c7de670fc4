"""An explicit matrix seen through the operator protocol (tests, small problems)."""

from __future__ import annotations

import torch
from torch import Tensor

from curvlab._typing import TensorList
from curvlab.operators.base import CurvatureOperator


class DenseOperator(CurvatureOperator):
    """A dense square matrix as a :class:`CurvatureOperator`.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
        >>> op = DenseOperator(A)
        >>> torch.allclose(op @ torch.ones(3, dtype=torch.float64), A.sum(1))
        True
    """

    def __init__(
        self,
        matrix: Tensor,
        *,
        param_shapes=None,
        is_psd: bool = False,
        symmetry_tol: float | None = None,
    ):
        """Wrap a matrix.

        Args:
            matrix: A ``(D, D)`` floating-point tensor.
            param_shapes: Parameter shapes that split ``D``; default ``[(D,)]``.
            is_psd: Declare the matrix positive semi-definite.
            symmetry_tol: The matrix counts as symmetric when
                ``max |A - A.T| <= symmetry_tol * max |A|`` (entry-wise), so a
                matrix symmetric up to rounding (``Q @ diag(l) @ Q.T``) is;
                default ``64 * eps`` of the dtype. ``0`` asks for exact symmetry.

        Raises:
            ValueError: If the matrix is not square or the shapes do not add up to D.
        """
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(
                "DenseOperator needs a square (D, D) matrix. "
                f"Got {tuple(matrix.shape)}."
            )
        shapes = param_shapes or [(matrix.shape[0],)]
        super().__init__(shapes, dtype=matrix.dtype, device=matrix.device)
        if self.shape != tuple(matrix.shape):
            raise ValueError(
                f"param_shapes add up to D={self.shape[0]}, the matrix has "
                f"D={matrix.shape[0]}."
            )
        self.matrix = matrix
        if symmetry_tol is None:
            symmetry_tol = 64 * torch.finfo(matrix.dtype).eps
        asymmetry = (matrix - matrix.mT).abs().max() if matrix.numel() else 0.0
        scale = matrix.abs().max() if matrix.numel() else 0.0
        self.is_symmetric = bool(asymmetry <= symmetry_tol * scale)
        self.is_psd = is_psd

    def _matmat(self, M: TensorList) -> TensorList:
        return self._unflatten(self.matrix @ self._flatten(M))

    def adjoint(self) -> DenseOperator:
        """Return the transposed matrix as an operator.

        Returns:
            The adjoint.
        """
        if self.is_symmetric:
            return self
        return DenseOperator(self.matrix.mT, param_shapes=self.param_shapes)

    def to_dense(self, **_) -> Tensor:
        """Return the wrapped matrix.

        Returns:
            The matrix.
        """
        return self.matrix

"""The curvature-operator protocol: one method to implement, the rest derived.

A :class:`CurvatureOperator` is a linear map on a model's parameter space with shape
``(D, D)``. Inputs come either flat, as a ``(D,)`` or ``(D, k)`` tensor, or as a list
shaped like the parameters (entries ``(*p.shape,)`` or ``(*p.shape, k)``); outputs
come back in the format that went in. Subclasses implement only :meth:`_matmat` on
the list-with-columns form; this class validates inputs once, converts formats and
splits the ``k`` columns into chunks of at most ``max_cols`` to bound memory.

The design follows curvlinops' ``PyTorchLinearOperator`` and the public/private
split of SciPy's ``LinearOperator`` (``matmat`` checks, ``_matmat`` computes).
"""

from __future__ import annotations

import math
from numbers import Number

import numpy
import torch
from torch import Tensor

from curvlab._limits import MAX_DENSE_DIM
from curvlab._typing import TensorList
from curvlab.operators._checks import check_flat_input, check_list_input


class CurvatureOperator:
    """Linear operator on a model's parameter space, applied matrix-free.

    Attributes:
        is_symmetric: Whether the operator equals its adjoint.
        is_psd: Whether the operator is positive semi-definite.
    """

    is_symmetric: bool = True
    is_psd: bool = False

    def __init__(
        self,
        param_shapes,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        max_cols: int | None = None,
    ):
        """Store the parameter shapes, dtype, device and column chunk size.

        Args:
            param_shapes: Shapes of the parameters the operator acts on.
            dtype: Floating-point dtype of products.
            device: Device of products.
            max_cols: Largest number of columns processed at once; ``None`` for all.

        Raises:
            ValueError: If ``max_cols`` is not a positive integer or the parameter
                space is empty.
        """
        if max_cols is not None and (not isinstance(max_cols, int) or max_cols < 1):
            raise ValueError(
                f"max_cols must be a positive int or None. Got {max_cols}."
            )
        self.param_shapes = tuple(torch.Size(s) for s in param_shapes)
        self._sizes = [math.prod(s) for s in self.param_shapes]
        dim = sum(self._sizes)
        if dim == 0:
            raise ValueError(
                "The operator needs at least one parameter entry. Got D=0."
            )
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_cols = max_cols
        self.shape = (dim, dim)

    # ------------------------------------------------------------------ products
    def _matmat(self, M: TensorList) -> TensorList:
        """Multiply onto a parameter-shaped list with a trailing column axis.

        Args:
            M: Entries of shape ``(*p.shape, k)``.

        Returns:
            The product, in the same format.

        Raises:
            NotImplementedError: Always; subclasses override it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _matmat.")

    def matmat(self, X: Tensor | TensorList) -> Tensor | TensorList:
        """Multiply the operator onto ``X``.

        Args:
            X: A ``(D,)`` or ``(D, k)`` tensor, or a list shaped like the parameters,
                each entry ``(*p.shape,)`` or ``(*p.shape, k)``.

        Returns:
            The product in the format of ``X``.
        """
        if isinstance(X, (list, tuple)):
            has_cols = check_list_input(
                list(X), self.param_shapes, self.dtype, self.device
            )
            M = list(X) if has_cols else [x.unsqueeze(-1) for x in X]
            out = self._chunked_matmat(M)
            return out if has_cols else [o.squeeze(-1) for o in out]
        check_flat_input(X, self.shape[0], self.dtype, self.device)
        is_vec = X.ndim == 1
        X2 = X.unsqueeze(-1) if is_vec else X
        out = self._flatten(self._chunked_matmat(self._unflatten(X2)))
        return out.squeeze(-1) if is_vec else out

    def __matmul__(self, X):
        """Multiply onto a tensor, a parameter list, or compose with an operator."""
        if isinstance(X, CurvatureOperator):
            from curvlab.operators.algebra import ProductOperator

            return ProductOperator(self, X)
        return self.matmat(X)

    def _chunked_matmat(self, M: TensorList) -> TensorList:
        k = M[0].shape[-1]
        step = self.max_cols or k
        if k <= step:
            return self._matmat(M)
        chunks = [
            self._matmat([m[..., i : i + step] for m in M]) for i in range(0, k, step)
        ]
        return [torch.cat(parts, dim=-1) for parts in zip(*chunks, strict=True)]

    def _unflatten(self, X: Tensor) -> TensorList:
        """Split a ``(D, k)`` tensor into parameter-shaped ``(*p.shape, k)`` views."""
        k = X.shape[1]
        return [
            x.reshape(*s, k)
            for x, s in zip(X.split(self._sizes), self.param_shapes, strict=True)
        ]

    def _flatten(self, M: TensorList) -> Tensor:
        """Stack parameter-shaped ``(*p.shape, k)`` tensors into ``(D, k)``."""
        k = M[0].shape[-1]
        return torch.cat([m.reshape(-1, k) for m in M])

    # ------------------------------------------------------------------- algebra
    def adjoint(self) -> CurvatureOperator:
        """Return the adjoint operator (the operator itself when symmetric).

        Returns:
            The adjoint.

        Raises:
            NotImplementedError: For a non-symmetric operator without an adjoint.
        """
        if self.is_symmetric:
            return self
        raise NotImplementedError(f"{type(self).__name__} does not define an adjoint.")

    def __add__(self, other):
        from curvlab.operators.algebra import SumOperator

        if not isinstance(other, CurvatureOperator):
            return NotImplemented
        return SumOperator([(1.0, self), (1.0, other)])

    def __sub__(self, other):
        from curvlab.operators.algebra import SumOperator

        if not isinstance(other, CurvatureOperator):
            return NotImplemented
        return SumOperator([(1.0, self), (-1.0, other)])

    def __mul__(self, scalar):
        from curvlab.operators.algebra import SumOperator

        if not isinstance(scalar, Number) or isinstance(scalar, bool):
            return NotImplemented
        return SumOperator([(float(scalar), self)])

    __rmul__ = __mul__

    def __truediv__(self, scalar):
        if not isinstance(scalar, Number) or isinstance(scalar, bool):
            return NotImplemented
        return self * (1.0 / scalar)

    def __neg__(self):
        return self * -1.0

    # ------------------------------------------------------------------ exports
    def to_dense(
        self, *, max_dim: int = MAX_DENSE_DIM, chunk_size: int = 256
    ) -> Tensor:
        """Materialise the operator by multiplying identity columns in chunks.

        Args:
            max_dim: Refuse operators with ``D > max_dim``; raise it deliberately.
            chunk_size: Identity columns multiplied per product.

        Returns:
            The dense ``(D, D)`` matrix.

        Raises:
            ValueError: If ``D > max_dim``.
        """
        dim = self.shape[0]
        if dim > max_dim:
            itemsize = torch.empty((), dtype=self.dtype).element_size()
            raise ValueError(
                f"to_dense() would build a {dim}x{dim} matrix "
                f"({dim * dim * itemsize / 2**30:.1f} GiB), above "
                f"max_dim={max_dim}. Pass a larger max_dim to do it anyway."
            )
        return identity_products(self.matmat, dim, chunk_size, self.dtype, self.device)

    def to_scipy(self, dtype=numpy.float64):
        """Wrap the operator as a ``scipy.sparse.linalg.LinearOperator``.

        Args:
            dtype: NumPy dtype of the SciPy operator's inputs and outputs.

        Returns:
            A SciPy ``LinearOperator`` that ``scipy.sparse.linalg.eigsh`` accepts.
        """
        from curvlab.operators.scipy import to_scipy

        return to_scipy(self, dtype=dtype)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(D={self.shape[0]}, dtype={self.dtype}, "
            f"device={self.device})"
        )


def identity_products(product, dim: int, chunk_size: int, dtype, device) -> Tensor:
    """``product(I)`` for the ``(dim, dim)`` identity, handed over in column chunks.

    Args:
        product: Maps a ``(dim, k)`` tensor to an ``(n, k)`` one.
        dim: Size of the identity.
        chunk_size: Identity columns per call.
        dtype: Dtype of the identity columns.
        device: Device of the identity columns.

    Returns:
        The ``(n, dim)`` matrix ``product(I)``.
    """
    cols = []
    for start in range(0, dim, chunk_size):
        stop = min(start + chunk_size, dim)
        eye = torch.zeros(dim, stop - start, dtype=dtype, device=device)
        eye[torch.arange(start, stop), torch.arange(stop - start)] = 1
        cols.append(product(eye))
    return torch.cat(cols, dim=1)

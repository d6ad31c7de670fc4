r"""Lazy composites of operators: weighted sums and products.

A :class:`SumOperator` :math:`A = \sum_i c_i A_i` applies each term and adds
the results, so ``hessian - ggn`` costs two products per column. Its diagonal
block on a subset :math:`S` of the parameters is the sum of the terms' blocks,

.. math::

    A_{SS} = \sum_i c_i\, (A_i)_{SS},

so :meth:`SumOperator.block` blocks term by term and each block costs no more
than the terms' blocks do.
"""

from __future__ import annotations

from collections.abc import Sequence

from curvlab._typing import TensorList
from curvlab.operators.base import CurvatureOperator


def _check_compatible(first: CurvatureOperator, other: CurvatureOperator):
    if first.shape != other.shape or first.param_shapes != other.param_shapes:
        raise ValueError(
            "Operators must act on the same parameter space. Got shapes "
            f"{first.shape} and {other.shape}."
        )
    if first.dtype != other.dtype or first.device != other.device:
        raise ValueError(
            "Operators must share dtype and device. Got "
            f"({first.dtype}, {first.device}) and ({other.dtype}, {other.device})."
        )


class SumOperator(CurvatureOperator):
    r"""The weighted sum :math:`\sum_i c_i A_i` of operators on one parameter space."""

    def __init__(self, terms: list[tuple[float, CurvatureOperator]]):
        """Store the weighted terms, flattening nested sums.

        Args:
            terms: Pairs ``(weight, operator)``.

        Raises:
            ValueError: If the operators act on different spaces, dtypes or devices.
        """
        flat: list[tuple[float, CurvatureOperator]] = []
        for weight, op in terms:
            if isinstance(op, SumOperator):
                flat.extend((weight * w, o) for w, o in op.terms)
            else:
                flat.append((weight, op))
        first = flat[0][1]
        for _, op in flat[1:]:
            _check_compatible(first, op)
        super().__init__(first.param_shapes, dtype=first.dtype, device=first.device)
        self.terms = flat
        self.is_symmetric = all(op.is_symmetric for _, op in flat)
        self.is_psd = all(op.is_psd and w >= 0 for w, op in flat)

    def _matmat(self, M: TensorList) -> TensorList:
        total = None
        for weight, op in self.terms:
            out = op._chunked_matmat(M)
            scaled = [weight * o for o in out]
            total = (
                scaled
                if total is None
                else [t + s for t, s in zip(total, scaled, strict=True)]
            )
        return total

    def adjoint(self) -> CurvatureOperator:
        """Return the sum of the adjoints.

        Returns:
            The adjoint operator.
        """
        if self.is_symmetric:
            return self
        return SumOperator([(w, op.adjoint()) for w, op in self.terms])

    @property
    def param_names(self) -> list[str] | None:
        """The parameter names the terms share, in their order.

        Returns:
            The names, or ``None`` when a term has no parameter names (a
            :class:`~curvlab.operators.DenseOperator`, say).

        Raises:
            ValueError: If the terms act on differently named parameters.
        """
        names = [getattr(op, "param_names", None) for _, op in self.terms]
        if any(n is None for n in names):
            return None
        distinct = {tuple(n) for n in names}
        if len(distinct) != 1:
            raise ValueError(
                "The terms of the operator sum act on differently named parameters: "
                f"{sorted(distinct)}."
            )
        return list(names[0])

    def block(self, names: Sequence[str]) -> SumOperator:
        r"""Return the diagonal block on a subset of the parameters, term by term.

        The block of :math:`\sum_i c_i A_i` on the parameters :math:`S` is
        :math:`\sum_i c_i (A_i)_{SS}`: a sum of the terms' blocks, with the same
        weights.

        Args:
            names: Parameter names of the block, all among the terms'.

        Returns:
            The block, a :class:`SumOperator` of the terms' blocks.

        Raises:
            TypeError: If a term has no diagonal blocks.
        """
        for _, op in self.terms:
            if not hasattr(op, "block"):
                raise TypeError(f"{type(op).__name__} has no diagonal blocks.")
        return SumOperator([(w, op.block(names)) for w, op in self.terms])


class ProductOperator(CurvatureOperator):
    """The product ``A @ B`` of two operators, applied right to left."""

    is_symmetric = False

    def __init__(self, left: CurvatureOperator, right: CurvatureOperator):
        """Store the factors.

        Args:
            left: Applied second.
            right: Applied first.

        Raises:
            ValueError: If the operators act on different spaces, dtypes or devices.
        """
        _check_compatible(left, right)
        super().__init__(left.param_shapes, dtype=left.dtype, device=left.device)
        self.left, self.right = left, right

    def _matmat(self, M: TensorList) -> TensorList:
        return self.left._chunked_matmat(self.right._chunked_matmat(M))

    def adjoint(self) -> CurvatureOperator:
        """Return ``B^T A^T``.

        Returns:
            The adjoint operator.
        """
        return ProductOperator(self.right.adjoint(), self.left.adjoint())

r"""The damped inverse :math:`(A + \delta I)^{-1}` of an operator, as an operator.

:class:`InverseOperator` applies the inverse by an iterative solver on every
product, so it plugs into everything that takes an operator (``@`` on flat or
parameter-shaped inputs, ``to_dense``, composition with ``@``, the estimators of
:mod:`curvlab.linalg`). Methods:

- ``"cg"``: :func:`curvlab.linalg.cg`, all columns of a product in one block of
  CG recurrences, optionally preconditioned (a Nyström preconditioner from
  :func:`curvlab.linalg.nystrom_preconditioner`, a KFAC inverse, ...). Needs
  :math:`A + \delta I` positive definite and raises
  :class:`~curvlab.linalg.NegativeCurvatureError` otherwise.
- ``"neumann"``: :func:`curvlab.linalg.neumann`, the truncated Neumann series
  (a fixed number of terms, an approximation by design, unless a ``tol`` is
  given: only then does a product check convergence). Its default scale is
  estimated once, on the first product, and reused.
- ``"dense"``: materialise :math:`A` once (``to_dense``), factorise
  :math:`A + \delta I` by Cholesky and solve exactly; for small ``D`` and tests.

The record of the last solve is kept in :attr:`InverseOperator.last_result`; a
product whose solve did not reach its tolerance warns (``on_failure="warn"``),
raises (``"raise"``) or passes silently (``"ignore"``).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from curvlab._typing import TensorList
from curvlab.linalg.solvers import (
    NegativeCurvatureError,
    cg,
    check_damping,
    check_rhs,
    neumann,
    symmetric_operator,
)
from curvlab.operators.base import CurvatureOperator

METHODS = ("cg", "neumann", "dense")
_ON_FAILURE = ("warn", "raise", "ignore")
_OPTIONS = {
    "cg": {"tol", "atol", "max_iters", "preconditioner"},
    "neumann": {"scale", "num_terms", "tol", "power_steps"},
    "dense": set(),
}


class InverseNotConvergedError(RuntimeError):
    """An inverse product did not reach its tolerance (``on_failure="raise"``)."""


class InverseOperator(CurvatureOperator):
    r"""The damped inverse :math:`(A + \delta I)^{-1}` of a symmetric operator.

    Args:
        op: Symmetric ``(D, D)`` operator (a curvature operator, a tensor, or any
            object with ``shape``, ``dtype``, ``device`` and ``@``). Its parameter
            shapes are kept, so inputs may be parameter-shaped lists.
        damping: :math:`\delta \ge 0`.
        method: ``"cg"`` (default), ``"neumann"`` or ``"dense"``.
        on_failure: What a product does when its solve stops above tolerance:
            ``"warn"`` (default), ``"raise"`` or ``"ignore"``.
        **options: Options of the solver: ``tol``, ``atol``, ``max_iters``,
            ``preconditioner`` for CG; ``scale``, ``num_terms``, ``tol``,
            ``power_steps`` for Neumann.

    Raises:
        ValueError: For an unknown method or option, a negative or NaN damping,
            or a non-symmetric operator.
        TypeError: If ``op`` is not an operator or the damping not a number.

    Example:
        >>> import torch
        >>> from curvlab.operators import DenseOperator
        >>> A = DenseOperator(torch.diag(torch.tensor([1.0, 2.0, 4.0]).double()))
        >>> inverse = InverseOperator(A, damping=1.0, tol=1e-12)
        >>> inverse @ torch.tensor([2.0, 3.0, 5.0]).double()
        tensor([1., 1., 1.], dtype=torch.float64)
    """

    def __init__(
        self,
        op,
        damping: float = 0.0,
        *,
        method: str = "cg",
        on_failure: str = "warn",
        **options,
    ):

        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}. Got {method!r}.")
        if on_failure not in _ON_FAILURE:
            raise ValueError(
                f"on_failure must be one of {_ON_FAILURE}. Got {on_failure!r}."
            )
        unknown = sorted(set(options) - _OPTIONS[method])
        if unknown:
            raise ValueError(
                f"Method {method!r} takes the options {sorted(_OPTIONS[method])}. "
                f"Got unknown {unknown}."
            )
        self.damping = check_damping(damping)
        counted = symmetric_operator(op)
        shapes = getattr(op, "param_shapes", None) or [(counted.dim,)]
        super().__init__(shapes, dtype=counted.dtype, device=counted.device)
        if self.shape[0] != counted.dim:
            raise ValueError(
                f"op's param_shapes add up to {self.shape[0]}, its shape is "
                f"{(counted.dim, counted.dim)}."
            )
        self.op = op
        self.method = method
        self.on_failure = on_failure
        self.options = options
        self.is_psd = bool(getattr(op, "is_psd", False))
        self.last_result = None
        self._factor: Tensor | None = None

    def solve(self, B: Tensor):
        r"""Solve :math:`(A + \delta I) X = B` and return the solver's record.

        Args:
            B: ``(D,)`` or ``(D, k)`` right-hand sides.

        Returns:
            :class:`~curvlab.linalg.CGResult` or
            :class:`~curvlab.linalg.NeumannResult` (``"dense"``: the solution
            tensor).
        """
        if self.method == "cg":
            result = cg(self.op, B, self.damping, warn=False, **self.options)
        elif self.method == "neumann":
            result = neumann(self.op, B, self.damping, **self.options)
            self.options.setdefault("scale", result.scale)  # estimate once
        else:
            return self._dense_solve(B)
        self.last_result = result
        truncated = self.method == "neumann" and not self.options.get("tol")
        if not result.converged and not truncated:
            self._failed(result)
        return result

    def _dense_solve(self, B: Tensor) -> Tensor:

        Bm = check_rhs(B, _Shape(self))
        if self._factor is None:
            dense = self.op.to_dense() if hasattr(self.op, "to_dense") else self.op
            dense = torch.as_tensor(dense)
            eye = torch.eye(self.shape[0], dtype=self.dtype, device=self.device)
            matrix = (dense + dense.mT) / 2 + self.damping * eye
            factor, info = torch.linalg.cholesky_ex(matrix)
            if int(info) != 0:
                raise NegativeCurvatureError(
                    "The dense inverse needs A + damping I positive definite; its "
                    f"Cholesky factorisation failed at row {int(info)} with "
                    f"damping={self.damping}. Add damping."
                )
            self._factor = factor
        X = torch.cholesky_solve(Bm, self._factor)
        return X.squeeze(1) if B.ndim == 1 else X

    def _failed(self, result):
        worst = float(result.relative_residuals.max())
        message = (
            f"An inverse product ({self.method}) stopped at relative residual "
            f"{worst:.3e}, above its tolerance. Raise max_iters/num_terms, add "
            "damping or use a preconditioner; the record is in last_result."
        )
        if self.on_failure == "raise":
            raise InverseNotConvergedError(message)
        if self.on_failure == "warn":
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _matmat(self, M: TensorList) -> TensorList:
        X = self._flatten(M)
        result = self.solve(X)
        solution = result if isinstance(result, Tensor) else result.solution
        return self._unflatten(solution)

    def __repr__(self) -> str:
        return (
            f"InverseOperator({type(self.op).__name__}, damping={self.damping}, "
            f"method={self.method!r}, D={self.shape[0]})"
        )


class _Shape:
    """Dimension, dtype and device of an operator, for the right-hand-side check."""

    def __init__(self, op: CurvatureOperator):
        self.dim, self.dtype, self.device = op.shape[0], op.dtype, op.device

"""SciPy export: the only module that imports ``scipy.sparse.linalg``."""

from __future__ import annotations

import numpy
import torch
from scipy.sparse.linalg import LinearOperator


def to_scipy(op, dtype=numpy.float64) -> LinearOperator:
    """Wrap a curvlab operator as a SciPy ``LinearOperator``.

    NumPy inputs (the 1-D vectors ARPACK sends, or 2-D blocks) are converted to the
    operator's dtype and device, multiplied, and returned as NumPy arrays of ``dtype``.

    Args:
        op: An operator with ``shape``, ``dtype``, ``device`` and ``matmat``.
        dtype: NumPy dtype of the results.

    Returns:
        The SciPy operator, with its adjoint wired to ``op.adjoint()``.
    """
    dtype = numpy.dtype(dtype)

    def _apply(operator, x):
        x = numpy.asarray(x)
        t = torch.from_numpy(numpy.ascontiguousarray(x)).to(op.device, op.dtype)
        out = operator.matmat(t)
        if out.dtype == torch.bfloat16:
            out = out.float()
        return out.detach().cpu().numpy().astype(dtype, copy=False)

    adjoint = None if op.is_symmetric else op.adjoint()

    def _rmatmat(x):
        return _apply(op if adjoint is None else adjoint, x)

    return LinearOperator(
        shape=op.shape,
        dtype=dtype,
        matvec=lambda x: _apply(op, x.reshape(-1)),
        matmat=lambda x: _apply(op, x),
        rmatvec=lambda x: _rmatmat(x.reshape(-1)),
        rmatmat=_rmatmat,
    )

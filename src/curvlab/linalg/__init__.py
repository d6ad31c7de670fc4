"""Matrix-free spectral algorithms on any square operator.

Eigensolvers (restarted Lanczos), sketched eigendecompositions and SVDs with
a-posteriori error certificates, trace and diagonal estimators and spectral
densities. Every function takes a :class:`~curvlab.operators.CurvatureOperator`, a
``(D, D)`` tensor, or any object with ``shape``, ``dtype``, ``device`` and ``@``;
every result records ``num_matvecs``, the number of columns the operator was
applied to.
"""

from curvlab.linalg import synthetic

__all__ = ["synthetic"]

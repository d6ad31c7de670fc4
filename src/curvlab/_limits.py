r"""Size limits shared by every layer: the largest problems curvlab solves densely.

:data:`MAX_DENSE_DIM` is the one limit on dense ``D x D`` matrices: the default
``max_dim`` of every ``to_dense()``, the largest layer block whose exact
eigenvalues ``method="auto"`` picks (:mod:`curvlab.subspace.spectra.layerwise`),
and the default ``--max-dim`` of the exact Hessian eigenbasis
(:mod:`curvlab.experiments.eigenbasis`). At ``D = 8000`` a float64 matrix takes
:math:`8 D^2` bytes = 0.48 GiB, a dense ``eigh`` with eigenvectors about three
times that (the eigenvectors and LAPACK's workspace: 1.5 GiB) and
:math:`\approx 9 D^3 \approx 5 \cdot 10^{12}` flops, a minute or two on a
laptop's cores (``eigvalsh`` without eigenvectors a fraction of that). Building
the matrix costs ``D`` operator products, one pass over the data per chunk of
columns; above this size, Lanczos and sketches (a few hundred products) are the
tools. Every function takes a larger ``max_dim`` for those who mean it.

:data:`MAX_HVP_DIAGONAL_DIM` is not a dense-size limit: the exact Hessian diagonal
by Hessian-vector products (:func:`curvlab.diagonal.exact_hessian_diagonal`)
keeps only ``O(D)`` numbers but costs ``D`` products, so its limit bounds time,
not memory, and sits higher.
"""

from __future__ import annotations

__all__ = ["MAX_DENSE_DIM", "MAX_HVP_DIAGONAL_DIM"]

#: Largest dimension ``D`` curvlab materialises as a dense ``D x D`` matrix by
#: default (0.48 GiB in float64).
MAX_DENSE_DIM = 8000

#: Largest ``D`` whose exact Hessian diagonal is computed by default from ``D``
#: Hessian-vector products (time, not memory: ``O(D)`` storage).
MAX_HVP_DIAGONAL_DIM = 20_000

"""Matrix-free spectral algorithms on any square operator.

Eigensolvers (restarted Lanczos), sketched eigendecompositions and SVDs with
a-posteriori error certificates, trace and diagonal estimators and spectral
densities. Every function takes a :class:`~curvlab.operators.CurvatureOperator`, a
``(D, D)`` tensor, or any object with ``shape``, ``dtype``, ``device`` and ``@``;
every result records ``num_matvecs``, the number of columns the operator was
applied to.
"""

from curvlab.linalg import synthetic
from curvlab.linalg.certificates import (
    APosterioriError,
    a_posteriori_bounds,
    a_posteriori_error,
    scree_bounds,
)
from curvlab.linalg.density import SpectralDensity, spectral_density
from curvlab.linalg.diag_estimators import DiagonalEstimate, hutchinson_diagonal, xdiag
from curvlab.linalg.eigsh import EigshResult, eigsh
from curvlab.linalg.inverse import InverseNotConvergedError, InverseOperator
from curvlab.linalg.power import PowerIterationResult, power_iteration
from curvlab.linalg.preconditioners import (
    NystromPreconditioner,
    nystrom_preconditioner,
)
from curvlab.linalg.sketch import (
    SketchedEigh,
    SketchedSVD,
    SketchPlan,
    measure,
    nystrom,
    sketch_plan,
    sketched_eigh,
    solve,
)
from curvlab.linalg.sketch_svd import sketched_svd
from curvlab.linalg.solvers import (
    CGResult,
    NegativeCurvatureError,
    NeumannDivergenceError,
    NeumannResult,
    cg,
    neumann,
)
from curvlab.linalg.ssrft import SSRFT, random_test_matrix
from curvlab.linalg.tic import TICEstimate, tic
from curvlab.linalg.trace import (
    FrobeniusEstimate,
    TraceEstimate,
    frobenius_norm_estimate,
    hutchinson_trace,
    hutchpp_trace,
    xtrace,
)

__all__ = [
    "InverseNotConvergedError",
    "InverseOperator",
    "DiagonalEstimate",
    "EigshResult",
    "eigsh",
    "FrobeniusEstimate",
    "PowerIterationResult",
    "SpectralDensity",
    "TraceEstimate",
    "frobenius_norm_estimate",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "power_iteration",
    "spectral_density",
    "xdiag",
    "xtrace",
    "APosterioriError",
    "SSRFT",
    "SketchPlan",
    "SketchedEigh",
    "SketchedSVD",
    "a_posteriori_bounds",
    "a_posteriori_error",
    "measure",
    "nystrom",
    "random_test_matrix",
    "scree_bounds",
    "sketch_plan",
    "sketched_eigh",
    "sketched_svd",
    "solve",
    "synthetic",
    "CGResult",
    "NegativeCurvatureError",
    "NeumannDivergenceError",
    "NeumannResult",
    "cg",
    "neumann",
    "NystromPreconditioner",
    "nystrom_preconditioner",
    "TICEstimate",
    "tic",
]

"""curvlab: the curvature of neural networks, measured matrix-free.

Hessian, GGN and Fisher operators over whole data sets (:mod:`curvlab.operators`)
and the ready problems to measure them on (:mod:`curvlab.problems`).
"""

from curvlab.operators import (
    CurvatureOperator,
    DenseOperator,
    EmpiricalFisherOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    NonDeterministicError,
)

__version__ = "0.1.0"

__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "EmpiricalFisherOperator",
    "FisherOperator",
    "GGNOperator",
    "HessianOperator",
    "NonDeterministicError",
    "__version__",
]

"""curvlab: the curvature of neural networks, measured matrix-free.

Hessian, GGN and Fisher operators over whole data sets (:mod:`curvlab.operators`),
the spectral algorithms that run on them (:mod:`curvlab.linalg`), backpropagated
Hessian diagonals (:mod:`curvlab.diagonal`) and the optimizers built on them
(:mod:`curvlab.optim`), subspace metrics (:mod:`curvlab.subspace`), the
measurement store for sketches beyond one machine (:mod:`curvlab.store`), and the
ready problems to measure on (:mod:`curvlab.problems`).
"""

from curvlab.operators import (
    CurvatureOperator,
    DenseOperator,
    EKFACOperator,
    EmpiricalFisherOperator,
    FisherOperator,
    GGNOperator,
    GradientCovarianceOperator,
    HessianOperator,
    JacobianOperator,
    KFACOperator,
    NonDeterministicError,
)

__version__ = "0.1.0"

_SUBMODULES = (
    "diagonal",
    "linalg",
    "operators",
    "optim",
    "problems",
    "store",
    "subspace",
)


def __getattr__(name: str):
    """Import subpackages on first use (``cl.problems`` loads scikit-learn)."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"curvlab.{name}")
    if name == "InverseOperator":  # an operator built on linalg's solvers
        from curvlab.linalg import InverseOperator

        return InverseOperator
    raise AttributeError(f"module 'curvlab' has no attribute {name!r}")


__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "EKFACOperator",
    "EmpiricalFisherOperator",
    "FisherOperator",
    "GGNOperator",
    "GradientCovarianceOperator",
    "HessianOperator",
    "InverseOperator",
    "KFACOperator",
    "JacobianOperator",
    "NonDeterministicError",
    "__version__",
    *_SUBMODULES,
]

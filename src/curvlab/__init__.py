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

_SUBMODULES = ("operators", "problems")


def __getattr__(name: str):
    """Import subpackages on first use (``cl.problems`` loads scikit-learn)."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"curvlab.{name}")
    raise AttributeError(f"module 'curvlab' has no attribute {name!r}")


__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "EmpiricalFisherOperator",
    "FisherOperator",
    "GGNOperator",
    "HessianOperator",
    "NonDeterministicError",
    "__version__",
    "operators",
    "problems",
]

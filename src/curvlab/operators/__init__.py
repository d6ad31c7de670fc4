"""Curvature operators over whole data sets, applied matrix-free."""

from curvlab.operators.algebra import ProductOperator, SumOperator
from curvlab.operators.base import CurvatureOperator
from curvlab.operators.covariance import GradientCovarianceOperator
from curvlab.operators.dense import DenseOperator
from curvlab.operators.empirical_risk import (
    EmpiricalRiskOperator,
    NonDeterministicError,
)
from curvlab.operators.fisher import EmpiricalFisherOperator, FisherOperator
from curvlab.operators.ggn import GGNOperator
from curvlab.operators.hessian import HessianOperator
from curvlab.operators.jacobian import JacobianOperator, TransposedJacobianOperator
from curvlab.operators.kfac import EKFACOperator, KFACInverseOperator, KFACOperator

__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "EKFACOperator",
    "EmpiricalFisherOperator",
    "EmpiricalRiskOperator",
    "FisherOperator",
    "GGNOperator",
    "GradientCovarianceOperator",
    "HessianOperator",
    "KFACInverseOperator",
    "KFACOperator",
    "JacobianOperator",
    "NonDeterministicError",
    "ProductOperator",
    "SumOperator",
    "TransposedJacobianOperator",
]

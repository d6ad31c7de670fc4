"""The Hessian and GGN of the small problem, shared by the spectra tests."""

import pytest

from curvlab.operators import GGNOperator, HessianOperator
from subspace.spectra._cases import problem


@pytest.fixture(scope="module")
def hessian():
    model, loss_fn, data = problem()
    return HessianOperator(model, loss_fn, data)


@pytest.fixture(scope="module")
def ggn(hessian):
    return GGNOperator(hessian.model, hessian.loss_fn, hessian.data)

"""Products on CUDA equal those on the CPU (skipped without a GPU)."""

import copy

import pytest
import torch

import curvlab as cl
from _compare import rel_error
from conftest import CASES, RTOL_FLOAT64

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"
)

OPERATORS = [
    cl.HessianOperator,
    cl.GGNOperator,
    cl.FisherOperator,
    cl.EmpiricalFisherOperator,
]


@pytest.mark.parametrize("operator", OPERATORS, ids=lambda o: o.__name__)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cuda_equals_cpu(case, operator):
    model = copy.deepcopy(case.model).cuda()
    data = [(X.cuda(), y.cuda()) for X, y in case.data]
    gpu = operator(model, case.loss_fn, data, params=case.params)
    cpu = operator(case.model, case.loss_fn, case.data, params=case.params)
    assert gpu.device.type == "cuda"
    V = torch.randn(cpu.shape[0], 3, dtype=torch.float64)
    assert rel_error((gpu @ V.cuda()).cpu(), cpu @ V) < RTOL_FLOAT64


def test_cpu_data_is_moved_to_the_model_device():
    case = CASES[0]
    model = copy.deepcopy(case.model).cuda()
    op = cl.HessianOperator(model, case.loss_fn, case.data)
    v = torch.randn(op.shape[0], dtype=torch.float64)
    expected = cl.HessianOperator(case.model, case.loss_fn, case.data) @ v
    assert rel_error((op @ v.cuda()).cpu(), expected) < RTOL_FLOAT64

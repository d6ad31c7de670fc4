"""Bad input gets an error that says what was expected and what arrived."""

import pytest
import torch
from torch import nn

import curvlab as cl
from conftest import CASES

CASE = CASES[0]
D = sum(p.numel() for p in CASE.model.parameters())


@pytest.fixture
def op():
    return cl.HessianOperator(CASE.model, CASE.loss_fn, CASE.data)


def test_wrong_shape(op):
    with pytest.raises(ValueError, match=rf"shape \(D,\) or \(D, k\) with D={D}"):
        op @ torch.zeros(D + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"Got \(2, 3, 4\)"):
        op @ torch.zeros(2, 3, 4, dtype=torch.float64)


def test_wrong_dtype(op):
    with pytest.raises(ValueError, match=r"dtype torch.float64. Got torch.float32"):
        op @ torch.zeros(D)


def test_wrong_device(op):
    with pytest.raises(ValueError, match="device"):
        op @ torch.zeros(D, dtype=torch.float64, device="meta")


def test_wrong_type(op):
    with pytest.raises(TypeError, match="Got ndarray"):
        op.matmat(torch.zeros(D).numpy())


def test_wrong_list_shapes(op):
    shapes = [tuple(p.shape) for p in CASE.model.parameters()]
    bad = [torch.zeros(s, dtype=torch.float64) for s in shapes[:-1]]
    with pytest.raises(ValueError, match="one tensor per parameter"):
        op @ bad
    bad = [torch.zeros(*s, 2, dtype=torch.float64) for s in shapes]
    bad[0] = torch.zeros(*shapes[0], 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="must have shapes"):
        op @ bad


def test_foreign_parameter():
    other = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"params\[0\] .* is not a parameter"):
        cl.HessianOperator(CASE.model, CASE.loss_fn, CASE.data, params=[other])


def test_unknown_name():
    with pytest.raises(ValueError, match=r"Unknown parameter name\(s\) \['nope'\]"):
        cl.HessianOperator(CASE.model, CASE.loss_fn, CASE.data, params=["nope"])


def test_mixed_empty_and_repeated_params():
    w = CASE.model[0].weight
    with pytest.raises(TypeError, match="mix"):
        cl.HessianOperator(CASE.model, CASE.loss_fn, CASE.data, params=[w, "0.bias"])
    with pytest.raises(ValueError, match="at least one parameter"):
        cl.HessianOperator(CASE.model, CASE.loss_fn, CASE.data, params=[])
    with pytest.raises(ValueError, match="must not repeat"):
        cl.HessianOperator(CASE.model, CASE.loss_fn, CASE.data, params=[w, w])


def test_empty_data():
    with pytest.raises(ValueError, match="at least one"):
        cl.HessianOperator(CASE.model, CASE.loss_fn, [])
    empty = [(torch.zeros(0, 5, dtype=torch.float64), torch.zeros(0).long())]
    with pytest.raises(ValueError, match="no samples"):
        cl.HessianOperator(CASE.model, CASE.loss_fn, empty)


def test_batches_that_are_not_pairs():
    X, y = CASE.data[0]
    with pytest.raises(
        TypeError, match=r"\(X, y\) pairs. Batch 0 is a tuple of length 3"
    ):
        cl.HessianOperator(CASE.model, CASE.loss_fn, [(X, y, y)])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_data(value):
    X, y = CASE.data[0]
    X = X.clone()
    X[1, 2] = value
    op = cl.GGNOperator(CASE.model, CASE.loss_fn, [CASE.data[1], (X, y)])
    with pytest.raises(ValueError, match="Inputs X of batch 1 must be finite"):
        op @ torch.zeros(D, dtype=torch.float64)


def test_non_finite_parameters():
    model = nn.Linear(5, 3).double()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="Parameter 'weight' must be finite"):
        cl.HessianOperator(model, CASE.loss_fn, CASE.data)


def test_unsupported_reduction():
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'.*Got 'none'"):
        cl.HessianOperator(CASE.model, nn.CrossEntropyLoss(reduction="none"), CASE.data)


def test_to_dense_refuses_large_d(op):
    with pytest.raises(ValueError, match=r"above max_dim=10"):
        op.to_dense(max_dim=10)


def test_bad_options():
    with pytest.raises(ValueError, match="max_cols"):
        cl.HessianOperator(CASE.model, CASE.loss_fn, CASE.data, max_cols=0)
    with pytest.raises(ValueError, match="mc_samples"):
        cl.FisherOperator(CASE.model, CASE.loss_fn, CASE.data, mc_samples=0)
    with pytest.raises(TypeError, match="nn.Module"):
        cl.HessianOperator(lambda x: x, CASE.loss_fn, CASE.data)

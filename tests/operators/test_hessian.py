import pytest
import torch

import curvlab as cl
from _compare import compare_matmat, rel_error
from _truth import dense_hessian
from conftest import RTOL_FLOAT64, param_names


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_matches_dense_hessian(case, mode):
    op = cl.HessianOperator(
        case.model, case.loss_fn, case.data, params=case.params, mode=mode
    )
    truth = dense_hessian(case.model, case.loss_fn, case.data, param_names(case))
    compare_matmat(op, truth, RTOL_FLOAT64)


def test_symmetric_not_psd_flag(case):
    op = cl.HessianOperator(case.model, case.loss_fn, case.data, params=case.params)
    H = op.to_dense()
    assert rel_error(H, H.T) < 1e-12
    assert op.is_symmetric
    assert not op.is_psd


def test_mean_is_independent_of_batching(case):
    op = cl.HessianOperator(case.model, case.loss_fn, case.data, params=case.params)
    X = torch.cat([x for x, _ in case.data])
    y = torch.cat([t for _, t in case.data])
    whole = cl.HessianOperator(case.model, case.loss_fn, [(X, y)], params=case.params)
    assert rel_error(op.to_dense(), whole.to_dense()) < RTOL_FLOAT64


def test_chunked_columns_equal_unchunked(case):
    op = cl.HessianOperator(
        case.model, case.loss_fn, case.data, params=case.params, max_cols=2
    )
    full = cl.HessianOperator(case.model, case.loss_fn, case.data, params=case.params)
    V = torch.randn(op.shape[0], 5, dtype=torch.float64)
    assert rel_error(op @ V, full @ V) < RTOL_FLOAT64


def test_params_as_tensors_equals_names(case):
    names = param_names(case)
    named = dict(case.model.named_parameters())
    by_name = cl.HessianOperator(case.model, case.loss_fn, case.data, params=names)
    by_tensor = cl.HessianOperator(
        case.model, case.loss_fn, case.data, params=[named[n] for n in names]
    )
    assert by_name.param_names == by_tensor.param_names == names
    V = torch.randn(by_name.shape[0], 2, dtype=torch.float64)
    assert torch.equal(by_name @ V, by_tensor @ V)


def test_block_keeps_the_mode(case):
    op = cl.HessianOperator(case.model, case.loss_fn, case.data, mode="forward")
    assert op.block(op.param_names[:1]).mode == "forward"


def test_unknown_mode():
    from conftest import CASES

    c = CASES[0]
    with pytest.raises(ValueError, match="mode must be 'reverse' or 'forward'"):
        cl.HessianOperator(c.model, c.loss_fn, c.data, mode="backward")


def test_parameters_the_loss_is_linear_in():
    """A last-layer-only selection of a linear model with MSE has a constant Hessian."""
    model = torch.nn.Linear(3, 2).double()
    X = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randn(6, 2, dtype=torch.float64)
    op = cl.HessianOperator(model, torch.nn.MSELoss(), [(X, y)], params=["bias"])
    assert rel_error(op.to_dense(), torch.eye(2, dtype=torch.float64)) < 1e-14

import pytest
import torch

import curvlab as cl
from _compare import compare_matmat, rel_error
from _truth import dense_empirical_fisher, dense_ggn
from conftest import RTOL_FLOAT64, param_names


def test_ggn_matches_dense(case):
    op = cl.GGNOperator(case.model, case.loss_fn, case.data, params=case.params)
    truth = dense_ggn(case.model, case.loss_fn, case.data, param_names(case))
    compare_matmat(op, truth, RTOL_FLOAT64)
    assert op.is_psd


def test_exact_fisher_equals_ggn(case):
    op = cl.FisherOperator(case.model, case.loss_fn, case.data, params=case.params)
    truth = dense_ggn(case.model, case.loss_fn, case.data, param_names(case))
    compare_matmat(op, truth, RTOL_FLOAT64)


def test_empirical_fisher_matches_per_sample_gradients(case):
    op = cl.EmpiricalFisherOperator(
        case.model, case.loss_fn, case.data, params=case.params
    )
    truth = dense_empirical_fisher(
        case.model, case.loss_fn, case.data, param_names(case)
    )
    compare_matmat(op, truth, RTOL_FLOAT64)


def test_mc_fisher_converges_to_exact(case):
    """The MC error falls like 1/sqrt(m): 100x the samples, about 10x less error."""
    exact = dense_ggn(case.model, case.loss_fn, case.data, param_names(case))
    errors = []
    for m in (10, 1000):
        op = cl.FisherOperator(
            case.model, case.loss_fn, case.data, params=case.params, mc_samples=m
        )
        errors.append(rel_error(op.to_dense(), exact))
    assert errors[1] < errors[0] / 4
    assert errors[1] < 0.1


def test_mc_fisher_is_a_fixed_psd_matrix_per_seed(case):
    kwargs = {"params": case.params, "mc_samples": 3}
    a = cl.FisherOperator(case.model, case.loss_fn, case.data, seed=4, **kwargs)
    b = cl.FisherOperator(case.model, case.loss_fn, case.data, seed=4, **kwargs)
    c = cl.FisherOperator(case.model, case.loss_fn, case.data, seed=5, **kwargs)
    A = a.to_dense()
    assert torch.equal(A, a.to_dense())
    assert torch.equal(A, b.to_dense())
    assert not torch.equal(A, c.to_dense())
    assert torch.linalg.eigvalsh(A).min() > -1e-12 * A.norm()


def test_unsupported_loss_is_refused():
    model = torch.nn.Linear(2, 2).double()
    data = [(torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2).double())]
    with pytest.raises(NotImplementedError, match="support CrossEntropyLoss"):
        cl.GGNOperator(model, torch.nn.L1Loss(), data)
    with pytest.raises(NotImplementedError, match="label smoothing"):
        cl.GGNOperator(model, torch.nn.CrossEntropyLoss(label_smoothing=0.1), data)

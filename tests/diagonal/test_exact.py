"""Exact and Monte-Carlo diagonals against dense float64 truth."""

import pytest
import torch
from torch import nn

import curvlab as cl
import curvlab.diagonal as cd
from _compare import rel_error
from _truth import dense_ggn, dense_hessian
from conftest import RTOL_FLOAT64, make_cases, param_names

CASES = make_cases()


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


def _residual_bn_case():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 3),
        nn.BatchNorm1d(3),
        nn.Tanh(),
        cd.Residual(nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 3))),
        nn.Dropout(0.5),
        nn.Linear(3, 3),
    ).double()
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(9, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (9,), generator=g)
    return model, nn.CrossEntropyLoss(), [(X[:5], y[:5]), (X[5:], y[5:])]


def _cnn_spatial_ce_case():
    """Cross-entropy over a (B, C, L) output: K = C * L columns per sample."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv1d(3, 3, 1))
    model = model.double().eval()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4, 2, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4, 4), generator=g)
    return model, nn.CrossEntropyLoss(reduction="sum"), [(X[:3], y[:3]), (X[3:], y[3:])]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_exact_hessian_diagonal_matches_dense(case):
    diag = cd.exact_hessian_diagonal(
        case.model, case.loss_fn, case.data, params=case.params, chunk_size=16
    )
    truth = dense_hessian(case.model, case.loss_fn, case.data, param_names(case))
    assert rel_error(flat(diag), truth.diagonal()) < RTOL_FLOAT64


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_exact_ggn_diagonal_matches_dense(case):
    diag = cd.exact_ggn_diagonal(
        case.model, case.loss_fn, case.data, params=case.params
    )
    truth = dense_ggn(case.model, case.loss_fn, case.data, param_names(case))
    assert rel_error(flat(diag), truth.diagonal()) < RTOL_FLOAT64
    assert [d.shape for d in diag] == [
        dict(case.model.named_parameters())[n].shape for n in param_names(case)
    ]


def test_exact_diagonals_on_residual_and_batchnorm():
    model, loss_fn, data = _residual_bn_case()
    names = [n for n, _ in model.named_parameters()]
    H = dense_hessian(model, loss_fn, data, names).diagonal()
    G = dense_ggn(model, loss_fn, data, names).diagonal()
    hess = flat(cd.exact_hessian_diagonal(model, loss_fn, data))
    assert rel_error(hess, H) < RTOL_FLOAT64
    assert rel_error(flat(cd.exact_ggn_diagonal(model, loss_fn, data)), G) < (
        RTOL_FLOAT64
    )


def test_exact_ggn_diagonal_with_spatial_cross_entropy():
    model, loss_fn, data = _cnn_spatial_ce_case()
    names = [n for n, _ in model.named_parameters()]
    G = dense_ggn(model, loss_fn, data, names).diagonal()
    assert rel_error(flat(cd.exact_ggn_diagonal(model, loss_fn, data)), G) < (
        RTOL_FLOAT64
    )


def test_mc_ggn_diagonal_is_the_mc_fisher_diagonal():
    case = CASES[0]
    for m in (1, 3):
        diag = cd.mc_ggn_diagonal(
            case.model, case.loss_fn, case.data, mc_samples=m, seed=7
        )
        op = cl.FisherOperator(
            case.model, case.loss_fn, case.data, mc_samples=m, seed=7
        )
        assert rel_error(flat(diag), op.to_dense().diagonal()) < RTOL_FLOAT64


@pytest.mark.parametrize("index", [0, 2, 4], ids=["ce", "mse", "bce"])
def test_mc_ggn_diagonal_converges(index):
    """The error falls like 1/sqrt(m): 100x the samples, about 10x less error."""
    case = CASES[index]
    exact = flat(cd.exact_ggn_diagonal(case.model, case.loss_fn, case.data))

    def mean_error(m):
        return (
            sum(
                rel_error(
                    flat(
                        cd.mc_ggn_diagonal(
                            case.model, case.loss_fn, case.data, mc_samples=m, seed=s
                        )
                    ),
                    exact,
                )
                for s in range(4)
            )
            / 4
        )

    errors = [mean_error(10), mean_error(1000)]
    assert errors[1] < errors[0] / 4
    assert errors[1] < 0.1


def test_mc_ggn_diagonal_is_seeded():
    case = CASES[0]
    a = cd.mc_ggn_diagonal(case.model, case.loss_fn, case.data, seed=3)
    b = cd.mc_ggn_diagonal(case.model, case.loss_fn, case.data, seed=3)
    c = cd.mc_ggn_diagonal(case.model, case.loss_fn, case.data, seed=4)
    assert torch.equal(flat(a), flat(b))
    assert not torch.equal(flat(a), flat(c))


def test_ggn_diagonal_memory_chunks(monkeypatch):
    """Chunking the samples does not change the result."""
    case = CASES[5]
    whole = flat(cd.exact_ggn_diagonal(case.model, case.loss_fn, case.data))
    monkeypatch.setattr("curvlab.diagonal.exact._MEMORY_BUDGET", 1)
    chunked = flat(cd.exact_ggn_diagonal(case.model, case.loss_fn, case.data))
    assert rel_error(chunked, whole) < RTOL_FLOAT64


def test_max_dim_guard_says_cost_and_override():
    case = CASES[0]
    with pytest.raises(ValueError, match=r"D=39 .*max_dim=39"):
        cd.exact_hessian_diagonal(case.model, case.loss_fn, case.data, max_dim=38)
    cd.exact_hessian_diagonal(case.model, case.loss_fn, case.data, max_dim=39)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_counts(bad):
    case = CASES[0]
    with pytest.raises(ValueError, match="chunk_size"):
        cd.exact_hessian_diagonal(case.model, case.loss_fn, case.data, chunk_size=bad)
    with pytest.raises(ValueError, match="mc_samples"):
        cd.mc_ggn_diagonal(case.model, case.loss_fn, case.data, mc_samples=bad)


def test_train_mode_and_losses_are_checked():
    model, loss_fn, data = _residual_bn_case()
    model.train()
    for function in (cd.exact_ggn_diagonal, cd.exact_hessian_diagonal):
        with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d\).*model\.eval\(\)"):
            function(model, loss_fn, data)
    model.eval()
    with pytest.raises(NotImplementedError, match="NLLLoss"):
        cd.exact_ggn_diagonal(model, nn.NLLLoss(), data)
    with pytest.raises(ValueError, match="at least one"):
        cd.exact_ggn_diagonal(model, loss_fn, [])


def test_hesscale_last_layer_equals_exact_diagonals():
    case = CASES[1]  # relu, cross-entropy, sum
    hs = cd.hesscale(case.model, case.loss_fn, case.data)
    ggn = cd.exact_ggn_diagonal(case.model, case.loss_fn, case.data)
    hess = cd.exact_hessian_diagonal(case.model, case.loss_fn, case.data)
    for i in (-2, -1):
        assert rel_error(hs[i], ggn[i]) < RTOL_FLOAT64
        assert rel_error(hs[i], hess[i]) < RTOL_FLOAT64

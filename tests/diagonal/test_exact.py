"""Exact and Monte-Carlo diagonals against dense float64 truth."""

import pytest
import torch
from torch import nn

import curvlab as cl
import curvlab.diagonal as cd
from _compare import rel_error
from _truth import dense_ggn, dense_hessian
from conftest import RTOL_FLOAT64, make_cases, param_names
from curvlab.diagonal import exact, ggn_backprop, hessian_backprop

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


@pytest.mark.parametrize("backprop", [True, False], ids=["backprop", "generic"])
def test_ggn_diagonal_memory_chunks(monkeypatch, backprop):
    """Chunking the samples does not change the result."""
    case = CASES[5]
    if not backprop:
        monkeypatch.setattr(ggn_backprop, "supported", lambda model: False)
    whole = flat(cd.exact_ggn_diagonal(case.model, case.loss_fn, case.data))
    monkeypatch.setattr("curvlab.diagonal.exact._MEMORY_BUDGET", 1)
    chunked = flat(cd.exact_ggn_diagonal(case.model, case.loss_fn, case.data))
    assert rel_error(chunked, whole) < RTOL_FLOAT64


def test_max_dim_guard_says_cost_and_override():
    case = CASES[5]  # a CNN: Hessian-vector products
    D = sum(p.numel() for p in case.model.parameters())
    with pytest.raises(ValueError, match=rf"D={D} .*max_dim={D}"):
        cd.exact_hessian_diagonal(case.model, case.loss_fn, case.data, max_dim=D - 1)
    cd.exact_hessian_diagonal(case.model, case.loss_fn, case.data, max_dim=D)


def test_max_dim_does_not_limit_hessian_backprop():
    # issue 11, item 8: D > 20,000 was refused although backpropagation costs one
    # pass over the data; its limit is the size of the per-sample factors
    case = CASES[0]  # an MLP: Hessian backpropagation, no D products
    D = sum(p.numel() for p in case.model.parameters())
    small = flat(
        cd.exact_hessian_diagonal(case.model, case.loss_fn, case.data, max_dim=1)
    )
    whole = flat(
        cd.exact_hessian_diagonal(case.model, case.loss_fn, case.data, max_dim=D)
    )
    assert torch.equal(small, whole)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 300),
        torch.nn.Tanh(),
        torch.nn.Linear(300, 22),
        torch.nn.Tanh(),
        torch.nn.Linear(22, 10),
    ).eval()
    D = sum(p.numel() for p in model.parameters())
    assert D > 20_000  # the default max_dim
    data = [(torch.randn(32, 64), torch.randint(0, 10, (32,)))]
    diag = cd.exact_hessian_diagonal(model, torch.nn.CrossEntropyLoss(), data)
    assert sum(d.numel() for d in diag) == D
    assert all(torch.isfinite(d).all() for d in diag)


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


# ------------------------------------------------ backpropagation fast paths
def _spy(monkeypatch, module, name):
    """Count the calls of ``module.name`` (still calling it)."""
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def _generic_ggn(monkeypatch, function, *args, **kwargs):
    """Run an exact/MC GGN diagonal with the factor backpropagation switched off."""
    with monkeypatch.context() as patch:
        patch.setattr(ggn_backprop, "supported", lambda model: False)
        calls = _spy(patch, exact, "_squared_vjp_sum")
        out = function(*args, **kwargs)
    assert calls, "the generic method did not run"
    return flat(out)


def _hvp_hessian(monkeypatch, *args, **kwargs):
    """Run exact_hessian_diagonal with Hessian backpropagation switched off."""
    with monkeypatch.context() as patch:
        patch.setattr(hessian_backprop, "supported", lambda model: False)
        return flat(cd.exact_hessian_diagonal(*args, **kwargs))


def _with_bn_statistics(model):
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


def _structured_case(name):
    """Models beyond CASES: positions, BatchNorm, residuals, 1d convolutions."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if name == "linear_3d_bn":  # Linear on (B, P, in): weights shared over P
        model = nn.Sequential(
            nn.Linear(5, 4),
            nn.Softplus(),
            nn.Linear(4, 3),
            nn.BatchNorm1d(3),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(9, 4),
        )
        shape = (3, 5)
    elif name == "residual_bn":
        model = nn.Sequential(
            nn.Linear(5, 4),
            nn.BatchNorm1d(4),
            cd.Residual(
                nn.Sequential(
                    nn.Linear(4, 4),
                    nn.Tanh(),
                    cd.Residual(nn.Sequential(nn.Linear(4, 4), nn.SELU())),
                )
            ),
            nn.LeakyReLU(0.1),
            nn.Dropout(0.3),
            nn.Linear(4, 4),
        )
        shape = (5,)
    else:  # conv1d: groups, stride, dilation, 'same'; max/avg pooling; BatchNorm2d
        assert name == "conv_1d_2d"
        model = nn.Sequential(
            nn.Conv1d(4, 6, 3, stride=2, dilation=2, padding=2, groups=2),
            nn.ELU(),
            nn.MaxPool1d(2),
            nn.Conv1d(6, 4, 3, padding="same", bias=False),
            nn.AvgPool1d(2, ceil_mode=True),
            nn.Identity(),
            nn.Flatten(),
            nn.Linear(8, 4),
        )
        shape = (4, 17)
    model = _with_bn_statistics(model.double())
    X = torch.randn(7, *shape, generator=g, dtype=torch.float64)
    return model, X


def _cnn_2d_bn_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.GELU(),
        nn.MaxPool2d(2, stride=1, padding=1),
        nn.Conv2d(4, 3, 3, stride=2),
        nn.Sigmoid(),
        nn.AdaptiveAvgPool2d((2, 3)),
        nn.Flatten(),
        nn.Linear(18, 4),
    )
    return _with_bn_statistics(model.double())


_LOSSES = {
    "ce_mean": (
        nn.CrossEntropyLoss(),
        lambda g: torch.randint(0, 4, (7,), generator=g),
    ),
    "mse_sum": (
        nn.MSELoss(reduction="sum"),
        lambda g: torch.randn(7, 4, generator=g, dtype=torch.float64),
    ),
    "bce_mean": (
        nn.BCEWithLogitsLoss(),
        lambda g: torch.randint(0, 2, (7, 4), generator=g).double(),
    ),
}


def _data(X, loss):
    loss_fn, target = _LOSSES[loss]
    y = target(torch.Generator().manual_seed(2))
    return loss_fn, [(X[:4], y[:4]), (X[4:], y[4:])]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_ggn_backprop_equals_generic_method(case, monkeypatch):
    """CASES: MLPs with CE/MSE/BCE, mean and sum, a CNN with max and avg pooling."""
    assert ggn_backprop.supported(case.model)
    calls = _spy(monkeypatch, ggn_backprop, "factor_diagonal")
    fast = flat(
        cd.exact_ggn_diagonal(case.model, case.loss_fn, case.data, params=case.params)
    )
    assert len(calls) == len(case.data)
    generic = _generic_ggn(
        monkeypatch,
        cd.exact_ggn_diagonal,
        case.model,
        case.loss_fn,
        case.data,
        params=case.params,
    )
    truth = dense_ggn(case.model, case.loss_fn, case.data, param_names(case))
    assert rel_error(fast, generic) < RTOL_FLOAT64
    assert rel_error(fast, truth.diagonal()) < RTOL_FLOAT64


@pytest.mark.parametrize("loss", list(_LOSSES))
@pytest.mark.parametrize("name", ["linear_3d_bn", "residual_bn", "conv_1d_2d"])
def test_ggn_backprop_on_structured_models(name, loss, monkeypatch):
    model, X = _structured_case(name)
    if name == "conv_1d_2d" and loss != "ce_mean":
        model = _cnn_2d_bn_model()  # the 2d variant for the other losses
        X = torch.randn(7, 2, 9, 9, generator=torch.Generator().manual_seed(0))
        X = X.double()
    loss_fn, data = _data(X, loss)
    assert ggn_backprop.supported(model)
    fast = flat(cd.exact_ggn_diagonal(model, loss_fn, data))
    generic = _generic_ggn(monkeypatch, cd.exact_ggn_diagonal, model, loss_fn, data)
    names = [n for n, _ in model.named_parameters()]
    truth = dense_ggn(model, loss_fn, data, names).diagonal()
    assert rel_error(fast, truth) < RTOL_FLOAT64
    assert rel_error(generic, truth) < RTOL_FLOAT64


@pytest.mark.parametrize("index", [0, 2, 4, 5], ids=["ce", "mse", "bce", "cnn"])
def test_mc_backprop_equals_generic_mc(index, monkeypatch):
    """Same seed, same sampled labels: the two methods agree to round-off."""
    case = CASES[index]
    fast = flat(
        cd.mc_ggn_diagonal(case.model, case.loss_fn, case.data, mc_samples=3, seed=5)
    )
    generic = _generic_ggn(
        monkeypatch,
        cd.mc_ggn_diagonal,
        case.model,
        case.loss_fn,
        case.data,
        mc_samples=3,
        seed=5,
    )
    assert rel_error(fast, generic) < RTOL_FLOAT64


def test_ggn_backprop_memory_chunks(monkeypatch):
    """Chunked samples and per-sample gradients give the same diagonal."""
    model, X = _structured_case("linear_3d_bn")
    loss_fn, data = _data(X, "ce_mean")
    whole = flat(cd.exact_ggn_diagonal(model, loss_fn, data))
    monkeypatch.setattr(exact, "_MEMORY_BUDGET", 7)
    chunked = flat(cd.exact_ggn_diagonal(model, loss_fn, data))
    assert rel_error(chunked, whole) < RTOL_FLOAT64
    case = CASES[5]
    chunked_cnn = flat(cd.exact_ggn_diagonal(case.model, case.loss_fn, case.data))
    monkeypatch.undo()
    whole_cnn = flat(cd.exact_ggn_diagonal(case.model, case.loss_fn, case.data))
    assert rel_error(chunked_cnn, whole_cnn) < RTOL_FLOAT64


class _Square(nn.Module):
    def forward(self, x):
        return x * x


def test_generic_method_for_models_the_walk_does_not_support(monkeypatch):
    """A module without a rule, or a weight used twice: the generic method runs."""
    torch.manual_seed(0)
    shared = nn.Linear(3, 3)
    models = [
        nn.Sequential(nn.Linear(4, 3), _Square(), nn.Linear(3, 3)).double(),
        nn.Sequential(nn.Linear(4, 3), nn.Tanh(), shared, nn.Tanh(), shared).double(),
    ]
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 4, generator=g, dtype=torch.float64)
    data = [(X, torch.randint(0, 3, (5,), generator=g))]
    loss_fn = nn.CrossEntropyLoss()
    for model in models:
        assert not ggn_backprop.supported(model)
        assert not hessian_backprop.supported(model)
        with monkeypatch.context() as patch:
            generic = _spy(patch, exact, "_squared_vjp_sum")
            fast = _spy(patch, ggn_backprop, "factor_diagonal")
            ggn = flat(cd.exact_ggn_diagonal(model, loss_fn, data))
        assert generic
        assert not fast
        names = [n for n, _ in model.named_parameters()]
        assert rel_error(ggn, dense_ggn(model, loss_fn, data, names).diagonal()) < (
            RTOL_FLOAT64
        )
    # Hessian-vector products for the model without a rule (the Hessian
    # operator does not differentiate through tied weights)
    model = models[0]
    with monkeypatch.context() as patch:
        backprop = _spy(patch, hessian_backprop, "hessian_diagonal")
        hess = flat(cd.exact_hessian_diagonal(model, loss_fn, data))
    assert not backprop
    names = [n for n, _ in model.named_parameters()]
    H = dense_hessian(model, loss_fn, data, names).diagonal()
    assert rel_error(hess, H) < RTOL_FLOAT64


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 6])
def test_hessian_backprop_on_mlps(index, monkeypatch):
    """MLP CASES (CE/MSE/BCE, mean/sum, a parameter subset) use the backprop."""
    case = CASES[index]
    calls = _spy(monkeypatch, hessian_backprop, "hessian_diagonal")
    fast = flat(
        cd.exact_hessian_diagonal(
            case.model, case.loss_fn, case.data, params=case.params
        )
    )
    assert len(calls) == len(case.data)
    truth = dense_hessian(case.model, case.loss_fn, case.data, param_names(case))
    assert rel_error(fast, truth.diagonal()) < RTOL_FLOAT64


@pytest.mark.parametrize("loss", list(_LOSSES))
def test_hessian_backprop_with_positions_and_batchnorm(loss, monkeypatch):
    model, X = _structured_case("linear_3d_bn")
    loss_fn, data = _data(X, loss)
    assert hessian_backprop.supported(model)
    calls = _spy(monkeypatch, hessian_backprop, "hessian_diagonal")
    fast = flat(cd.exact_hessian_diagonal(model, loss_fn, data))
    assert calls
    names = [n for n, _ in model.named_parameters()]
    truth = dense_hessian(model, loss_fn, data, names).diagonal()
    assert rel_error(fast, truth) < RTOL_FLOAT64
    monkeypatch.setattr(exact, "_MEMORY_BUDGET", 1)  # one sample at a time
    chunked = flat(cd.exact_hessian_diagonal(model, loss_fn, data))
    assert rel_error(chunked, truth) < RTOL_FLOAT64


def test_hessian_backprop_with_batchnorm_2d_and_gelu():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.BatchNorm2d(2),
        nn.Flatten(),
        nn.Linear(8, 5),
        nn.GELU(approximate="tanh"),
        nn.BatchNorm1d(5),
        nn.Linear(5, 3),
    )
    model = _with_bn_statistics(model.double())
    g = torch.Generator().manual_seed(0)
    X = torch.randn(6, 2, 2, 2, generator=g, dtype=torch.float64)
    data = [(X, torch.randint(0, 3, (6,), generator=g))]
    loss_fn = nn.CrossEntropyLoss()
    assert hessian_backprop.supported(model)
    names = [n for n, _ in model.named_parameters()]
    truth = dense_hessian(model, loss_fn, data, names).diagonal()
    assert rel_error(flat(cd.exact_hessian_diagonal(model, loss_fn, data)), truth) < (
        RTOL_FLOAT64
    )


def test_hessian_backprop_falls_back_when_too_wide(monkeypatch):
    """Above MAX_FEATURES the Hessian-vector products run."""
    case = CASES[0]
    monkeypatch.setattr(hessian_backprop, "MAX_FEATURES", 3)  # hidden width 4
    hvp = _spy(monkeypatch, exact, "HessianOperator")
    diag = flat(cd.exact_hessian_diagonal(case.model, case.loss_fn, case.data))
    assert hvp
    truth = dense_hessian(case.model, case.loss_fn, case.data, param_names(case))
    assert rel_error(diag, truth.diagonal()) < RTOL_FLOAT64


def test_hessian_backprop_equals_hvp_method(monkeypatch):
    case = CASES[2]
    fast = flat(cd.exact_hessian_diagonal(case.model, case.loss_fn, case.data))
    slow = _hvp_hessian(monkeypatch, case.model, case.loss_fn, case.data)
    assert rel_error(fast, slow) < RTOL_FLOAT64

"""HesScale, HesScaleGN and BL89 against dense truth and a per-sample reference."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, vmap
from torch.nn import functional as F

import curvlab.diagonal as cd
from _truth import dense_ggn, dense_hessian
from conftest import RTOL_FLOAT64

ACTIVATIONS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.SELU,
    nn.Softplus,
    nn.GELU,
    nn.SiLU,
)


def close(a, b, rtol=RTOL_FLOAT64):
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1e-30)
    return float((a - b).abs().max()) <= rtol * scale


# ------------------------------------------------------------------- problems
LOSSES = {
    "ce_mean": (nn.CrossEntropyLoss(), "classes"),
    "ce_sum": (nn.CrossEntropyLoss(reduction="sum"), "classes"),
    "mse_mean": (nn.MSELoss(), "regression"),
    "mse_sum": (nn.MSELoss(reduction="sum"), "regression"),
    "bce_mean": (nn.BCEWithLogitsLoss(), "binary"),
    "bce_sum": (nn.BCEWithLogitsLoss(reduction="sum"), "binary"),
}


def targets(kind, N, C, g, spatial=()):
    if kind == "classes":
        return torch.randint(0, C, (N, *spatial), generator=g)
    if kind == "binary":
        return torch.randint(0, 2, (N, C, *spatial), generator=g).double()
    return torch.randn(N, C, *spatial, generator=g, dtype=torch.float64)


def make_data(in_shape, kind, C, batch_sizes=(4, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    data = []
    for b in batch_sizes:
        X = torch.randn(b, *in_shape, generator=g, dtype=torch.float64)
        data.append((X, targets(kind, b, C, g)))
    return data


def build(factory, seed=0):
    torch.manual_seed(seed)
    model = factory().double().eval()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def mlp(act=nn.Tanh):
    return nn.Sequential(
        nn.Linear(5, 4), act(), nn.Linear(4, 4), act(), nn.Linear(4, 3)
    )


def cnn2d():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.Sigmoid(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(4, 4, 2, groups=2),
        nn.Tanh(),
        nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False, ceil_mode=True),
        nn.Conv2d(4, 3, 2, stride=2, dilation=1, bias=False),
        nn.GELU(approximate="tanh"),
        nn.AdaptiveAvgPool2d((2, 1)),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def cnn2d_pool_options():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding="same", dilation=1),
        nn.Softplus(beta=2.0, threshold=1.0),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True),
        nn.Conv2d(3, 3, 2, dilation=2, padding=1),
        nn.SiLU(),
        nn.AvgPool2d(2, divisor_override=3),
        nn.Flatten(),
        nn.Linear(3, 3),
    )


def cnn1d():
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, padding="same"),
        nn.ELU(alpha=0.7),
        nn.MaxPool1d(2),
        nn.Conv1d(3, 3, 2, stride=2, padding=1),
        nn.SELU(),
        nn.AvgPool1d(2, padding=1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def residual():
    return nn.Sequential(
        nn.Linear(5, 4),
        nn.Tanh(),
        cd.Residual(nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 4))),
        nn.Tanh(),
        cd.Residual(nn.Identity()),
        nn.Linear(4, 3),
    )


def batchnorm():
    return nn.Sequential(
        nn.Linear(5, 4),
        nn.BatchNorm1d(4),
        nn.Tanh(),
        nn.Dropout(0.3),
        nn.Linear(4, 3),
    )


def batchnorm2d():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.BatchNorm2d(3),
        nn.SiLU(),
        nn.Dropout2d(0.2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 3),
    )


MODELS = {
    "cnn2d": (cnn2d, (2, 7, 7)),
    "cnn2d_pool_options": (cnn2d_pool_options, (2, 6, 6)),
    "cnn1d": (cnn1d, (2, 9)),
    "residual": (residual, (5,)),
    "batchnorm": (batchnorm, (5,)),
    "batchnorm2d": (batchnorm2d, (2, 5, 5)),
}
MODELS.update(
    {f"mlp_{a.__name__.lower()}": (lambda a=a: mlp(a), (5,)) for a in ACTIVATIONS}
)
MODELS["mlp_gelu_tanh"] = (lambda: mlp(lambda: nn.GELU(approximate="tanh")), (5,))


# ------------------------------------------------------- independent reference
def _record(module, x, tape):
    """Run one sample forward, taping each leaf with its input."""
    if type(module) is nn.Sequential:
        for child in module:
            x = _record(child, x, tape)
        return x
    if type(module) is cd.Residual:
        sub = []
        fx = _record(module.block, x, sub)
        tape.append(("residual", sub))
        return x + fx
    tape.append(("leaf", module, x, {}))  # the dict caches Jacobians
    return module(x)


def _activation_derivatives(module, x):
    def scalar(t):
        return module(t.reshape(1, 1)).reshape(())

    flat = x.flatten()
    return vmap(grad(scalar))(flat), vmap(grad(grad(scalar)))(flat)


def _jacobians(module, x):
    """Dense input Jacobian and parameter Jacobians of a leaf at one sample."""
    y = module(x)
    A = jacrev(module)(x).reshape(y.numel(), x.numel())
    own = {n: p.detach() for n, p in module.named_parameters(recurse=False)}
    Bs = {}
    for n, p in own.items():

        def f(q, n=n):
            return functional_call(module, {**own, n: q}, (x,))

        Bs[n] = jacrev(f)(p).reshape(y.numel(), p.numel())
    return A, Bs


def _walk_back(tape, g, h, second_order, results, names):
    for entry in reversed(tape):
        if entry[0] == "residual":
            g_b, h_b = _walk_back(entry[1], g, h, second_order, results, names)
            g, h = g + g_b, h + h_b
            continue
        _, module, x, cache = entry
        if not cache:
            derivatives = (
                _activation_derivatives
                if isinstance(module, ACTIVATIONS)
                else _jacobians
            )
            cache["value"] = derivatives(module, x)
        if isinstance(module, ACTIVATIONS):
            d1, d2 = cache["value"]
            g, h = d1 * g, d1 * d1 * h + (d2 * g if second_order else 0.0)
            continue
        A, Bs = cache["value"]
        for n, B in Bs.items():
            p = getattr(module, n)
            results[names[id(p)]][0] += (B.T @ g).reshape(p.shape)
            diag = torch.diagonal(B.T @ torch.diag(h) @ B)
            results[names[id(p)]][1] += diag.reshape(p.shape)
        g, h = A.T @ g, torch.diagonal(A.T @ torch.diag(h) @ A)
    return g, h


@torch.no_grad()
def reference(model, loss_fn, X, y, variants=("hessian", "ggn", "bl89")):
    """Per-sample loop over the HesScale recursion with explicit matrices.

    Returns {variant: {name: [gradient, diagonal]}}.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    output = model(X)
    B = output.shape[0]
    K = output[0].numel()
    G = grad(lambda o: loss_fn(o, y))(output).reshape(B, K)
    H = hessian(lambda o: loss_fn(o, y))(output).reshape(B, K, B, K)
    H_diag = torch.stack([torch.diagonal(H[n, :, n, :]) for n in range(B)])
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        # BL89: NLL on log-softmax has zero Hessian; log-softmax is element-wise
        logp = F.log_softmax(output, dim=1)
        g_logp = grad(lambda lp: F.nll_loss(lp, y, reduction=loss_fn.reduction))(logp)
        p = logp.exp()
        bl89_diag = ((p * p - p) * g_logp).reshape(B, K)  # (1-p)^2 * 0 + d2f * g
    else:
        bl89_diag = H_diag
    tapes = []
    for n in range(B):
        tapes.append([])
        _record(model, X[n : n + 1], tapes[-1])
    out = {}
    for variant in variants:
        results = {
            n: [torch.zeros_like(p), torch.zeros_like(p)]
            for n, p in model.named_parameters()
        }
        start = bl89_diag if variant == "bl89" else H_diag
        for n in range(B):
            _walk_back(tapes[n], G[n], start[n], variant != "ggn", results, names)
        out[variant] = results
    return out


# ----------------------------------------------------------------------- tests
@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("variant", ["hessian", "ggn"])
def test_last_layer_is_exact(loss_name, variant):
    loss_fn, kind = LOSSES[loss_name]
    model = build(mlp)
    data = make_data((5,), kind, 3)
    names = [n for n, _ in model.named_parameters()]
    diag = cd.hesscale(model, loss_fn, data, variant=variant)
    H = dense_hessian(model, loss_fn, data, names).diagonal()
    GGN = dense_ggn(model, loss_fn, data, names).diagonal()
    last = torch.cat([diag[-2].flatten(), diag[-1].flatten()])
    assert close(last, H[-last.numel() :])
    assert close(last, GGN[-last.numel() :])


@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("variant", ["hessian", "ggn"])
@pytest.mark.parametrize("flatten", [False, True])
def test_single_linear_layer_is_exact(loss_name, variant, flatten):
    loss_fn, kind = LOSSES[loss_name]
    torch.manual_seed(0)
    linear = nn.Linear(6, 3).double()
    model = nn.Sequential(nn.Flatten(), linear) if flatten else linear
    data = make_data((2, 3) if flatten else (6,), kind, 3)
    names = [n for n, _ in model.named_parameters()]
    diag = torch.cat(
        [d.flatten() for d in cd.hesscale(model, loss_fn, data, variant=variant)]
    )
    assert close(diag, dense_hessian(model, loss_fn, data, names).diagonal())


@pytest.mark.parametrize("model_name", list(MODELS))
def test_matches_per_sample_reference(model_name):
    factory, in_shape = MODELS[model_name]
    model = build(factory)
    loss_fn = nn.CrossEntropyLoss()
    ((X, y),) = make_data(in_shape, "classes", 3, batch_sizes=(3,))
    truth = reference(model, loss_fn, X, y)
    names = [n for n, _ in model.named_parameters()]
    for variant in cd.VARIANTS:
        batch = cd.hesscale_batch(
            model, loss_fn, X, y, variant=variant, accumulate_grad=False
        )
        for name, g, d in zip(names, batch.gradients, batch.diagonals, strict=True):
            assert close(g, truth[variant][name][0]), (variant, name)
            assert close(d, truth[variant][name][1]), (variant, name)


@pytest.mark.parametrize("loss_name", ["ce_sum", "mse_mean", "bce_mean"])
def test_losses_match_per_sample_reference(loss_name):
    loss_fn, kind = LOSSES[loss_name]
    model = build(residual)
    ((X, y),) = make_data((5,), kind, 3, batch_sizes=(4,))
    truth = reference(model, loss_fn, X, y)
    names = [n for n, _ in model.named_parameters()]
    for variant in cd.VARIANTS:
        batch = cd.hesscale_batch(
            model, loss_fn, X, y, variant=variant, accumulate_grad=False
        )
        for name, d in zip(names, batch.diagonals, strict=True):
            assert close(d, truth[variant][name][1]), (variant, name)


def test_gradient_and_loss_match_autograd():
    model = build(cnn2d)
    loss_fn = nn.CrossEntropyLoss()
    ((X, y),) = make_data((2, 7, 7), "classes", 3, batch_sizes=(5,))
    batch = cd.hesscale_batch(model, loss_fn, X, y, accumulate_grad=False)
    loss = loss_fn(model(X), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert close(batch.loss, loss.detach())
    assert not batch.loss.requires_grad
    for a, b in zip(batch.gradients, grads, strict=True):
        assert close(a, b)


def test_bl89_output_rule_for_cross_entropy():
    """BL89 keeps c (p_y - p_y^2) at the true class only: the last bias shows it."""
    model = build(mlp)
    loss_fn = nn.CrossEntropyLoss()
    ((X, y),) = make_data((5,), "classes", 3, batch_sizes=(6,))
    diag = cd.hesscale_batch(
        model, loss_fn, X, y, variant="bl89", accumulate_grad=False
    )
    p = torch.softmax(model(X), dim=1).detach()
    py = p[torch.arange(6), y]
    expected = torch.zeros(3, dtype=torch.float64).index_add_(0, y, (py - py**2) / 6)
    assert close(diag.diagonals[-1], expected)
    hess = cd.hesscale_batch(model, loss_fn, X, y, accumulate_grad=False)
    assert close(hess.diagonals[-1], (p - p**2).sum(0) / 6)


@pytest.mark.parametrize("loss_name", ["mse_mean", "bce_sum"])
def test_bl89_equals_hesscale_for_diagonal_output_hessians(loss_name):
    loss_fn, kind = LOSSES[loss_name]
    model = build(mlp)
    data = make_data((5,), kind, 3)
    a = cd.hesscale(model, loss_fn, data, variant="bl89")
    b = cd.hesscale(model, loss_fn, data, variant="hessian")
    for u, v in zip(a, b, strict=True):
        assert close(u, v)


def test_piecewise_linear_network_gn_equals_hessian():
    model = build(lambda: mlp(nn.ReLU))
    data = make_data((5,), "classes", 3)
    loss_fn = nn.CrossEntropyLoss()
    a = cd.hesscale(model, loss_fn, data, variant="ggn")
    b = cd.hesscale(model, loss_fn, data, variant="hessian")
    for u, v in zip(a, b, strict=True):
        assert close(u, v)


@pytest.mark.parametrize("loss_name", ["ce_mean", "ce_sum"])
def test_data_set_weights_and_batching(loss_name):
    loss_fn, kind = LOSSES[loss_name]
    model = build(mlp)
    data = make_data((5,), kind, 3, batch_sizes=(4, 3, 2))
    whole = [(torch.cat([X for X, _ in data]), torch.cat([y for _, y in data]))]
    a = cd.hesscale(model, loss_fn, data)
    b = cd.hesscale(model, loss_fn, whole)
    parts = [
        cd.hesscale_batch(model, loss_fn, X, y, accumulate_grad=False) for X, y in data
    ]
    weights = [X.shape[0] / 9 if loss_fn.reduction == "mean" else 1.0 for X, _ in data]
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        assert close(u, v)
        assert close(
            u, sum(w * p.diagonals[i] for w, p in zip(weights, parts, strict=True))
        )


def test_params_selection_and_order():
    model = build(residual)
    data = make_data((5,), "classes", 3)
    loss_fn = nn.CrossEntropyLoss()
    full = dict(
        zip(
            (n for n, _ in model.named_parameters()),
            cd.hesscale(model, loss_fn, data),
            strict=True,
        )
    )
    chosen = ["5.bias", "2.block.0.weight", "0.weight"]
    sub = cd.hesscale(model, loss_fn, data, params=chosen)
    for name, d in zip(chosen, sub, strict=True):
        assert torch.equal(d, full[name])
    named = dict(model.named_parameters())
    by_tensor = cd.hesscale(model, loss_fn, data, params=[named[n] for n in chosen])
    for a, b in zip(sub, by_tensor, strict=True):
        assert torch.equal(a, b)


def test_accumulates_grad_like_backward():
    model = build(mlp)
    loss_fn = nn.CrossEntropyLoss()
    ((X, y),) = make_data((5,), "classes", 3, batch_sizes=(5,))
    twin = copy.deepcopy(model)
    for _ in range(2):
        loss_fn(twin(X), y).backward()
        batch = cd.hesscale_batch(model, loss_fn, X, y)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert close(p.grad, q.grad)
    batch.gradients[0].zero_()  # the returned gradient does not alias .grad
    assert close(next(model.parameters()).grad, next(twin.parameters()).grad)


def test_inplace_activation_and_shared_module():
    act = nn.ReLU(inplace=True)
    shared = nn.Linear(4, 4)
    model = build(
        lambda: nn.Sequential(
            nn.Linear(5, 4), act, shared, nn.Tanh(), shared, nn.Linear(4, 3)
        )
    )
    reference_model = build(
        lambda: nn.Sequential(
            nn.Linear(5, 4), nn.ReLU(), shared, nn.Tanh(), shared, nn.Linear(4, 3)
        )
    )
    reference_model.load_state_dict(model.state_dict())
    ((X, y),) = make_data((5,), "classes", 3, batch_sizes=(4,))
    loss_fn = nn.CrossEntropyLoss()
    got = cd.hesscale_batch(model, loss_fn, X, y, accumulate_grad=False)
    truth = reference(reference_model, loss_fn, X, y, ["hessian"])["hessian"]
    names = [n for n, _ in model.named_parameters()]
    for name, g, d in zip(names, got.gradients, got.diagonals, strict=True):
        assert close(g, truth[name][0]), name
        assert close(d, truth[name][1]), name


# ---------------------------------------------------------------------- errors
class Custom(nn.Module):
    def forward(self, x):
        return x


class MyLinear(nn.Linear):
    pass


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (nn.LSTM(4, 4), "LSTM"),
        (Custom(), "Custom"),
        (MyLinear(4, 4), "MyLinear"),
        (nn.Softmax(dim=1), "Softmax"),
    ],
)
def test_unsupported_module_is_named(module, name):
    model = nn.Sequential(
        nn.Linear(5, 4), nn.Sequential(nn.Tanh(), module), nn.Linear(4, 3)
    ).double()
    ((X, y),) = make_data((5,), "classes", 3, batch_sizes=(2,))
    with pytest.raises(NotImplementedError, match=rf"'1\.1' \({name}\).*Supported"):
        cd.hesscale_batch(model, nn.CrossEntropyLoss(), X, y)


def test_unsupported_model_class():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            return self.fc(x)

    ((X, y),) = make_data((5,), "classes", 3, batch_sizes=(2,))
    with pytest.raises(NotImplementedError, match=r"'model' \(Net\)"):
        cd.hesscale_batch(Net().double(), nn.CrossEntropyLoss(), X, y)


@pytest.mark.parametrize(
    "module",
    [nn.Dropout(0.5), nn.BatchNorm1d(4)],
    ids=["dropout", "batchnorm"],
)
def test_train_mode_is_refused(module):
    model = nn.Sequential(nn.Linear(5, 4), module, nn.Linear(4, 3)).double().train()
    ((X, y),) = make_data((5,), "classes", 3, batch_sizes=(3,))
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        cd.hesscale_batch(model, nn.CrossEntropyLoss(), X, y)
    with pytest.raises(ValueError, match=r"'1'"):
        cd.hesscale(model, nn.CrossEntropyLoss(), [(X, y)])
    model.eval()
    cd.hesscale(model, nn.CrossEntropyLoss(), [(X, y)])


def test_train_mode_without_random_layers_is_fine():
    model = build(mlp).train()
    ((X, y),) = make_data((5,), "classes", 3, batch_sizes=(3,))
    cd.hesscale_batch(model, nn.CrossEntropyLoss(), X, y, accumulate_grad=False)


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"), "padding_mode"),
        (nn.Conv2d(2, 2, 2, padding="same"), "asymmetric"),
        (nn.MaxPool2d(2, return_indices=True), "return_indices"),
        (nn.Flatten(0), "start_dim"),
        (nn.BatchNorm2d(2, track_running_stats=False).eval(), "track_running_stats"),
    ],
)
def test_unsupported_configuration(module, match):
    model = nn.Sequential(nn.Conv2d(2, 2, 1), module).double()
    X = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        cd.hesscale_batch(model, nn.MSELoss(), X, X)


def test_bad_arguments():
    model = build(mlp)
    ((X, y),) = make_data((5,), "classes", 3, batch_sizes=(3,))
    with pytest.raises(ValueError, match="variant"):
        cd.hesscale_batch(model, nn.CrossEntropyLoss(), X, y, variant="exact")
    with pytest.raises(NotImplementedError, match="NLLLoss"):
        cd.hesscale_batch(model, nn.NLLLoss(), X, y)
    with pytest.raises(ValueError, match="reduction"):
        cd.hesscale_batch(model, nn.CrossEntropyLoss(reduction="none"), X, y)
    with pytest.raises(ValueError, match="targets"):
        cd.hesscale_batch(model, nn.MSELoss(), X, y)
    with pytest.raises(ValueError, match="at least one"):
        cd.hesscale(model, nn.CrossEntropyLoss(), [])
    with pytest.raises(TypeError, match=r"\(X, y\) pairs"):
        cd.hesscale(model, nn.CrossEntropyLoss(), [X])
    bad = nn.Sequential(nn.Linear(5, 4), cd.Residual(nn.Linear(4, 2))).double()
    with pytest.raises(ValueError, match="shape"):
        cd.hesscale_batch(bad, nn.MSELoss(), X, torch.zeros(3, 2, dtype=torch.float64))

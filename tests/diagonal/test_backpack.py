"""Cross-checks against BackPACK's diagonal extensions (skipped without it)."""

import copy

import pytest
import torch
from torch import nn

import curvlab.diagonal as cd
from _compare import rel_error
from conftest import RTOL_FLOAT64

try:
    import backpack
    from backpack.extensions import DiagGGNExact, DiagGGNMC, DiagHessian
except (ImportError, RuntimeError) as error:  # torchvision may fail to import
    pytest.skip(f"BackPACK unavailable: {error}", allow_module_level=True)


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


def _mlp():
    return nn.Sequential(
        nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 3)
    )


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 2),
        nn.Sigmoid(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(3, 3),
    )


PROBLEMS = {
    "mlp_ce_mean": (_mlp, nn.CrossEntropyLoss(), (5,), "classes"),
    "mlp_ce_sum": (_mlp, nn.CrossEntropyLoss(reduction="sum"), (5,), "classes"),
    "mlp_mse_mean": (_mlp, nn.MSELoss(), (5,), "regression"),
    "cnn_ce_mean": (_cnn, nn.CrossEntropyLoss(), (1, 6, 6), "classes"),
}


def _problem(name):
    factory, loss_fn, in_shape, kind = PROBLEMS[name]
    torch.manual_seed(0)
    model = factory().double().eval()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(6, *in_shape, generator=g, dtype=torch.float64)
    if kind == "classes":
        y = torch.randint(0, 3, (6,), generator=g)
    else:
        y = torch.randn(6, 3, generator=g, dtype=torch.float64)
    return model, loss_fn, X, y


def _backpack(model, loss_fn, X, y, extension, field):
    model = backpack.extend(copy.deepcopy(model))
    loss_fn = backpack.extend(copy.deepcopy(loss_fn))
    # an input that requires grad keeps torch's full-backward-hook warning away
    loss = loss_fn(model(X.clone().requires_grad_()), y)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # BackPACK's AvgPool builds float kernels
    try:
        with backpack.backpack(extension):
            loss.backward()
    finally:
        torch.set_default_dtype(default)
    return [getattr(p, field) for p in model.parameters()]


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_exact_hessian_diagonal_matches_diag_hessian(name):
    model, loss_fn, X, y = _problem(name)
    theirs = _backpack(model, loss_fn, X, y, DiagHessian(), "diag_h")
    ours = cd.exact_hessian_diagonal(model, loss_fn, [(X, y)])
    assert rel_error(flat(ours), flat(theirs)) < RTOL_FLOAT64
    hs = cd.hesscale(model, loss_fn, [(X, y)])  # last layer exact
    assert rel_error(flat(hs[-2:]), flat(theirs[-2:])) < RTOL_FLOAT64


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_exact_ggn_diagonal_matches_diag_ggn_exact(name):
    model, loss_fn, X, y = _problem(name)
    theirs = _backpack(model, loss_fn, X, y, DiagGGNExact(), "diag_ggn_exact")
    ours = cd.exact_ggn_diagonal(model, loss_fn, [(X, y)])
    assert rel_error(flat(ours), flat(theirs)) < RTOL_FLOAT64


def test_mc_ggn_diagonal_agrees_with_diag_ggn_mc_in_distribution():
    """Different random labels, so compare both estimates with the exact GGN."""
    model, loss_fn, X, y = _problem("mlp_ce_mean")
    exact = flat(cd.exact_ggn_diagonal(model, loss_fn, [(X, y)]))
    torch.manual_seed(0)
    theirs = flat(
        _backpack(model, loss_fn, X, y, DiagGGNMC(mc_samples=2000), "diag_ggn_mc")
    )
    ours = flat(cd.mc_ggn_diagonal(model, loss_fn, [(X, y)], mc_samples=2000))
    assert rel_error(theirs, exact) < 0.1
    assert rel_error(ours, exact) < 0.1

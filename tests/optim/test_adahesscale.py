"""AdaHesScale: the update formula, the training-loop contract, and training."""

import copy
import math

import pytest
import torch
from torch import nn

from curvlab.diagonal import hesscale_batch
from curvlab.optim import AdaHesScale, AdaHesScaleGN


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    return model, nn.CrossEntropyLoss(), X, y


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_update_equals_formula(weight_decay):
    """Three steps with given gradients and diagonals, checked by hand."""
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    lr, (b1, b2), eps = 0.1, (0.8, 0.9), 1e-3
    opt = AdaHesScale([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)
    theta = p.detach().clone()
    m = torch.zeros(3, dtype=torch.float64)
    v = torch.zeros(3, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for t in range(1, 4):
        grad = torch.randn(3, generator=g, dtype=torch.float64)
        diag = torch.randn(3, generator=g, dtype=torch.float64)  # may be negative
        p.grad = grad.clone()
        opt.step(diagonals=[diag])
        grad_t = grad + weight_decay * theta
        diag_t = diag + weight_decay
        m = b1 * m + (1 - b1) * grad_t
        v = b2 * v + (1 - b2) * diag_t**2
        theta = theta - lr / (1 - b1**t) * m / ((v / (1 - b2**t)).sqrt() + eps)
        assert torch.allclose(p.detach(), theta, rtol=1e-14, atol=0)
    assert opt.state[p]["step"] == 3


def test_batch_dict_and_list_inputs_agree():
    model, loss_fn, X, y = _problem()
    models = [copy.deepcopy(model) for _ in range(3)]
    optimizers = [AdaHesScale(m.parameters(), lr=0.01) for m in models]
    for _ in range(3):
        batches = []
        for m, opt in zip(models, optimizers, strict=True):
            opt.zero_grad()
            batches.append(hesscale_batch(m, loss_fn, X, y))
        optimizers[0].step(diagonals=batches[0])
        optimizers[1].step(
            diagonals=dict(zip(batches[1].params, batches[1].diagonals, strict=True))
        )
        optimizers[2].step(diagonals=batches[2].diagonals)
    for a, b, c in zip(*(m.parameters() for m in models), strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


def test_closure_returning_a_batch():
    model, loss_fn, X, y = _problem()
    twin = copy.deepcopy(model)
    opt = AdaHesScale(model.parameters(), lr=0.01)
    twin_opt = AdaHesScale(twin.parameters(), lr=0.01)

    def closure():
        opt.zero_grad()
        return hesscale_batch(model, loss_fn, X, y)

    loss = opt.step(closure)
    twin_opt.zero_grad()
    batch = hesscale_batch(twin, loss_fn, X, y)
    twin_opt.step(diagonals=batch)
    assert torch.equal(loss, batch.loss)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("optimizer_class", [AdaHesScale, AdaHesScaleGN])
def test_training_decreases_the_loss(optimizer_class):
    model, loss_fn, X, y = _problem()
    opt = optimizer_class(model.parameters(), lr=0.01)
    first = loss_fn(model(X), y).item()
    losses = []
    for _ in range(60):
        opt.zero_grad()
        batch = hesscale_batch(model, loss_fn, X, y, variant=opt.variant)
        opt.step(diagonals=batch)
        losses.append(batch.loss.item())
    final = loss_fn(model(X), y).item()
    assert math.isfinite(final)
    assert final < 0.7 * first


def test_frozen_parameters_and_groups():
    model, loss_fn, X, y = _problem()
    model[0].bias.requires_grad_(False)
    frozen = model[0].bias.detach().clone()
    opt = AdaHesScale(
        [
            {"params": [model[0].weight, model[0].bias]},
            {"params": model[2].parameters(), "lr": 0.0},
        ],
        lr=0.01,
    )
    last = [p.detach().clone() for p in model[2].parameters()]
    first = model[0].weight.detach().clone()
    opt.zero_grad()
    batch = hesscale_batch(model, loss_fn, X, y)  # trainable parameters only
    assert len(batch.diagonals) == 3
    opt.step(diagonals=batch)
    assert torch.equal(model[0].bias, frozen)
    assert not torch.equal(model[0].weight, first)
    for p, q in zip(model[2].parameters(), last, strict=True):
        assert torch.equal(p, q)


def test_errors():
    model, loss_fn, X, y = _problem()
    opt = AdaHesScaleGN(model.parameters())
    opt.zero_grad()
    batch = hesscale_batch(model, loss_fn, X, y)  # variant "hessian"
    with pytest.raises(ValueError, match="needs the Hessian diagonal"):
        opt.step()
    with pytest.raises(ValueError, match=r"variant='ggn'|'ggn' diagonal"):
        opt.step(diagonals=batch)
    with pytest.raises(ValueError, match="one tensor per optimizer parameter"):
        opt.step(diagonals=batch.diagonals[:2])
    with pytest.raises(ValueError, match="No diagonal"):
        opt.step(diagonals={next(model.parameters()): batch.diagonals[0]})
    with pytest.raises(ValueError, match="shape"):
        opt.step(diagonals=[d.reshape(-1) for d in batch.diagonals])
    with pytest.raises(TypeError, match="HesScaleBatch"):
        opt.step(diagonals=batch.diagonals[0])
    for kwargs in (
        {"lr": -1.0},
        {"eps": -1.0},
        {"weight_decay": -1.0},
        {"betas": (1.0, 0.9)},
    ):
        with pytest.raises(ValueError, match="must be"):
            AdaHesScale(model.parameters(), **kwargs)

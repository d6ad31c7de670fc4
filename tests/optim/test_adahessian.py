"""AdaHessian: hand-computed first steps, the Hutchinson diagonal, the loop contract."""

import copy
import math

import pytest
import torch
from torch import nn

from curvlab.optim import AdaHessian, hutchinson_hessian_diagonal

F64 = torch.float64


def _quadratic(A, b):
    """L(theta) = theta^T A theta / 2 + b^T theta: gradient A theta + b, Hessian A."""
    return lambda theta: 0.5 * theta @ A @ theta + b @ theta


def _probe(generator, shape):
    bits = torch.randint(0, 2, shape, generator=generator)
    return bits.to(F64) * 2 - 1


@pytest.mark.parametrize(
    ("weight_decay", "power"), [(0.0, 1.0), (0.1, 1.0), (0.0, 0.5)]
)
def test_first_steps_equal_the_published_update(weight_decay, power):
    """Three steps on a quadratic with a full Hessian, checked by hand.

    The probes are replayed from a clone of the optimizer's generator, so
    D_t = z_t * (A z_t) is known exactly (AdaHessian Alg. 1, Eqs. 9-12).
    """
    g = torch.Generator().manual_seed(1)
    M = torch.randn(4, 4, generator=g, dtype=F64)
    A, b = M @ M.T + torch.eye(4, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    loss_fn = _quadratic(A, b)
    theta0 = torch.randn(4, generator=g, dtype=F64)
    p = nn.Parameter(theta0.clone())
    lr, (b1, b2), eps = 0.1, (0.8, 0.9), 1e-3
    probes = torch.Generator().manual_seed(7)
    replay = torch.Generator().manual_seed(7)
    opt = AdaHessian(
        [p],
        lr=lr,
        betas=(b1, b2),
        eps=eps,
        weight_decay=weight_decay,
        hessian_power=power,
        generator=probes,
    )
    theta, m, v = theta0.clone(), torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64)
    for t in range(1, 4):
        opt.zero_grad()
        loss = opt.step(lambda: loss_fn(p))
        assert torch.allclose(loss, loss_fn(theta), rtol=1e-14)
        grad = A @ theta + b
        z = _probe(replay, (4,))
        D = z * (A @ z)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * D**2
        denom = ((v / (1 - b2**t)).sqrt()) ** power + eps
        theta = theta - lr * (m / (1 - b1**t) / denom + weight_decay * theta)
        assert torch.allclose(p.detach(), theta, rtol=1e-13, atol=0)
        assert torch.allclose(p.grad, grad, rtol=1e-14)
    assert opt.state[p]["step"] == 3


def test_first_step_with_a_diagonal_hessian_is_the_newton_sign_step():
    """With a diagonal Hessian every probe gives D = diag(A) exactly.

    The first step (bias-corrected m = g, sqrt(v) = |diag A|) is then
    theta - lr * g / (|diag A| + eps), whatever the probe.
    """
    a = torch.tensor([4.0, -0.5, 2.0], dtype=F64)  # an indefinite Hessian
    b = torch.tensor([1.0, 1.0, -3.0], dtype=F64)
    theta0 = torch.tensor([0.5, 2.0, -1.0], dtype=F64)
    p = nn.Parameter(theta0.clone())
    opt = AdaHessian([p], lr=0.5, eps=1e-4)
    opt.step(lambda: _quadratic(torch.diag(a), b)(p))
    grad = a * theta0 + b
    expected = theta0 - 0.5 * grad / (a.abs() + 1e-4)
    assert torch.allclose(p.detach(), expected, rtol=1e-14, atol=0)


def test_convolution_kernels_are_averaged_over_their_spatial_entries():
    """Eq. 10: each (out, in) block of a kernel takes the mean of its D entries."""
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 2, 2)
    a = torch.rand(shape, generator=g, dtype=F64) + 0.5  # diagonal Hessian
    theta0 = torch.randn(shape, generator=g, dtype=F64)
    p = nn.Parameter(theta0.clone())
    opt = AdaHessian([p], lr=0.1, eps=0.0)
    opt.step(lambda: 0.5 * (a * p * p).sum())
    averaged = a.mean(dim=(2, 3), keepdim=True)
    expected = theta0 - 0.1 * (a * theta0) / averaged
    assert torch.allclose(p.detach(), expected, rtol=1e-14, atol=0)


def _mlp_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16, 3, generator=g, dtype=F64)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
    return model, nn.CrossEntropyLoss(), X, y


def test_hutchinson_diagonal_matches_the_dense_hessian_diagonal():
    """The mean of z * Hz over probes tends to diag(H) of torch.func.hessian."""
    model, loss_fn, X, y = _mlp_problem()
    names = [name for name, _ in model.named_parameters()]
    params = dict(model.named_parameters())

    def flat_loss(flat):
        chunks, start = {}, 0
        for name in names:
            n = params[name].numel()
            chunks[name] = flat[start : start + n].view_as(params[name])
            start += n
        return loss_fn(torch.func.functional_call(model, chunks, (X,)), y)

    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    dense = torch.diagonal(torch.func.hessian(flat_loss)(flat))
    grads = torch.autograd.grad(
        loss_fn(model(X), y), list(params.values()), create_graph=True
    )
    rng = torch.Generator().manual_seed(0)
    num_probes = 400
    samples = torch.stack(
        [
            torch.cat(
                [
                    d.reshape(-1)
                    for d in hutchinson_hessian_diagonal(
                        grads, list(params.values()), generator=rng, retain_graph=True
                    )
                ]
            )
            for _ in range(num_probes)
        ]
    )
    mean = samples.mean(0)
    std_error = samples.std(0) / math.sqrt(num_probes)
    # unbiased: every entry within 5 standard errors (entries with zero
    # variance, e.g. where the Hessian row has no off-diagonal entries, exactly)
    assert torch.all((mean - dense).abs() <= 5 * std_error + 1e-12)
    # the last layer's bias block of a CE loss is the Hessian diag(p) - pp^T
    # summed over samples: off-diagonal, so single probes do vary
    assert samples.std(0).max() > 0


def test_backward_with_create_graph_equals_the_closure():
    model, loss_fn, X, y = _mlp_problem()
    twin = copy.deepcopy(model)
    a = AdaHessian(model.parameters(), lr=0.01, generator=torch.Generator())
    b = AdaHessian(twin.parameters(), lr=0.01, generator=torch.Generator())
    a.generator.manual_seed(3)
    b.generator.manual_seed(3)
    for _ in range(3):
        a.zero_grad()
        a.step(lambda: loss_fn(model(X), y))
        b.zero_grad()
        grads = torch.autograd.grad(
            loss_fn(twin(X), y), list(twin.parameters()), create_graph=True
        )
        for p, g in zip(twin.parameters(), grads, strict=True):
            p.grad = g  # what loss.backward(create_graph=True) leaves
        b.step()
        assert all(not p.grad.requires_grad for p in twin.parameters())
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-14, atol=0)


def test_training_decreases_the_loss_and_frozen_parameters_stay():
    model, loss_fn, X, y = _mlp_problem()
    model[0].bias.requires_grad_(False)
    frozen = model[0].bias.detach().clone()
    opt = AdaHessian(model.parameters(), lr=0.05, generator=torch.Generator())
    first = loss_fn(model(X), y).item()
    for _ in range(60):
        opt.zero_grad()
        opt.step(lambda: loss_fn(model(X), y))
    assert loss_fn(model(X), y).item() < 0.7 * first
    assert torch.equal(model[0].bias, frozen)


def test_errors():
    model, loss_fn, X, y = _mlp_problem()
    opt = AdaHessian(model.parameters())
    loss_fn(model(X), y).backward()  # no graph
    with pytest.raises(ValueError, match="create_graph=True"):
        opt.step()
    with pytest.raises(ValueError, match="scalar loss"):
        opt.step(lambda: model(X))
    with pytest.raises(ValueError, match="carries no graph"):
        hutchinson_hessian_diagonal(
            [p.grad for p in model.parameters()], list(model.parameters())
        )
    with pytest.raises(ValueError, match="equal lengths"):
        hutchinson_hessian_diagonal([], list(model.parameters()))
    for kwargs in (
        {"lr": -1.0},
        {"eps": -1.0},
        {"weight_decay": -1.0},
        {"betas": (1.0, 0.9)},
        {"hessian_power": 1.5},
    ):
        with pytest.raises(ValueError, match="must"):
            AdaHessian(model.parameters(), **kwargs)

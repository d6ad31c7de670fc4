"""Dense float64 ground truth built with torch.func, independent of curvlab's code."""

from __future__ import annotations

import torch
from torch.func import functional_call, hessian, jacrev


def _split(flat, names, shapes):
    out, start = {}, 0
    for n, s in zip(names, shapes, strict=True):
        size = int(torch.Size(s).numel())
        out[n] = flat[start : start + size].reshape(s)
        start += size
    return out


def _setup(model, names):
    named = dict(model.named_parameters())
    params = [named[n].detach() for n in names]
    shapes = [p.shape for p in params]
    return torch.cat([p.reshape(-1) for p in params]), shapes


def _weights(loss_fn, data):
    N = sum(X.shape[0] for X, _ in data)
    if loss_fn.reduction == "mean":
        return [X.shape[0] / N for X, _ in data], N
    return [1.0 for _ in data], N


@torch.no_grad()
def dense_hessian(model, loss_fn, data, names):
    flat, shapes = _setup(model, names)
    weights, _ = _weights(loss_fn, data)

    def risk(theta):
        p = _split(theta, names, shapes)
        return sum(
            w * loss_fn(functional_call(model, p, (X,)), y)
            for w, (X, y) in zip(weights, data, strict=True)
        )

    return hessian(risk)(flat)


def _batch_jacobian(model, X, names, shapes, flat):
    def out(theta):
        return functional_call(model, _split(theta, names, shapes), (X,))

    output = out(flat)
    J = jacrev(out)(flat)  # (*output.shape, D)
    return output.detach(), J.reshape(-1, flat.numel())


@torch.no_grad()
def dense_ggn(model, loss_fn, data, names):
    flat, shapes = _setup(model, names)
    weights, _ = _weights(loss_fn, data)
    total = 0
    for w, (X, y) in zip(weights, data, strict=True):
        output, J = _batch_jacobian(model, X, names, shapes, flat)
        H = hessian(lambda o, y=y: loss_fn(o, y))(output)
        H = H.reshape(output.numel(), output.numel())
        total = total + w * J.T @ H @ J
    return total


def _terms_per_sample(loss_fn, output):
    if isinstance(loss_fn, torch.nn.CrossEntropyLoss):
        return output[0].numel() // output.shape[1]
    return output[0].numel()


@torch.no_grad()
def dense_empirical_fisher(model, loss_fn, data, names):
    """c * sum_n g_n g_n^T with per-sample gradients of the summed per-sample loss."""
    flat, shapes = _setup(model, names)
    summed = type(loss_fn)(reduction="sum")
    _, N = _weights(loss_fn, data)
    total, T = 0, None
    for X, y in data:
        for n in range(X.shape[0]):

            def loss_n(theta, n=n, X=X, y=y):
                p = _split(theta, names, shapes)
                return summed(functional_call(model, p, (X[n : n + 1],)), y[n : n + 1])

            g = torch.func.grad(loss_n)(flat)
            total = total + torch.outer(g, g)
            if T is None:
                T = _terms_per_sample(loss_fn, model(X[:1]))
    return total / (N * T) if loss_fn.reduction == "mean" else total

"""The gradient covariance against dense per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad

import curvlab as cl
from _compare import compare_matmat
from _truth import dense_empirical_fisher
from conftest import CASES, RTOL_FLOAT64, param_names


@torch.no_grad()
def per_sample_gradients(model, loss_fn, data, names):
    """``(N, D)`` gradients of each sample's loss, summed over its terms."""
    summed = type(loss_fn)(reduction="sum")
    named = dict(model.named_parameters())
    params = {n: named[n].detach() for n in names}
    rows = []
    for X, y in data:
        for n in range(X.shape[0]):

            def loss(p, n=n, X=X, y=y):
                out = functional_call(model, {**named, **p}, (X[n : n + 1],))
                return summed(out, y[n : n + 1])

            g = grad(loss)(params)
            rows.append(torch.cat([g[k].reshape(-1) for k in names]))
    return torch.stack(rows)


def _normalization(case):
    """``c``: 1/(N T) for mean, 1 for sum."""
    if case.loss_fn.reduction == "sum":
        return 1.0
    N = sum(X.shape[0] for X, _ in case.data)
    out = case.model(case.data[0][0][:1])
    T = 1 if isinstance(case.loss_fn, torch.nn.CrossEntropyLoss) else out.numel()
    return 1.0 / (N * T)


def test_centered_covariance_matches_dense(case):
    names = param_names(case)
    G = per_sample_gradients(case.model, case.loss_fn, case.data, names)
    centered = G - G.mean(0)
    dense = _normalization(case) * centered.T @ centered
    op = cl.GradientCovarianceOperator(
        case.model, case.loss_fn, case.data, params=case.params
    )
    assert op.is_psd
    compare_matmat(op, dense, RTOL_FLOAT64)


def test_uncentered_is_the_empirical_fisher():
    case = CASES[0]
    dense = dense_empirical_fisher(
        case.model, case.loss_fn, case.data, param_names(case)
    )
    op = cl.GradientCovarianceOperator(
        case.model, case.loss_fn, case.data, centered=False
    )
    compare_matmat(op, dense, RTOL_FLOAT64)


def test_unbiased_and_block_and_max_cols():
    case = CASES[0]  # cross-entropy, mean: c = 1/N
    names = param_names(case)
    G = per_sample_gradients(case.model, case.loss_fn, case.data, names)
    op = cl.GradientCovarianceOperator(
        case.model, case.loss_fn, case.data, unbiased=True, max_cols=2
    )
    V = torch.randn(op.shape[0], 5, dtype=torch.float64)
    expected = torch.cov(G.T) @ V  # 1/(N-1)
    assert torch.allclose(op @ V, expected, rtol=1e-10, atol=1e-14)
    block = op.block(["2.weight"])
    sub = torch.cov(G[:, 24:36].T)  # after 0.weight (20) and 0.bias (4)
    W = torch.randn(12, 2, dtype=torch.float64)
    assert torch.allclose(block @ W, sub @ W, rtol=1e-10, atol=1e-14)


def test_covariance_bad_input():
    case = CASES[0]
    with pytest.raises(ValueError, match="needs centered=True"):
        cl.GradientCovarianceOperator(
            case.model, case.loss_fn, case.data, centered=False, unbiased=True
        )
    X, y = case.data[0]
    with pytest.raises(ValueError, match="needs N >= 2. Got N=1"):
        cl.GradientCovarianceOperator(
            case.model, case.loss_fn, [(X[:1], y[:1])], unbiased=True
        )

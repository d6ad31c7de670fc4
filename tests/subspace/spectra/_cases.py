"""A small problem with its Hessian and GGN, and dense comparisons for the spectra."""

import torch
from torch import nn

RTOL = 1e-10


def problem(seed=0):
    """A two-layer tanh MLP with cross-entropy on 11 samples in two batches."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    X = torch.randn(11, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (11,), generator=g)
    data = [(X[:6], y[:6]), (X[6:], y[6:])]
    return model, nn.CrossEntropyLoss(), data


def _slices(op):
    """Index range of every parameter in the flat vector."""
    out, start = {}, 0
    for name, shape in zip(op.param_names, op.param_shapes, strict=True):
        out[name] = range(start, start + shape.numel())
        start += shape.numel()
    return out


def dense_block(dense, op, names):
    """The diagonal block of a dense matrix of ``op`` on the parameters ``names``."""
    slices = _slices(op)
    index = torch.tensor([i for n in names for i in slices[n]])
    return dense[index][:, index]


def close(got, want, rtol=RTOL):
    """Assert ``got`` equals ``want`` up to ``rtol`` of ``max(1, max|want|)``."""
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= rtol * scale, (got, want)

"""The HesScale computational-cost study: tiny runs, budgets and step functions."""

import math

import pytest
import torch
from torch import nn

from curvlab.experiments.hesscale_cost import (
    COST_METHODS,
    UNIT,
    cost_model,
    hesscale_cost,
    step_functions,
)


def test_tiny_run_times_every_method():
    result = hesscale_cost(depths=(0, 2), width=8, repeats=3)
    assert result.depths == (0, 2)
    assert result.methods == COST_METHODS
    assert result.num_params == (64 * 8 + 8 * 100, 64 * 8 + 2 * 64 + 8 * 100)
    for name in (UNIT, *COST_METHODS):
        assert [len(t) for t in result.seconds[name]] == [3, 3]
    for method in COST_METHODS:
        assert result.skipped[method] == ["", ""]
        multiples = result.multiples(method)
        assert all(m is not None and math.isfinite(m) and m > 0 for m in multiples)
    assert result.multiples(UNIT) == [1.0, 1.0]
    assert result.config["width"] == 8


def test_methods_over_budget_are_skipped():
    result = hesscale_cost(
        depths=(1, 2), width=4, repeats=2, methods=["SGD"], max_step_seconds=1e-9
    )
    assert result.methods == ("SGD",)
    assert result.median_seconds("SGD") == [None, None]
    assert result.multiples("SGD") == [None, None]
    first, second = result.skipped["SGD"]
    assert "warm-up" in first
    assert "smaller depth" in second
    assert all(len(t) == 2 for t in result.seconds[UNIT])


def test_methods_that_raise_are_skipped_with_the_reason():
    # 4100 features exceed Hessian backpropagation's MAX_FEATURES (4096), and
    # D = 64 * 4100 + 4100 * 100 is above the Hessian-vector-product path's
    # max_dim (20000): the exact Hessian diagonal refuses
    result = hesscale_cost(
        depths=(0, 1), width=4100, repeats=1, methods=["exact Hessian diag."]
    )
    first, second = result.skipped["exact Hessian diag."]
    assert first.startswith("ValueError: exact_hessian_diagonal needs D=672400")
    assert second == "skipped at a smaller depth"
    assert result.multiples("exact Hessian diag.") == [None, None]


def test_every_step_updates_the_parameters():
    model = cost_model(1, 6)
    steps = step_functions(model, nn.MSELoss(), lr=1e-2)
    X, y = torch.randn(2, 64), torch.randn(2, 100)
    for name in COST_METHODS:
        before = [p.detach().clone() for p in model.parameters()]
        steps[name](X, y)
        changed = any(
            not torch.equal(a, p)
            for a, p in zip(before, model.parameters(), strict=True)
        )
        assert changed, name
    before = [p.detach().clone() for p in model.parameters()]
    steps[UNIT](X, y)
    assert all(
        torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)
    )
    assert all(p.grad is not None for p in model.parameters())


def test_cost_model_has_no_biases():
    model = cost_model(3, 16, seed=1)
    assert all(m.bias is None for m in model if isinstance(m, nn.Linear))
    assert sum(isinstance(m, nn.Tanh) for m in model) == 3
    assert model(torch.randn(1, 64)).shape == (1, 100)
    again = cost_model(3, 16, seed=1)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.parameters(), again.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"methods": ["LBFGS"]},
        {"depths": ()},
        {"depths": (-1,)},
        {"width": 0},
        {"repeats": 0},
        {"batch_size": 0},
        {"max_step_seconds": 0.0},
    ],
)
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        hesscale_cost(**{"depths": (1,), "width": 2, "repeats": 1, **kwargs})


def test_progress_counts_repeats_over_depths():
    events = []
    hesscale_cost(
        depths=(0, 1), width=2, repeats=2, methods=["SGD"], on_progress=events.append
    )
    assert [(e.kind, e.index, e.total) for e in events] == [
        ("phase", 0, 4),
        ("phase", 0, 4),
        ("repeat", 1, 4),
        ("repeat", 2, 4),
        ("phase", 2, 4),
        ("phase", 2, 4),
        ("repeat", 3, 4),
        ("repeat", 4, 4),
    ]
    assert [e.values["phase"] for e in events if e.kind == "phase"] == [
        "depth 0: warm-up",
        "depth 0: repeats",
        "depth 1: warm-up",
        "depth 1: repeats",
    ]

"""The HesScale approximation-quality study: tiny runs and dense checks."""

import math

import pytest
import torch
from torch import nn

from curvlab.diagonal import exact_hessian_diagonal
from curvlab.experiments.hesscale_quality import (
    METHODS,
    NORMALIZER,
    estimate_errors,
    hesscale_quality,
    layer_names,
    quality_model,
    sequential_hessian_diagonal,
)

TINY = {"seeds": (0, 1), "num_samples": 3, "width": 5, "epochs": 1}


@pytest.fixture(scope="module")
def tiny_result():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return hesscale_quality(**TINY)
    finally:
        torch.set_num_threads(threads)


def _tiny_problem(seed=0):
    torch.manual_seed(seed)
    model = quality_model(3, depth=2, in_features=4, num_classes=3, seed=seed)
    model = model.double()
    X = torch.randn(1, 4, dtype=torch.float64)
    y = torch.tensor([1])
    return model, nn.CrossEntropyLoss(), X, y


def _dense_hessian_diagonal(model, loss_fn, X, y):
    params = dict(model.named_parameters())
    names = list(params)
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
    shapes = [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]

    def loss(theta):
        pieces = theta.split(sizes)
        values = {
            n: t.reshape(s) for n, t, s in zip(names, pieces, shapes, strict=True)
        }
        return loss_fn(torch.func.functional_call(model, values, (X,)), y)

    H = torch.func.hessian(loss)(flat)
    return H, [
        d.reshape(s) for d, s in zip(H.diagonal().split(sizes), shapes, strict=True)
    ]


def test_hesscale_is_the_unit(tiny_result):
    result = tiny_result
    assert result.methods == METHODS
    assert result.normalized[NORMALIZER]["total"] == 1.0
    assert result.seeds == (0, 1)
    assert result.layers == ("layer 1", "layer 2", "layer 3", "layer 4")
    for method in METHODS:
        assert len(result.errors[method]) == 2
        assert all(len(run) == 4 for run in result.errors[method])
        layers = sum(result.normalized[method][layer] for layer in result.layers)
        assert layers == pytest.approx(result.normalized[method]["total"], rel=1e-12)
    # the zero estimate's error is sum |diag H| > 0
    assert result.normalized["zero"]["total"] > 0
    assert all(math.isfinite(result.normalized[m]["total"]) for m in METHODS)
    assert result.ranking()[0] == min(
        METHODS, key=lambda m: result.normalized[m]["total"]
    )
    assert result.config["num_params"] == 64 * 5 + 5 + 2 * (5 * 5 + 5) + 5 * 10 + 10


def test_hesscale_last_layer_is_exact(tiny_result):
    # HesScale starts from the exact output Hessian, so its last layer is exact.
    raw = tiny_result.mean_errors()
    assert raw["HesScale"]["layer 4"] == pytest.approx(0.0, abs=1e-12)
    assert raw["HesScale"]["total"] > 0
    assert raw["BL89"]["layer 4"] > 0


def test_seed_ratios_average_to_the_normalised_total(tiny_result):
    result = tiny_result
    assert result.seed_ratios[NORMALIZER] == [1.0, 1.0]
    for method in METHODS:
        ratios = result.seed_ratios[method]
        assert min(ratios) <= result.normalized[method]["total"] * (1 + 1e-12)
        assert max(ratios) >= result.normalized[method]["total"] * (1 - 1e-12)


def test_errors_against_a_dense_hessian():
    model, loss_fn, X, y = _tiny_problem()
    H, diagonal = _dense_hessian_diagonal(model, loss_fn, X, y)
    errors = estimate_errors(model, loss_fn, X, y, seed=7)
    assert set(errors) == {*METHODS, "exact"}
    assert errors["exact"] == pytest.approx([0.0] * len(diagonal), abs=1e-12)
    zero = [float(d.abs().sum()) for d in diagonal]
    assert errors["zero"] == pytest.approx(zero, rel=1e-10)
    assert all(p.grad is None for p in model.parameters())
    # squared gradient
    grads = torch.autograd.grad(loss_fn(model(X), y), list(model.parameters()))
    g2 = [float((d - g**2).abs().sum()) for d, g in zip(diagonal, grads, strict=True)]
    assert errors["g²"] == pytest.approx(g2, rel=1e-10)
    # Hutchinson with one Rademacher vector, |error| = |diag H - v * (H v)|
    generator = torch.Generator().manual_seed(7)
    v = 2 * torch.randint(0, 2, (H.shape[0],), generator=generator).double() - 1
    estimate = (v * (H @ v)).split([d.numel() for d in diagonal])
    hutchinson = [
        float((d.reshape(-1) - e).abs().sum())
        for d, e in zip(diagonal, estimate, strict=True)
    ]
    assert errors["Hutchinson(1)"] == pytest.approx(hutchinson, rel=1e-10)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.Sigmoid, nn.ReLU])
@pytest.mark.parametrize(
    "loss_fn", [nn.CrossEntropyLoss(), nn.MSELoss(reduction="sum")]
)
def test_sequential_hessian_diagonal_is_exact(activation, loss_fn):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 5),
        activation(),
        nn.Linear(5, 3, bias=False),
        activation(),
        nn.Linear(3, 3),
    ).double()
    X = torch.randn(3, 4, dtype=torch.float64)
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        y = torch.tensor([0, 2, 1])
    else:
        y = torch.randn(3, 3, dtype=torch.float64)
    fast = sequential_hessian_diagonal(model, loss_fn, X, y)
    reference = exact_hessian_diagonal(model, loss_fn, [(X, y)])
    assert len(fast) == len(reference) == 5
    for a, b in zip(fast, reference, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)


def test_sequential_hessian_diagonal_declines_other_models():
    model = nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2)).double()
    X, y = torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 1])
    assert sequential_hessian_diagonal(model, nn.CrossEntropyLoss(), X, y) is None


def test_layer_names_group_weight_and_bias():
    names, index = layer_names(quality_model(4, depth=2))
    assert names == ["layer 1", "layer 2", "layer 3"]
    assert index == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seeds": ()},
        {"seeds": (0, 0)},
        {"num_samples": 0},
        {"num_samples": 5000},
        {"width": 0},
        {"epochs": -1},
        {"lr": 0.0},
    ],
)
def test_rejects_bad_arguments(kwargs):
    options = {"seeds": (0,), "num_samples": 1, "width": 2, "epochs": 0, **kwargs}
    with pytest.raises(ValueError):
        hesscale_quality(**options)


def test_progress_counts_samples_over_seeds():
    events = []
    options = {"num_samples": 2, "width": 2, "epochs": 0}
    hesscale_quality(seeds=(0, 1), on_progress=events.append, **options)
    assert [(e.kind, e.index, e.total) for e in events] == [
        ("phase", 0, 4),
        ("sample", 1, 4),
        ("sample", 2, 4),
        ("phase", 2, 4),
        ("sample", 3, 4),
        ("sample", 4, 4),
    ]
    assert events[3].values["phase"] == "seed 1: samples"

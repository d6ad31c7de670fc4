r"""How well do diagonal curvature estimates match the exact Hessian diagonal?

The approximation-quality study of HesScale (Elsayed & Mahmood, 2022, arXiv
2210.11639; Elsayed, Farrahi, Dangel & Mahmood, ICML 2024, arXiv 2406.03276),
on scikit-learn's 8x8 digits instead of MNIST.

A tanh MLP (64-64-64-64-10 by default: the paper's 784-64-64-64-10 with the
digits' 64 inputs) is trained for a few epochs with SGD on cross-entropy; then,
on each of the first ``num_samples`` train examples alone (batch size 1), every
estimator's error against the exact Hessian diagonal is measured per parameter,

.. math::
    e_{\text{method}, p} = \sum_i \bigl|\operatorname{diag}(H)_{p,i}
        - \hat h_{\text{method}, p, i}\bigr| ,

summed over the weight and bias of each layer, and over all layers for the
total. Errors are averaged over samples and seeds and *normalised by
HesScale's mean total error* (as in the paper's plot code: the mean of a
method's totals over the mean of HesScale's), so HesScale's total is 1 and
each layer's entry is its share on that scale.

Estimators (:data:`METHODS`):

- ``HesScale``, ``HesScaleGN``, ``BL89``: the backpropagated diagonals of
  :func:`curvlab.diagonal.hesscale_batch` with ``variant`` ``"hessian"``,
  ``"ggn"`` and ``"bl89"``;
- ``GGN-MC(1)``: :func:`curvlab.diagonal.mc_ggn_diagonal` with one sampled label;
- ``Hutchinson(1)``: :math:`v \odot Hv` with one Rademacher vector :math:`v`
  (the unbiased estimator; AdaHessian's code uses :math:`|Hv|` instead);
- ``g²``: the squared gradient;
- ``zero``: the all-zeros estimate, whose error is
  :math:`\sum |\operatorname{diag}(H)|`.

The exact diagonal comes from :func:`curvlab.diagonal.exact_hessian_diagonal`,
which backpropagates the per-sample Hessian for MLPs (exact, and fast at these
widths) and falls back to ``D`` Hessian-vector products for other models.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from curvlab._checks import check_int
from curvlab.diagonal import exact_hessian_diagonal, hesscale_batch, mc_ggn_diagonal
from curvlab.operators import HessianOperator
from curvlab.problems.data import load_digits
from curvlab.problems.models import mlp
from curvlab.runs.stage import StageEvent

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_LR",
    "DEFAULT_TRAIN_BATCH_SIZE",
    "METHODS",
    "NORMALIZER",
    "QualityResult",
    "estimate_errors",
    "hesscale_quality",
    "layer_names",
    "quality_model",
    "sequential_hessian_diagonal",
]

_HESSCALE_VARIANTS = {"HesScale": "hessian", "HesScaleGN": "ggn", "BL89": "bl89"}
#: Estimators compared, in table order.
METHODS = (*_HESSCALE_VARIANTS, "GGN-MC(1)", "Hutchinson(1)", "g²", "zero")
#: The estimator whose mean total error is the unit.
NORMALIZER = "HesScale"
#: Training before the measurements (HesScale's setup: 2 epochs of SGD, lr 1e-3,
#: batch size 64).
DEFAULT_EPOCHS = 2
DEFAULT_LR = 1e-3
DEFAULT_TRAIN_BATCH_SIZE = 64


@dataclass(frozen=True)
class QualityResult:
    """Errors of each estimator against the exact Hessian diagonal.

    Attributes:
        methods: Estimator names, :data:`METHODS` order.
        layers: Layer names (``"layer 1"`` is the input layer).
        seeds: The seeds, one run each.
        num_samples: Samples (batch size 1) measured per seed.
        errors: ``errors[method][s][l]``: L1 error of layer ``l`` (weight and
            bias), averaged over the samples of seed ``seeds[s]``.
        normalized: ``normalized[method][column]`` for each layer name and
            ``"total"``: the mean error over seeds and samples divided by
            HesScale's mean total error. HesScale's ``"total"`` is 1.
        seed_ratios: ``seed_ratios[method][s]``: the method's total error over
            HesScale's total error on seed ``seeds[s]`` alone.
        config: The settings (architecture, training, data, dtype).
    """

    methods: tuple[str, ...]
    layers: tuple[str, ...]
    seeds: tuple[int, ...]
    num_samples: int
    errors: dict[str, list[list[float]]]
    normalized: dict[str, dict[str, float]]
    seed_ratios: dict[str, list[float]]
    config: dict = field(default_factory=dict)

    def mean_errors(self) -> dict[str, dict[str, float]]:
        """``{method: {layer or "total": mean L1 error}}``, not normalised."""
        return _mean_errors(self.errors, self.layers)

    def ranking(self) -> list[str]:
        """Return the estimators sorted by normalised total error, best first."""
        return sorted(self.methods, key=lambda m: self.normalized[m]["total"])


def quality_model(
    width: int = 64,
    *,
    depth: int = 3,
    in_features: int = 64,
    num_classes: int = 10,
    seed: int = 0,
) -> nn.Sequential:
    """Build the study's float32 tanh MLP: ``depth`` hidden layers of ``width``.

    ``seed`` seeds PyTorch's default initialisation of ``nn.Linear``.

    Example:
        >>> sum(p.numel() for p in quality_model().parameters())
        13130
    """
    return mlp((in_features, *[width] * depth, num_classes), "tanh", seed=seed)


def layer_names(model: nn.Module) -> tuple[list[str], list[int]]:
    """Group a model's trainable parameters by the module that holds them.

    Returns:
        The layer names ``"layer 1"``, ``"layer 2"``, ... in parameter order, and
        for each parameter the index of its layer.
    """
    owners = [
        name.rpartition(".")[0]
        for name, param in model.named_parameters()
        if param.requires_grad
    ]
    prefixes = list(dict.fromkeys(owners))
    index = [prefixes.index(owner) for owner in owners]
    return [f"layer {i + 1}" for i in range(len(prefixes))], index


def _hutchinson(
    model: nn.Module, loss_fn: nn.Module, X: Tensor, y: Tensor, seed: int
) -> list[Tensor]:
    """One-sample Hutchinson diagonal ``v * (H v)`` with a Rademacher ``v``."""
    op = HessianOperator(
        model, loss_fn, [(X, y)], num_data=len(y), check_deterministic=False
    )
    generator = torch.Generator().manual_seed(seed)
    v = torch.randint(0, 2, (op.shape[0],), generator=generator).to(op.dtype)
    v = (2 * v - 1).to(op.device)
    estimate = v * (op @ v)
    shapes = op.param_shapes
    sizes = [s.numel() for s in shapes]
    return [e.reshape(s) for e, s in zip(estimate.split(sizes), shapes, strict=True)]


def sequential_hessian_diagonal(
    model: nn.Module, loss_fn: nn.Module, X: Tensor, y: Tensor
) -> list[Tensor] | None:
    """Exact Hessian diagonal of a Linear/Tanh/Sigmoid/ReLU MLP on one batch.

    :func:`curvlab.diagonal.exact_hessian_diagonal` (per-sample Hessian
    backpropagation, BackPACK's ``DiagHessian``, Dangel et al. 2020) on the batch
    ``(X, y)``, or ``None`` if the model is not an ``nn.Sequential`` of Linear,
    Tanh, Sigmoid and ReLU modules with all parameters trainable.
    """
    modules = list(model) if isinstance(model, nn.Sequential) else [model]
    supported = (nn.Linear, nn.Tanh, nn.Sigmoid, nn.ReLU)
    if not all(isinstance(m, supported) for m in modules) or not all(
        p.requires_grad for p in model.parameters()
    ):
        return None
    return exact_hessian_diagonal(model, loss_fn, [(X, y)])


def estimate_errors(
    model: nn.Module,
    loss_fn: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Measure every estimator's L1 error per parameter on one batch.

    ``model``'s ``.grad`` fields are left alone; ``seed`` seeds the Monte-Carlo
    label and the Rademacher vector.

    Returns:
        ``{method: [sum |diag(H) - estimate| for each trainable parameter]}``
        for every name in :data:`METHODS` and ``"exact"`` (all zeros, a check
        that the exact diagonal was compared with itself).
    """
    data = [(X, y)]
    exact = exact_hessian_diagonal(model, loss_fn, data)
    estimates: dict[str, list[Tensor]] = {}
    gradients = None
    for method, variant in _HESSCALE_VARIANTS.items():
        batch = hesscale_batch(
            model, loss_fn, X, y, variant=variant, accumulate_grad=False
        )
        estimates[method] = list(batch.diagonals)
        gradients = list(batch.gradients)
    estimates["GGN-MC(1)"] = list(
        mc_ggn_diagonal(model, loss_fn, data, mc_samples=1, seed=seed)
    )
    estimates["Hutchinson(1)"] = _hutchinson(model, loss_fn, X, y, seed)
    estimates["g²"] = [g**2 for g in gradients]
    estimates["zero"] = [torch.zeros_like(h) for h in exact]
    estimates["exact"] = list(exact)
    return {
        method: [float((h - e).abs().sum()) for h, e in zip(exact, values, strict=True)]
        for method, values in estimates.items()
    }


def _train(model, loss_fn, X, y, epochs: int, lr: float, batch_size: int, seed: int):
    """Plain SGD on shuffled mini-batches, in place."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator).to(X.device)
        for start in range(0, len(y), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(X[index]), y[index]).backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def hesscale_quality(
    *,
    seeds: Sequence[int] = (0, 1, 2),
    num_samples: int = 100,
    width: int = 64,
    depth: int = 3,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    train_batch_size: int = DEFAULT_TRAIN_BATCH_SIZE,
    dtype: torch.dtype = torch.float64,
    on_progress: Callable[[StageEvent], None] | None = None,
) -> QualityResult:
    """Run the approximation-quality study on the digits.

    For each seed: split the digits 80/20 (seeded), build :func:`quality_model`
    (seeded), train it with SGD for ``epochs`` epochs (mini-batch order seeded),
    then call :func:`estimate_errors` on each of the first ``num_samples`` train
    examples alone, in eval mode.

    Args:
        seeds: One run per seed.
        num_samples: Train examples measured per seed (batch size 1), at most
            1437.
        width: Units per hidden layer.
        depth: Number of hidden layers.
        epochs: SGD epochs before the measurements (0: at initialisation).
        lr: SGD learning rate.
        train_batch_size: SGD mini-batch size.
        dtype: Floating dtype of model and data (float64: the exact diagonal
            is exact to round-off).
        on_progress: Called with a :class:`~curvlab.runs.stage.StageEvent`:
            ``"phase"`` when a seed's measurements start (``"seed 1: samples"``)
            and ``"sample"`` after each sample, counting samples over all seeds.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> result = hesscale_quality(seeds=[0], num_samples=2, width=4, epochs=0)
        >>> result.normalized["HesScale"]["total"]
        1.0
    """
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed. Got none.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct. Got {list(seeds)}.")
    check_int("num_samples", num_samples, 1)
    check_int("width", width, 1)
    check_int("depth", depth, 0)
    check_int("epochs", epochs, 0)
    check_int("train_batch_size", train_batch_size, 1)
    if not lr > 0:
        raise ValueError(f"lr must be positive. Got {lr}.")

    loss_fn = nn.CrossEntropyLoss()
    per_seed: dict[str, list[list[float]]] = {m: [] for m in METHODS}
    layers: list[str] = []
    num_params = 0
    total = len(seeds) * num_samples

    def notify(kind: str, done: int, **values) -> None:
        if on_progress is not None:
            on_progress(StageEvent(kind, None, done, total, values))

    for index, seed in enumerate(seeds):
        split = load_digits(seed, dtype=dtype)
        X, y = split.X_train, split.y_train
        if num_samples > len(y):
            raise ValueError(
                f"num_samples must be at most the {len(y)} train samples. "
                f"Got {num_samples}."
            )
        model = quality_model(width, depth=depth, seed=seed).to(dtype)
        num_params = sum(p.numel() for p in model.parameters())
        if epochs:
            model.train()
            _train(model, loss_fn, X, y, epochs, lr, train_batch_size, seed)
        model.eval()
        layers, layer_of = layer_names(model)
        sums = {m: [0.0] * len(layers) for m in METHODS}
        notify("phase", index * num_samples, phase=f"seed {seed}: samples")
        for n in range(num_samples):
            sample = (X[n : n + 1], y[n : n + 1])
            # Not curvlab._seeds.derive_seed: that would redraw the MC label and
            # Hutchinson vector of every sample and change the demo's stored table.
            sample_seed = (seed * 1_000_003 + n) % (2**63)
            errors = estimate_errors(model, loss_fn, *sample, seed=sample_seed)
            for method in METHODS:
                for value, layer in zip(errors[method], layer_of, strict=True):
                    sums[method][layer] += value
            notify("sample", index * num_samples + n + 1, seed=seed)
        for method in METHODS:
            per_seed[method].append([s / num_samples for s in sums[method]])

    totals = {m: [sum(run) for run in per_seed[m]] for m in METHODS}
    means = _mean_errors(per_seed, layers)
    unit = means[NORMALIZER]["total"]
    normalized = {
        m: {column: _ratio(value, unit) for column, value in row.items()}
        for m, row in means.items()
    }
    seed_ratios = {
        m: [_ratio(a, b) for a, b in zip(totals[m], totals[NORMALIZER], strict=True)]
        for m in METHODS
    }
    config = {
        "data": "sklearn digits (N, 64), standardised, seeded 80/20 split",
        "architecture": "-".join(str(d) for d in (64, *[width] * depth, 10))
        + " tanh, biases",
        "num_params": num_params,
        "loss": "CrossEntropyLoss (mean)",
        "training": f"{epochs} epochs SGD, lr {lr:g}, batch size {train_batch_size}",
        "evaluation": f"first {num_samples} train samples, batch size 1",
        "dtype": str(dtype).removeprefix("torch."),
    }
    return QualityResult(
        METHODS, tuple(layers), seeds, num_samples, per_seed, normalized,
        seed_ratios, config,
    )  # fmt: skip


def _mean_errors(errors, layers: Sequence[str]) -> dict[str, dict[str, float]]:
    """Means over seeds of ``errors[method][seed][layer]`` and of their sums."""
    out = {}
    for method, per_seed in errors.items():
        out[method] = {
            layer: statistics.fmean(run[index] for run in per_seed)
            for index, layer in enumerate(layers)
        }
        out[method]["total"] = statistics.fmean(sum(run) for run in per_seed)
    return out


def _ratio(value: float, unit: float) -> float:
    if unit == 0:
        return float("inf") if value > 0 else float("nan")
    return value / unit

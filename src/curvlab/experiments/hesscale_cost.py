"""What does a training step cost with a diagonal curvature estimate?

The computational-cost study of HesScale (Elsayed & Mahmood, 2022, arXiv
2210.11639, ``experiments/exp2_comp_cost.py``): time per training step against
depth, as a multiple of a plain gradient step.

The network (:func:`cost_model`) follows the paper: 64 inputs, a Linear layer to
``width`` units, ``depth`` times [Linear(width, width), Tanh], a Linear layer to
100 outputs, no biases; MSE loss; batch size 1; fresh standard-normal inputs
and targets at every step. The methods (:data:`COST_METHODS`):

- ``SGD`` and ``Adam``: gradient (``loss.backward()``) and the optimiser's step;
- ``AdaHesScale`` and ``AdaHesScaleGN``: gradient and HesScale diagonal in one
  pass (:func:`curvlab.diagonal.hesscale_batch`), then the optimiser's step;
- ``GGN-MC``, ``exact GGN diag.``, ``exact Hessian diag.``: gradient, then the
  diagonal from :func:`curvlab.diagonal.mc_ggn_diagonal` (one sample),
  :func:`~curvlab.diagonal.exact_ggn_diagonal` or
  :func:`~curvlab.diagonal.exact_hessian_diagonal` in a separate pass, then an
  AdaHesScale step with that diagonal.

Unlike the paper, which starts the clock after the forward pass, every time here
covers a whole step, forward pass included; the unit, a *gradient step*, is
zeroing the gradients, the forward pass and ``loss.backward()``. Each figure is
the median over ``repeats`` timed steps, after one untimed warm-up step; in each
repeat the methods run once each, in an order rotated from repeat to repeat, so
that load changes hit all methods alike.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from curvlab._checks import check_int
from curvlab.diagonal import (
    exact_ggn_diagonal,
    exact_hessian_diagonal,
    hesscale_batch,
    mc_ggn_diagonal,
)
from curvlab.optim import AdaHesScale, AdaHesScaleGN
from curvlab.runs.stage import StageEvent

__all__ = [
    "COST_METHODS",
    "DEFAULT_DEPTHS",
    "UNIT",
    "CostResult",
    "cost_model",
    "hesscale_cost",
    "step_functions",
]

#: The methods timed, in table order.
COST_METHODS = ("SGD", "Adam", "AdaHesScale", "AdaHesScaleGN", "GGN-MC")
COST_METHODS += ("exact GGN diag.", "exact Hessian diag.")
#: The unit of time: zero the gradients, forward pass, ``loss.backward()``.
UNIT = "gradient"
#: The paper's depths (numbers of hidden ``width x width`` layers).
DEFAULT_DEPTHS = (1, 2, 4, 8, 16)
IN_FEATURES = 64
OUT_FEATURES = 100

StepFunction = Callable[[Tensor, Tensor], None]


@dataclass(frozen=True)
class CostResult:
    """Step times per method and depth.

    Attributes:
        depths: Numbers of hidden layers.
        num_params: Parameter count ``D`` of the network at each depth.
        methods: The methods, :data:`COST_METHODS` order.
        seconds: ``seconds[name][d]``: the timed steps (seconds) of a method, or
            of the unit :data:`UNIT`, at ``depths[d]``; empty when skipped.
        skipped: ``skipped[method][d]``: why a method was not timed at
            ``depths[d]``; empty when it was.
        config: The settings (width, batch size, repeats, dtype, threads).
    """

    depths: tuple[int, ...]
    num_params: tuple[int, ...]
    methods: tuple[str, ...]
    seconds: dict[str, list[list[float]]]
    skipped: dict[str, list[str]]
    config: dict = field(default_factory=dict)

    def median_seconds(self, name: str) -> list[float | None]:
        """Median step seconds per depth of a method or the unit (``None``: skipped)."""
        return [statistics.median(t) if t else None for t in self.seconds[name]]

    def multiples(self, method: str) -> list[float | None]:
        """A method's median step time per depth in gradient steps (or ``None``)."""
        unit = self.median_seconds(UNIT)
        return [
            None if t is None else t / u
            for t, u in zip(self.median_seconds(method), unit, strict=True)
        ]


def cost_model(
    depth: int,
    width: int = 512,
    *,
    in_features: int = IN_FEATURES,
    out_features: int = OUT_FEATURES,
    seed: int = 0,
) -> nn.Sequential:
    """Build the paper's timing network (module docstring), float32, no biases.

    ``depth >= 0`` hidden layers, initialised from ``seed`` (the global random
    state is restored).

    Example:
        >>> sum(p.numel() for p in cost_model(2, 8).parameters())
        1440
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        layers: list[nn.Module] = [nn.Linear(in_features, width, bias=False)]
        for _ in range(depth):
            layers += [nn.Linear(width, width, bias=False), nn.Tanh()]
        layers.append(nn.Linear(width, out_features, bias=False))
    return nn.Sequential(*layers)


def step_functions(
    model: nn.Module, loss_fn: nn.Module, *, lr: float = 1e-4
) -> dict[str, StepFunction]:
    """``{name: step}`` for :data:`UNIT` and every name in :data:`COST_METHODS`.

    Each step takes a batch ``(X, y)`` and runs one whole training step of the
    model in place: forward pass, backward pass(es), and the optimiser's update
    with learning rate ``lr`` (small: only the cost matters); the unit stops
    after the backward pass.
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient(X: Tensor, y: Tensor) -> None:
        for p in params:
            p.grad = None
        loss_fn(model(X), y).backward()

    def first_order(optimizer: torch.optim.Optimizer) -> StepFunction:
        def step(X: Tensor, y: Tensor) -> None:
            gradient(X, y)
            optimizer.step()

        return step

    def hesscale(optimizer: AdaHesScale) -> StepFunction:
        def step(X: Tensor, y: Tensor) -> None:
            for p in params:
                p.grad = None
            batch = hesscale_batch(model, loss_fn, X, y, variant=optimizer.variant)
            optimizer.step(diagonals=batch)

        return step

    def separate(diagonal: Callable[..., list[Tensor]]) -> StepFunction:
        optimizer = AdaHesScale(params, lr=lr)

        def step(X: Tensor, y: Tensor) -> None:
            gradient(X, y)
            optimizer.step(diagonals=diagonal(model, loss_fn, [(X, y)]))

        return step

    counter = iter(range(2**62))
    return {
        UNIT: gradient,
        "SGD": first_order(torch.optim.SGD(params, lr=lr)),
        "Adam": first_order(torch.optim.Adam(params, lr=lr)),
        "AdaHesScale": hesscale(AdaHesScale(params, lr=lr)),
        "AdaHesScaleGN": hesscale(AdaHesScaleGN(params, lr=lr)),
        "GGN-MC": separate(
            lambda *args: mc_ggn_diagonal(*args, mc_samples=1, seed=next(counter))
        ),
        "exact GGN diag.": separate(exact_ggn_diagonal),
        "exact Hessian diag.": separate(exact_hessian_diagonal),
    }


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Collect garbage once, then keep the cyclic collector off (as timeit does)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _timed(step: StepFunction, X: Tensor, y: Tensor) -> float:
    start = time.perf_counter()
    step(X, y)
    return time.perf_counter() - start


def _over_budget(
    key: str,
    previous: dict[str, tuple[float, int]],
    dropped: dict[str, str],
    dim: int,
    max_step_seconds: float,
) -> str | None:
    """Why a method is not timed at this depth, or ``None`` (never the unit)."""
    if key == UNIT:
        return None
    if key in dropped:
        return "skipped at a smaller depth"
    if key in previous:
        last, last_dim = previous[key]
        if last * dim / last_dim > max_step_seconds:
            return f"predicted over {max_step_seconds:g} s per step"
    return None


def _warm_up(key: str, step: StepFunction, batch, max_step_seconds: float):
    """Run the warm-up step: ``(seconds, why the method is skipped)``."""
    try:
        warm = _timed(step, *batch)
    except Exception as error:  # reported in the record, not raised
        if key == UNIT:
            raise
        first = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:200]
        return None, f"{type(error).__name__}: {first}"
    if key != UNIT and warm > max_step_seconds:
        return warm, f"warm-up step {warm:.1f} s > {max_step_seconds:g} s"
    return warm, None


def hesscale_cost(
    *,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    width: int = 512,
    batch_size: int = 1,
    repeats: int = 30,
    methods: Sequence[str] | None = None,
    max_step_seconds: float = 10.0,
    seed: int = 0,
    on_progress: Callable[[StageEvent], None] | None = None,
) -> CostResult:
    """Time a training step of each method on networks of growing depth.

    For each depth: build :func:`cost_model` (float32, CPU or the default
    device of the tensors), draw ``repeats + 1`` seeded standard-normal batches
    ``X`` of shape ``(batch_size, 64)`` and ``y`` of shape ``(batch_size,
    100)``, run one untimed warm-up step per method on the first, then time
    every method on each of the others (rotating the order). A method is
    skipped at a depth, and all deeper ones, once its warm-up step takes more
    than ``max_step_seconds``, or would by its time at the previous depth scaled
    by the growth in parameters, or raises: the exact Hessian diagonal refuses
    ``D`` above its ``max_dim`` (it costs ``D`` Hessian-vector products).

    Args:
        depths: Numbers of hidden layers, each at least 0.
        width: Hidden units.
        batch_size: Samples per step.
        repeats: Timed steps per method and depth.
        methods: Names from :data:`COST_METHODS`; ``None`` for all. The unit
            is always timed.
        max_step_seconds: Time budget of one step, see above.
        seed: Seeds the networks and the batches.
        on_progress: Called with a :class:`~curvlab.runs.stage.StageEvent`:
            ``"phase"`` (``"depth 2: warm-up"``, ``"depth 2: repeats"``) and
            ``"repeat"`` after each repeat, counting repeats over all depths.

    Raises:
        ValueError: If an argument is out of range or a method is unknown.
        TypeError: If a depth, ``width``, ``batch_size`` or ``repeats`` is no int.

    Example:
        >>> result = hesscale_cost(depths=[1, 2], width=8, repeats=3, methods=["SGD"])
        >>> result.num_params, result.multiples("gradient")
        ((1376, 1440), [1.0, 1.0])
    """
    depths = tuple(check_int("depths", d, 0) for d in depths)
    names = list(COST_METHODS) if methods is None else list(methods)
    unknown = [m for m in names if m not in COST_METHODS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}. Available: {list(COST_METHODS)}.")
    if not depths:
        raise ValueError("depths must hold at least one depth. Got none.")
    check_int("width", width, 1)
    check_int("batch_size", batch_size, 1)
    check_int("repeats", repeats, 1)
    if not max_step_seconds > 0:
        raise ValueError(f"max_step_seconds must be positive. Got {max_step_seconds}.")

    def notify(kind: str, done: int, **values) -> None:
        if on_progress is not None:
            on_progress(StageEvent(kind, None, done, len(depths) * repeats, values))

    keys = [UNIT, *names]
    seconds: dict[str, list[list[float]]] = {k: [] for k in keys}
    skipped: dict[str, list[str]] = {m: [] for m in names}
    num_params = []
    previous: dict[str, tuple[float, int]] = {}  # method -> (warm-up s, D)
    dropped: dict[str, str] = {}  # method -> why, for all deeper networks
    loss_fn = nn.MSELoss()
    for index, depth in enumerate(depths):
        model = cost_model(depth, width, seed=seed + depth)
        dim = sum(p.numel() for p in model.parameters())
        num_params.append(dim)
        steps = step_functions(model, loss_fn)
        generator = torch.Generator().manual_seed(seed + depth)
        batches = [
            (
                torch.randn(batch_size, IN_FEATURES, generator=generator),
                torch.randn(batch_size, OUT_FEATURES, generator=generator),
            )
            for _ in range(repeats + 1)
        ]
        notify("phase", index * repeats, phase=f"depth {depth}: warm-up")
        with _gc_paused():
            active = []
            for key in keys:
                reason = _over_budget(key, previous, dropped, dim, max_step_seconds)
                if reason is None:
                    warm, reason = _warm_up(
                        key, steps[key], batches[0], max_step_seconds
                    )
                    if warm is not None:
                        previous[key] = (warm, dim)
                if reason is not None:
                    dropped.setdefault(key, reason)
                    skipped[key].append(reason)
                    continue
                active.append(key)
            notify("phase", index * repeats, phase=f"depth {depth}: repeats")
            times: dict[str, list[float]] = {k: [] for k in active}
            for r in range(repeats):
                shift = r % len(active)
                for key in active[shift:] + active[:shift]:
                    times[key].append(_timed(steps[key], *batches[r + 1]))
                notify("repeat", index * repeats + r + 1, depth=depth)
        for key in keys:
            seconds[key].append(times.get(key, []))
            if key in active and key != UNIT:
                skipped[key].append("")
        del steps, model
    config = {
        "architecture": f"64-{width}, {{depth}} x [{width}-{width} tanh], "
        f"{width}-100, no biases",
        "loss": "MSELoss (mean)",
        "width": width,
        "batch_size": batch_size,
        "repeats": repeats,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "max_step_seconds": max_step_seconds,
    }
    return CostResult(depths, tuple(num_params), tuple(names), seconds, skipped, config)

"""Smoke-test every curvature operator on a problem: build, multiply, time.

GGN and Fisher operators need a loss whose output-space curvature curvlab knows
(cross-entropy, MSE, BCE with logits); for another loss they are skipped, not
failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from curvlab import problems
from curvlab.operators import (
    CurvatureOperator,
    EmpiricalFisherOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
)
from curvlab.runs.stage import StageEvent

__all__ = [
    "OPERATOR_KINDS",
    "CheckReport",
    "OperatorCheck",
    "check_operators",
    "check_problem",
]

OperatorFactory = Callable[[nn.Module, nn.Module, Iterable, int], CurvatureOperator]

#: The operators checked, by display name, each built as ``factory(model, loss_fn,
#: data, seed)``.
OPERATOR_KINDS: dict[str, OperatorFactory] = {
    "Hessian": lambda m, f, d, s: HessianOperator(m, f, d),
    "GGN": lambda m, f, d, s: GGNOperator(m, f, d),
    "Fisher (exact)": lambda m, f, d, s: FisherOperator(m, f, d),
    "Fisher (MC, 1 sample)": lambda m, f, d, s: FisherOperator(
        m, f, d, mc_samples=1, seed=s
    ),
    "Empirical Fisher": lambda m, f, d, s: EmpiricalFisherOperator(m, f, d),
}

OK, FAIL, SKIP = "OK", "FAIL", "SKIP"


@dataclass(frozen=True)
class OperatorCheck:
    """Outcome of checking one operator.

    Attributes:
        name: Display name, a key of :data:`OPERATOR_KINDS`.
        status: ``"OK"``, ``"FAIL"`` or ``"SKIP"`` (the loss is not supported by
            this kind of operator).
        message: Why it failed or was skipped; empty when OK.
        build_seconds: Time to construct the operator (it counts the data).
        first_seconds: Time of the first product, determinism check included.
        product_seconds: Time of a second, plain product.
        rayleigh: The Rayleigh quotient ``v^T A v / v^T v`` of the random vector.
    """

    name: str
    status: str
    message: str = ""
    build_seconds: float | None = None
    first_seconds: float | None = None
    product_seconds: float | None = None
    rayleigh: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the check did not fail (``OK`` or ``SKIP``)."""
        return self.status != FAIL


@dataclass(frozen=True)
class CheckReport:
    """Outcome of :func:`check_problem`.

    Attributes:
        problem: Problem name.
        description: One line on the problem's data and model.
        num_params: Number ``D`` of trainable parameters.
        num_data: Number ``N`` of train samples.
        num_batches: Number of train batches.
        dtype: Floating dtype of model, data and products.
        device: Device of model, data and products.
        loss: Mean train loss at the model's initialisation.
        gradient_seconds: Time of one gradient of the train loss (a full pass).
        operators: One record per operator.
    """

    problem: str
    description: str
    num_params: int
    num_data: int
    num_batches: int
    dtype: torch.dtype
    device: torch.device
    loss: float
    gradient_seconds: float
    operators: tuple[OperatorCheck, ...]

    @property
    def ok(self) -> bool:
        """Whether no operator failed."""
        return all(check.ok for check in self.operators)


def _timed(function: Callable, device: torch.device):
    """``(function(), seconds)``, waiting for the CUDA work to finish."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda device: None
    sync(device)
    start = time.perf_counter()
    result = function()
    sync(device)
    return result, time.perf_counter() - start


def _check_one(
    name: str, factory: OperatorFactory, model, loss_fn, data, seed: int
) -> OperatorCheck:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        op, build = _timed(lambda: factory(model, loss_fn, data, seed), device)
    except NotImplementedError as error:
        return OperatorCheck(name, SKIP, str(error))
    except Exception as error:  # reported in the record, not raised
        return OperatorCheck(name, FAIL, f"{type(error).__name__}: {error}")
    generator = torch.Generator(device=op.device).manual_seed(seed)
    v = torch.randn(op.shape[0], generator=generator, dtype=op.dtype, device=op.device)
    try:  # the first product also runs the determinism check
        (first, first_time), (second, product_time) = (
            _timed(lambda: op @ v, op.device) for _ in range(2)
        )
    except Exception as error:  # reported in the record, not raised
        message = f"{type(error).__name__}: {error}"
        return OperatorCheck(name, FAIL, message, build_seconds=build)
    timing = {
        "build_seconds": build,
        "first_seconds": first_time,
        "product_seconds": product_time,
    }
    if first.shape != v.shape or not bool(torch.isfinite(first).all()):
        shapes = f"shape {tuple(first.shape)}, expected {tuple(v.shape)}"
        what = shapes if first.shape != v.shape else "non-finite entries"
        return OperatorCheck(name, FAIL, f"The product has {what}.", **timing)
    rayleigh = float((v @ first) / (v @ v))
    scale = float(first.norm() / v.norm())
    tol = 1e3 * torch.finfo(op.dtype).eps
    difference = float((first - second).norm() / first.norm().clamp_min(1e-300))
    problem = ""
    if difference > tol:
        problem = (
            "Two products with the same vector differ (relative difference "
            f"{difference:.2e} > {tol:.1e})."
        )
    elif op.is_psd and rayleigh < -tol * scale:
        problem = (
            f"The operator is declared PSD but v^T A v / v^T v = {rayleigh:.3e} < 0."
        )
    status = FAIL if problem else OK
    return OperatorCheck(name, status, problem, rayleigh=rayleigh, **timing)


def check_operators(
    model: nn.Module,
    loss_fn: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    seed: int = 0,
    kinds: Sequence[str] | None = None,
    on_progress: Callable[[StageEvent], None] | None = None,
) -> tuple[OperatorCheck, ...]:
    """Build each operator kind, multiply it onto a random vector, and time it.

    An operator fails when construction or a product raises (a
    :class:`~curvlab.NonDeterministicError` from the determinism check included),
    when the product has the wrong shape or non-finite entries, when two products
    with the same vector differ by more than ``1000 eps`` relatively, or when a
    PSD operator gives a clearly negative Rayleigh quotient. A kind is skipped
    when the loss is not supported by it (``NotImplementedError`` on construction).

    Args:
        model: The model.
        loss_fn: The loss, with ``reduction`` ``"mean"`` or ``"sum"``.
        data: Re-iterable ``(X, y)`` batches.
        seed: Seeds the random vector and the Monte-Carlo Fisher's labels.
        kinds: Names from :data:`OPERATOR_KINDS`; ``None`` for all.
        on_progress: Called with a :class:`~curvlab.runs.stage.StageEvent` of
            kind ``"phase"`` (``values["phase"]``: the kind's name) before each
            check starts.

    Returns:
        One record per kind, in the order of ``kinds``.

    Raises:
        ValueError: If a kind is unknown.

    Example:
        >>> model = torch.nn.Linear(3, 2).double()
        >>> data = [(torch.randn(8, 3).double(), torch.randint(0, 2, (8,)))]
        >>> checks = check_operators(model, torch.nn.CrossEntropyLoss(), data)
        >>> [c.status for c in checks]
        ['OK', 'OK', 'OK', 'OK', 'OK']
    """
    names = list(OPERATOR_KINDS) if kinds is None else list(kinds)
    unknown = [n for n in names if n not in OPERATOR_KINDS]
    if unknown:
        raise ValueError(
            f"Unknown operator kinds {unknown}. Available: {list(OPERATOR_KINDS)}."
        )
    checks = []
    for index, name in enumerate(names):
        if on_progress is not None:
            on_progress(StageEvent("phase", None, index, len(names), {"phase": name}))
        checks.append(
            _check_one(name, OPERATOR_KINDS[name], model, loss_fn, data, seed)
        )
    return tuple(checks)


def _gradient(
    model: nn.Module, loss_fn: nn.Module, data: Iterable[tuple[Tensor, Tensor]]
) -> tuple[float, int, int]:
    """Return the mean loss, N and the number of batches; computes the gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    batches = [(X, y, len(X)) for X, y in data]
    num_data = sum(size for _, _, size in batches)
    total = 0.0
    grads = [torch.zeros_like(p) for p in params]
    for X, y, size in batches:
        loss = loss_fn(model(X), y)
        weight = size / num_data if loss_fn.reduction == "mean" else 1.0
        for g, d in zip(grads, torch.autograd.grad(loss, params), strict=True):
            g.add_(d, alpha=weight)
        total += weight * float(loss.detach())
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        raise ValueError("The gradient of the train loss has non-finite entries.")
    return total, num_data, len(batches)


def check_problem(
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    seed: int = 0,
    num_samples: int | None = None,
    batch_size: int | None = None,
    on_progress: Callable[[StageEvent], None] | None = None,
) -> CheckReport:
    """Check every operator kind on a registered problem.

    Builds the problem with :func:`curvlab.problems.get` (all arguments but
    ``on_progress``; ``seed`` also seeds the random vector and the Monte-Carlo
    labels), takes the gradient of the train loss twice (the second pass is
    timed, the first warms up), then runs :func:`check_operators` on the train
    split. ``on_progress`` gets a ``"phase"``
    :class:`~curvlab.runs.stage.StageEvent` before each part: ``"Gradient"``,
    then each operator.

    Raises:
        ValueError: If the problem cannot be built (unknown name, missing
            ``data_dir``, bad argument) or its gradient is not finite.
        FileNotFoundError: If data files are missing.
        ImportError: If a file-based problem needs torchvision and it is missing.
    """
    problem = problems.get(
        name,
        seed=seed,
        dtype=dtype,
        device=device,
        data_dir=data_dir,
        num_samples=num_samples,
        batch_size=batch_size,
    )
    device = torch.device(device)
    if on_progress is not None:
        total = len(OPERATOR_KINDS)
        on_progress(StageEvent("phase", None, 0, total, {"phase": "Gradient"}))
    model, loss_fn, data = problem.model, problem.loss_fn, problem.train_data
    for _ in range(2):  # the first pass warms up
        (loss, num_data, num_batches), seconds = _timed(
            lambda: _gradient(model, loss_fn, data), device
        )
    checks = check_operators(model, loss_fn, data, seed=seed, on_progress=on_progress)
    return CheckReport(
        problem=problem.name,
        description=problem.description,
        num_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        num_data=num_data,
        num_batches=num_batches,
        dtype=dtype,
        device=device,
        loss=loss,
        gradient_seconds=seconds,
        operators=checks,
    )

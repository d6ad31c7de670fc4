r"""Train a problem and record it in a run folder, resumably and reproducibly.

:func:`train` trains ``config.problem``'s model with SGD, Adam, AdaHesScale or
AdaHessian and, at each step of ``config.record_steps`` (before that step's
update, so step 0 is the initialisation), records into the run folder
(:class:`~curvlab.runs.RunFolder`):

- the parameters and buffers, and the gradient of the mean train loss
  :math:`\nabla_\theta \frac1N \sum_{n=1}^N \ell(f_\theta(x_n), y_n)` over the
  **whole train split** (not the mini-batch of that step), with the model in
  eval mode as the curvature operators use it (``train/step_XXXXXXXX.h5``);
- loss and accuracy on the train and test splits, the gradient and parameter
  norms and timings (the manifest entry and ``metrics.csv``);
- a checkpoint to resume from (``checkpoint/step_XXXXXXXX.pt``): model and
  optimizer ``state_dict``, PyTorch's global RNG states and the step.

**Data order.** Step :math:`t` of an epoch of :math:`E = \lfloor N / B\rfloor`
steps takes samples :math:`[(t \bmod E) B, (t \bmod E + 1) B)` of a permutation
of the train split that depends only on the seed and the epoch
:math:`\lfloor t/E \rfloor` (drawn by a ``torch.Generator`` seeded from
``numpy.random.SeedSequence(seed, spawn_key=(0, epoch))``); the last
:math:`N - EB` samples of each permutation are skipped. A resumed run thus needs
no data-loader state. PyTorch's global generator (dropout) is seeded from
``SeedSequence(seed, spawn_key=(1,))`` inside a fork of the global RNG state, so
the caller's random state is left alone.

**Resuming.** Running :func:`train` again on the same folder skips the recorded
steps: it restarts from the latest checkpoint at or before the first missing
record step (or from the seeded initialisation) and replays the same
computation, so the parameters match those of an uninterrupted run bit for bit
on the same machine, device, PyTorch version and thread count. On CUDA devices
that needs deterministic kernels: with ``deterministic=True`` (the default)
training runs under ``torch.use_deterministic_algorithms(True, warn_only=True)``
with cuDNN's deterministic algorithms and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
(set if unset); PyTorch warns about any operation that has no deterministic
implementation, and the previous settings are restored afterwards. A larger
``steps`` or more ``record_steps`` extend a run; any other change is refused
(:class:`~curvlab.runs.ConfigMismatchError`). Progress goes to an optional
callback (:class:`TrainEvent`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from curvlab._seeds import derive_seed
from curvlab.runs.config import (
    EXTENT_FIELDS,
    ConfigError,
    ConfigMismatchError,
    TrainConfig,
    config_differences,
)
from curvlab.runs.environment import machine_info, package_versions
from curvlab.runs.errors import RunIntegrityError
from curvlab.runs.folder import RunFolder
from curvlab.runs.records import load_checkpoint, save_checkpoint, write_record
from curvlab.runs.stage import StageEvent

__all__ = [
    "CHECKPOINT_FORMAT",
    "ProgressCallback",
    "TrainEvent",
    "TrainResult",
    "batch_indices",
    "build_optimizer",
    "check_trainable",
    "create_run",
    "derived_seeds",
    "evaluate_split",
    "train",
    "train_run",
]

CHECKPOINT_FORMAT = "curvlab-train-checkpoint"

#: Progress of :func:`train`: the stage framework's one event type, with
#: ``index == step`` (optimizer steps done) and ``total`` the last step this call
#: trains to. Kinds: ``"start"`` (``step``: where training (re)starts;
#: ``values``: ``resumed_from`` (checkpoint step or ``None``), ``skipped`` and
#: ``todo`` record steps, ``damaged``: what is computed again), ``"step"``
#: (``values["loss"]``: the mini-batch loss), ``"record"`` (``values``: the
#: step's metrics), ``"checkpoint"`` and ``"done"``.
TrainEvent = StageEvent

ProgressCallback = Callable[[TrainEvent], None]


@dataclass(frozen=True)
class TrainResult:
    """What one call of :func:`train` did.

    Attributes:
        run: The run folder.
        start_step: Step training started from (``None`` if nothing was left).
        resumed_from: Step of the checkpoint it resumed from, ``None`` for a
            start from the initialisation.
        end_step: Last step reached (``None`` if nothing was left).
        recorded: Steps recorded by this call.
        skipped: Record steps that were already done.
        seconds: Wall time.
    """

    run: RunFolder
    start_step: int | None
    resumed_from: int | None
    end_step: int | None
    recorded: tuple[int, ...]
    skipped: tuple[int, ...]
    seconds: float


def derived_seeds(seed: int) -> dict[str, Any]:
    """The seed of each random choice of a run seeded ``seed`` (for its metadata)."""
    return {
        "seed": seed,
        "model_init": seed,
        "train_test_split": seed,
        "batch_order": f"numpy.random.SeedSequence({seed}, spawn_key=(0, epoch))",
        "global_generator": derive_seed(seed, spawn_key=(1,)),
    }


def batch_indices(seed: int, step: int, num_samples: int, batch_size: int) -> Tensor:
    """Return the train-sample indices of the mini-batch of a step.

    Args:
        seed: The run's seed.
        step: The training step (0 for the first update).
        num_samples: Train samples ``N``.
        batch_size: Samples per step ``B <= N``.

    Returns:
        ``B`` distinct indices (CPU, int64).

    Raises:
        ValueError: If ``batch_size`` is not in ``[1, num_samples]``.

    Example:
        >>> first = batch_indices(0, 0, 10, 4)
        >>> second = batch_indices(0, 1, 10, 4)
        >>> len(set(first.tolist()) | set(second.tolist()))
        8
    """
    if not 1 <= batch_size <= num_samples:
        raise ValueError(
            f"batch_size must lie in [1, {num_samples}] (the train samples). "
            f"Got {batch_size}."
        )
    per_epoch = num_samples // batch_size
    epoch, position = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(derive_seed(seed, spawn_key=(0, epoch)))
    order = torch.randperm(num_samples, generator=generator)
    return order[position * batch_size : (position + 1) * batch_size]


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Create the config's optimizer on the model's trainable parameters.

    AdaHessian's probes come from the global generator, which training seeds and
    checkpoints.

    Args:
        config: The training config.
        model: The model.

    Returns:
        The optimizer.

    Raises:
        ConfigError: If the optimizer rejects an option.
        NotImplementedError: If AdaHesScale cannot handle a module of the model.
    """
    from curvlab.diagonal import check_supported
    from curvlab.optim import AdaHesScale, AdaHesScaleGN, AdaHessian

    kind = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adahessian": AdaHessian,
        "adahesscale": AdaHesScale,
        "adahesscalegn": AdaHesScaleGN,
    }[config.optimizer]
    if config.optimizer.startswith("adahesscale"):
        check_supported(model)
    kwargs = config.optimizer_kwargs()
    try:
        return kind([p for p in model.parameters() if p.requires_grad], **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"{kind.__name__} rejects the options {kwargs}: {error}"
        ) from None


def _check_batch_size(config: TrainConfig, num_train: int) -> None:
    if config.batch_size > num_train:
        raise ConfigError(
            f"batch_size must be at most the {num_train} train samples of "
            f"{config.problem!r}. Got {config.batch_size}."
        )


def check_trainable(config: TrainConfig, *, data_dir: str | Path | None = None) -> None:
    """Check what only the problem (built on the CPU) can tell, before a run is written.

    Args:
        config: The training config.
        data_dir: Data folder of file-based problems.

    Raises:
        ConfigError: If the batch size exceeds the train samples or the
            optimizer rejects the model.
        FileNotFoundError: If a file-based problem's data are missing.
        NotImplementedError: If AdaHesScale cannot handle a module of the model.
    """
    from curvlab import problems

    problem = problems.get(
        config.problem,
        seed=config.seed,
        batch_size=config.eval_batch_size,
        num_samples=config.num_samples,
        dtype=config.torch_dtype,
        data_dir=data_dir,
    )
    _check_batch_size(config, len(problem.train_data.y))
    build_optimizer(config, problem.model)


def evaluate_split(
    model: nn.Module, loss_fn: nn.Module, data, *, gradient: bool = False
) -> tuple[float, float | None, list[Tensor] | None]:
    """Mean loss, accuracy and optionally the gradient over a whole split.

    Batch losses are weighted by batch size, so the results are those of the
    mean over all samples whatever the batching (``loss_fn`` must use
    ``reduction="mean"``). The model's mode is left as it is.

    Args:
        model: The model.
        loss_fn: Loss with mean reduction.
        data: Re-iterable ``(X, y)`` batches.
        gradient: Also return the gradient of the mean loss with respect to the
            parameters (those that require grad get it; ``.grad`` is not touched).

    Returns:
        The loss, the accuracy (``None`` unless ``y`` holds class labels of a
        2-d output) and the gradient (``None`` unless asked for).
    """
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    num_samples = sum(len(y) for _, y in data)
    total_loss, correct = 0.0, 0
    classification = True
    grads = [torch.zeros_like(p) for p in params] if gradient else None
    for X, y in data:
        with torch.set_grad_enabled(gradient):
            output = model(X)
            loss = loss_fn(output, y)
        if grads is not None:
            weight = len(y) / num_samples
            parts = iter(torch.autograd.grad(loss, trainable))
            for i, p in enumerate(params):
                if p.requires_grad:
                    grads[i].add_(next(parts), alpha=weight)
        total_loss += float(loss.detach()) * len(y)
        if y.dtype == torch.int64 and output.ndim == 2:
            correct += int((output.argmax(dim=1) == y).sum())
        else:
            classification = False
    accuracy = correct / num_samples if classification else None
    return total_loss / num_samples, accuracy, grads


def create_run(
    config: TrainConfig,
    out: str | Path,
    *,
    force: bool = False,
    data_dir: str | Path | None = None,
) -> RunFolder:
    """Create or reopen the run folder of ``config``, as :func:`train` does.

    A new run is checked first (:func:`check_trainable`); its metadata names the
    seeds (:func:`derived_seeds`). The arguments and errors are :func:`train`'s.
    """
    return RunFolder.create(
        out,
        config,
        force=force,
        metadata={"seeds": derived_seeds(config.seed)},
        check=lambda c: check_trainable(c, data_dir=data_dir),
    )


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    force: bool = False,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    deterministic: bool = True,
    on_progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train and record a run into the folder ``out``, resuming what is there.

    :func:`create_run`, then :func:`train_run`.

    Args:
        config: The training config.
        out: The run folder; created if missing, resumed if it holds a run with
            a compatible config (module docstring).
        force: Delete an existing run in ``out`` first.
        device: Device to train on.
        data_dir: Data folder of file-based problems.
        deterministic: On CUDA, use deterministic kernels (module docstring).
        on_progress: Progress callback, see :func:`train_run`.

    Returns:
        What this call did.

    Raises:
        ConfigMismatchError: If ``out`` holds a run with another config.
        FileExistsError: If ``out`` is a non-empty folder that is no run folder.
        ConfigError: If :func:`check_trainable` refuses a new run's config; and
            what :func:`train_run` raises.

    Example:
        >>> import tempfile
        >>> config = TrainConfig(problem="digits_logreg", steps=20, batch_size=32,
        ...                      record_steps=(0, 10), num_samples=200)
        >>> result = train(config, tempfile.mkdtemp())
        >>> result.recorded, result.run.recorded_steps()
        ((0, 10, 20), [0, 10, 20])
    """
    run = create_run(config, out, force=force, data_dir=data_dir)
    options = {"device": device, "data_dir": data_dir, "on_progress": on_progress}
    return train_run(run, config, deterministic=deterministic, **options)


def train_run(
    run: RunFolder,
    request: TrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    deterministic: bool = True,
    on_progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train in an existing run folder: record the steps not yet recorded.

    Args:
        run: The run folder.
        request: What to train; ``None`` is the stored config. Its extents may
            differ from the stored config (see :func:`train`); the stored config
            is extended to cover it.
        device: Device to train on.
        data_dir: Data folder of file-based problems (default: the one the
            previous training used).
        deterministic: On CUDA, use deterministic kernels (module docstring).
        on_progress: Called with a :class:`TrainEvent` at the start, after each
            step, record and checkpoint, and at the end. An exception it raises
            stops training; what was recorded stays valid and a later call
            resumes.

    Returns:
        What this call did.

    Raises:
        ConfigMismatchError: If ``request`` is incompatible with the run.
        ConfigError: If the batch size exceeds the train samples or the
            optimizer rejects an option.
        FloatingPointError: If the loss becomes NaN or infinite.
        RunLockedError: If another process trains in the folder.
        RunIntegrityError: If a checkpoint without a recorded checksum cannot
            be loaded (damaged records and checkpoints with checksums are
            computed again).
    """
    config = run.config if request is None else request
    run.extend_config(config)
    device = torch.device(device)
    data_dir = run.training_data_dir() if data_dir is None else data_dir
    invocation = run.start_invocation(
        "train",
        request=config.to_dict(),
        device=str(device),
        deterministic=deterministic,
        data_dir=None if data_dir is None else str(data_dir),
        versions=package_versions(),
        machine=machine_info(str(device)),
    )
    start = time.perf_counter()
    try:
        with _deterministic(device.type == "cuda" and deterministic):
            result = _train(run, config, device, data_dir, on_progress, invocation)
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        invocation.finish(status, error=f"{type(error).__name__}: {error}")
        raise
    outcome = {k: v for k, v in vars(result).items() if k not in ("run", "seconds")}
    invocation.finish("finished", **outcome)  # the other TrainResult fields
    return replace(result, seconds=time.perf_counter() - start)


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Use deterministic CUDA kernels inside the block, then restore the settings."""
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        cudnn.deterministic, cudnn.benchmark = previous[2:]


def _train(run, config, device, data_dir, on_progress, invocation) -> TrainResult:
    def report(kind: str, step: int, total: int, **values: Any) -> None:
        if on_progress is not None:
            on_progress(TrainEvent(kind, step, step, total, values))

    # verify=True: a damaged record or checkpoint is computed again
    damaged = [
        problem
        for stage in ("train", "checkpoint")
        for step in run.entry_steps(stage)
        if stage == "checkpoint" or step in config.record_steps
        for problem in run.damaged(stage, step)
    ]
    skipped = tuple(
        s for s in config.record_steps if run.is_done("train", s, verify=True)
    )
    todo = [s for s in config.record_steps if s not in skipped]
    if not todo:
        report("done", config.steps, config.steps)
        return TrainResult(run, None, None, None, (), skipped, 0.0)
    last = todo[-1]
    stored = [s for s in run.entry_steps("checkpoint") if s <= todo[0]]
    resumed_from = max(
        (s for s in stored if run.is_done("checkpoint", s, verify=True)), default=None
    )

    problem = run.problem(device=device, data_dir=data_dir)
    model, loss_fn = problem.model, problem.loss_fn
    X, y = problem.train_data.X, problem.train_data.y
    _check_batch_size(config, len(y))
    optimizer = build_optimizer(config, model)
    cuda = []
    if device.type == "cuda":
        cuda = [torch.cuda.current_device() if device.index is None else device.index]
    record_set, every = set(config.record_steps), config.checkpoint_every

    def checkpoint_due(step: int) -> bool:  # no set of all steps: steps may be 1e12
        due = step in record_set or (every is not None and step % every == 0)
        return due and not run.is_done("checkpoint", step, verify=True)

    recorded, todo_set = [], set(todo)
    with torch.random.fork_rng(devices=cuda):
        begin = 0 if resumed_from is None else resumed_from
        if resumed_from is None:
            seed = derive_seed(config.seed, spawn_key=(1,))
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(cuda[0]):
                    torch.cuda.manual_seed(seed)
        else:
            path = run.path_for("checkpoint", resumed_from, ".pt")
            _restore(load_checkpoint(path), model, optimizer, cuda, config, path)
        invocation.update(start_step=begin, resumed_from=resumed_from)
        state = {"resumed_from": resumed_from, "skipped": skipped, "todo": tuple(todo)}
        report("start", begin, last, **state, damaged=tuple(damaged))
        train_seconds = 0.0
        for step in range(begin, last + 1):
            if step in todo_set:
                metrics = _record(run, problem, config, step, train_seconds)
                train_seconds = 0.0
                recorded.append(step)
                report("record", step, last, **metrics)
            if checkpoint_due(step):
                _checkpoint(run, config, model, optimizer, cuda, step)
                report("checkpoint", step, last)
            if step == last:
                break
            index = batch_indices(config.seed, step, len(y), config.batch_size)
            index = index.to(X.device)
            tic = time.perf_counter()
            loss = _update(model, loss_fn, optimizer, X[index], y[index])
            train_seconds += time.perf_counter() - tic
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"The mini-batch loss of step {step} is {loss}: training "
                    f"diverged (lr {config.lr}). Steps recorded so far are kept; "
                    "try a smaller learning rate in a new run folder."
                )
            report("step", step + 1, last, loss=loss)
    model.eval()
    report("done", last, last)
    return TrainResult(run, begin, resumed_from, last, tuple(recorded), skipped, 0.0)


def _update(model, loss_fn, optimizer, X: Tensor, y: Tensor) -> float:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    if hasattr(optimizer, "variant"):  # AdaHesScale: diagonals by backpropagation
        from curvlab.diagonal import hesscale_batch

        batch = hesscale_batch(model, loss_fn, X, y, variant=optimizer.variant)
        optimizer.step(diagonals=batch)
        return float(batch.loss)
    if getattr(optimizer, "needs_loss_graph", False):  # AdaHessian
        return float(optimizer.step(lambda: loss_fn(model(X), y)))
    loss = loss_fn(model(X), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _norm(tensors: list[Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().square().sum()) for t in tensors))


def _record(run, problem, config, step: int, train_seconds: float) -> dict:
    model, loss_fn = problem.model, problem.loss_fn
    tic = time.perf_counter()
    model.eval()
    train_loss, train_accuracy, grads = evaluate_split(
        model, loss_fn, problem.train_data, gradient=config.record_gradients
    )
    test_loss, test_accuracy, _ = evaluate_split(model, loss_fn, problem.test_data)
    parameters = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {k: v for k, v in model.state_dict().items() if k not in parameters}
    metrics = {
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "gradient_norm": None if grads is None else _norm(grads),
        "parameter_norm": _norm(list(parameters.values())),
    }
    path = run.record_path(step)
    with run.atomic_path(path) as tmp:
        write_record(
            tmp,
            step=step,
            parameters=parameters,
            gradients=grads,
            buffers=buffers,
            attrs={"problem": config.problem, "dtype": config.dtype, **metrics},
        )
    seconds = time.perf_counter() - tic
    info = {**metrics, "train_seconds": train_seconds, "record_seconds": seconds}
    run.mark_done("train", step, files=[path], info=info)
    run.write_metrics()
    return metrics


def _checkpoint(run: RunFolder, config, model, optimizer, cuda, step: int) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "format_version": 1,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "cpu_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state(cuda[0]) if cuda else None,
        "config": config.to_dict(),
    }
    path = run.path_for("checkpoint", step, ".pt")
    with run.atomic_path(path) as tmp:
        save_checkpoint(tmp, state)
    run.mark_done("checkpoint", step, files=[path])
    # older checkpoints go, entry first (a crash leaves a stray file), then any
    # file no entry lists
    for older in run.entry_steps("checkpoint"):
        if older < step:
            run.unmark("checkpoint", older)
    listed = {
        run.path_for("checkpoint", s, ".pt").name for s in run.entry_steps("checkpoint")
    }
    for file in (run.path / "checkpoint").iterdir():
        if file.name not in listed and not file.name.startswith("."):
            file.unlink(missing_ok=True)


def _restore(state: Mapping, model, optimizer, cuda, config, path: Path) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise RunIntegrityError(
            f"{path} is damaged or not a curvlab training checkpoint. Delete it "
            "and run the command again: training then replays from the "
            "initialisation.",
            path=path,
        )
    stored = state.get("config")
    if isinstance(stored, Mapping):
        differences = config_differences(stored, config.to_dict(), ignore=EXTENT_FIELDS)
        if differences:
            listed = "; ".join(
                f"{name}: checkpoint {old!r}, config.yaml {new!r}"
                for name, old, new in differences
            )
            raise ConfigMismatchError(
                f"{path} was written by a run with another configuration than "
                f"config.yaml says ({listed}). config.yaml was changed after the "
                "run started; restore it, or train again in a new folder.",
                differences,
            )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["cpu_rng_state"])
    if cuda and state.get("cuda_rng_state") is not None:
        torch.cuda.set_rng_state(state["cuda_rng_state"], cuda[0])

r"""Train a problem's model with SGD and measure its Hessian along the way.

At each recorded step the model is evaluated on the train and test splits, and the
Hessian :math:`H` of the mean train loss is measured:

- its ``k`` largest eigenvalues, with ARPACK's implicitly restarted Lanczos method
  (``scipy.sparse.linalg.eigsh`` with ``which="LA"``, the largest *algebraic*
  eigenvalues, on :meth:`~curvlab.operators.CurvatureOperator.to_scipy`), started
  from a fixed vector drawn from a seeded generator so the numbers are
  reproducible (Lehoucq, Sorensen & Yang 1998, "ARPACK Users' Guide", SIAM);
- its exact trace :math:`\operatorname{tr} H = \sum_{i=1}^{D} e_i^\top H e_i`,
  from products with the identity's columns in chunks. That costs ``D`` Hessian
  columns, but never holds the ``D x D`` matrix.

Nothing here prints: :func:`train_and_record` returns one :class:`TrainRecord` per
recorded step and reports progress through an optional callback, which the CLI
(``curvlab demo``) turns into progress bars.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor, nn

from curvlab import problems
from curvlab.operators import CurvatureOperator, HessianOperator
from curvlab.problems import Problem

__all__ = [
    "DEMO_BATCH_SIZE",
    "DEMO_LR",
    "DEMO_PROBLEM",
    "EigenResult",
    "ProgressCallback",
    "TrainRecord",
    "evaluate",
    "exact_trace",
    "record_steps",
    "run_demo",
    "top_eigenvalues",
    "train_and_record",
]

#: Problem trained by ``curvlab demo``.
DEMO_PROBLEM = "digits_mlp"
#: SGD learning rate of the demo.
DEMO_LR = 0.1
#: Mini-batch size of the demo.
DEMO_BATCH_SIZE = 32

ProgressCallback = Callable[[str, int, int, "int | None"], None]
"""``callback(stage, step, completed, total)`` with ``stage`` one of ``"train"``,
``"eigsh"`` and ``"trace"``. For ``"train"``, ``completed`` counts SGD steps out
of ``total``; for ``"eigsh"`` it counts matrix-vector products (``total`` is
``None``: ARPACK decides when it has converged); for ``"trace"`` it counts
identity columns out of ``total = D``. ``step`` is the training step the
measurement belongs to."""

#: ARPACK tolerance by operator dtype: relative accuracy of the Ritz values.
_DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@dataclass(frozen=True)
class EigenResult:
    """Eigenvalues from :func:`top_eigenvalues`.

    Attributes:
        eigvals: The eigenvalues, in descending order.
        num_matvecs: Products with the operator that ARPACK asked for.
    """

    eigvals: tuple[float, ...]
    num_matvecs: int


@dataclass(frozen=True)
class TrainRecord:
    """What :func:`train_and_record` measures at one training step.

    Attributes:
        step: Number of SGD steps taken before the measurement.
        train_loss: Mean loss over the train split.
        train_accuracy: Fraction of train samples classified correctly, ``None``
            for regression.
        test_loss: Mean loss over the test split.
        test_accuracy: As ``train_accuracy``, on the test split.
        eigvals: Largest Hessian eigenvalues (``which="LA"``), descending.
        trace: Exact trace of the Hessian.
        num_matvecs: Hessian-vector products the eigensolver used.
        seconds: Wall time of the curvature measurements (eigensolve and trace).
    """

    step: int
    train_loss: float
    train_accuracy: float | None
    test_loss: float
    test_accuracy: float | None
    eigvals: tuple[float, ...]
    trace: float
    num_matvecs: int
    seconds: float


def record_steps(steps: int, every: int) -> list[int]:
    """Return the steps ``0, every, 2 every, ...`` up to and including ``steps``.

    Args:
        steps: Total number of training steps, at least 0.
        every: Spacing of the records, at least 1.

    Returns:
        The sorted steps; ``steps`` itself is always included.

    Raises:
        ValueError: If ``steps < 0`` or ``every < 1``.

    Example:
        >>> record_steps(1000, 300)
        [0, 300, 600, 900, 1000]
    """
    if steps < 0:
        raise ValueError(f"steps must be at least 0. Got {steps}.")
    if every < 1:
        raise ValueError(f"every must be at least 1. Got {every}.")
    return sorted({*range(0, steps + 1, every), steps})


def top_eigenvalues(
    op: CurvatureOperator,
    k: int = 5,
    *,
    which: str = "LA",
    seed: int = 0,
    tol: float | None = None,
    on_matvec: Callable[[int], None] | None = None,
) -> EigenResult:
    """Compute ``k`` extreme eigenvalues of a symmetric operator with ARPACK.

    Runs ``scipy.sparse.linalg.eigsh`` on ``op.to_scipy()`` (float64) from the
    start vector ``numpy.random.default_rng(seed).standard_normal(D)``, so the
    result is reproducible.

    Args:
        op: A symmetric operator with ``D > k + 1``.
        k: Number of eigenvalues.
        which: ``"LA"`` for the largest algebraic eigenvalues (the top of the
            spectrum, what "top eigenvalues" of an indefinite Hessian means),
            ``"LM"`` for the largest magnitudes, ``"SA"`` for the smallest.
        seed: Seed of the start vector.
        tol: Relative accuracy of the eigenvalues; ``None`` picks ``1e-10`` for
            float64 operators and ``1e-5`` for float32 (whose products carry
            round-off of about ``1e-7``).
        on_matvec: Called with the running count after every product.

    Returns:
        The eigenvalues, descending, and the number of products.

    Raises:
        ValueError: If ``k`` is out of range or ``which`` is not supported.

    Example:
        >>> from curvlab import DenseOperator
        >>> A = torch.diag(torch.arange(1.0, 21.0, dtype=torch.float64))
        >>> result = top_eigenvalues(DenseOperator(A), 3)
        >>> [round(e, 8) for e in result.eigvals]
        [20.0, 19.0, 18.0]
    """
    dim = op.shape[0]
    if not 1 <= k < dim:
        raise ValueError(f"k must lie in [1, D) with D={dim}. Got {k}.")
    if which not in ("LA", "LM", "SA"):
        raise ValueError(f"which must be 'LA', 'LM' or 'SA'. Got {which!r}.")
    if tol is None:
        tol = _DEFAULT_TOL.get(op.dtype, 1e-2)
    scipy_op = op.to_scipy()
    count = 0

    def matvec(x: numpy.ndarray) -> numpy.ndarray:
        nonlocal count
        out = scipy_op.matvec(x)
        count += 1
        if on_matvec is not None:
            on_matvec(count)
        return out

    counted = LinearOperator(op.shape, matvec=matvec, dtype=numpy.float64)
    v0 = numpy.random.default_rng(seed).standard_normal(dim)
    eigvals = eigsh(
        counted, k=k, which=which, v0=v0, tol=tol, return_eigenvectors=False
    )
    ordered = sorted((float(e) for e in eigvals), reverse=True)
    return EigenResult(tuple(ordered), count)


def exact_trace(
    op: CurvatureOperator,
    *,
    chunk_size: int = 256,
    on_columns: Callable[[int], None] | None = None,
) -> float:
    r"""Compute the trace :math:`\sum_i e_i^\top A e_i` exactly, in float64.

    Multiplies the identity's columns in chunks of ``chunk_size`` and sums the
    diagonal entries of each block, so memory stays at ``D x chunk_size``.

    Args:
        op: A square operator.
        chunk_size: Identity columns per product.
        on_columns: Called with the number of columns done after each chunk.

    Returns:
        The trace.

    Raises:
        ValueError: If ``chunk_size < 1``.

    Example:
        >>> from curvlab import DenseOperator
        >>> A = torch.arange(9.0, dtype=torch.float64).reshape(3, 3)
        >>> exact_trace(DenseOperator(A + A.T), chunk_size=2)
        24.0
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1. Got {chunk_size}.")
    dim = op.shape[0]
    total = 0.0
    for start in range(0, dim, chunk_size):
        stop = min(start + chunk_size, dim)
        rows = torch.arange(start, stop, device=op.device)
        cols = torch.arange(stop - start, device=op.device)
        eye = torch.zeros(dim, stop - start, dtype=op.dtype, device=op.device)
        eye[rows, cols] = 1
        block = op @ eye
        total += float(block[rows, cols].to(torch.float64).sum())
        if on_columns is not None:
            on_columns(stop)
    return total


def evaluate(
    model: nn.Module, loss_fn: nn.Module, data: Iterable[tuple[Tensor, Tensor]]
) -> tuple[float, float | None]:
    """Return the mean loss and, for class labels, the accuracy over ``data``.

    Batch losses are weighted by batch size, so the result is the mean over all
    samples whatever the batching (``loss_fn`` must use ``reduction="mean"``).

    Args:
        model: The model, evaluated in eval mode.
        loss_fn: A loss with mean reduction.
        data: ``(X, y)`` batches.

    Returns:
        The loss and the accuracy (``None`` when ``y`` holds no class labels).
    """
    total_loss, correct, count = 0.0, 0, 0
    classification = True
    with torch.no_grad():
        for X, y in data:
            output = model(X)
            total_loss += float(loss_fn(output, y)) * len(y)
            count += len(y)
            if y.dtype == torch.int64 and output.ndim == 2:
                correct += int((output.argmax(dim=1) == y).sum())
            else:
                classification = False
    return total_loss / count, (correct / count if classification else None)


def train_and_record(
    problem: Problem,
    *,
    steps: int,
    record_at: Sequence[int],
    lr: float = DEMO_LR,
    batch_size: int = DEMO_BATCH_SIZE,
    seed: int = 0,
    num_eigvals: int = 5,
    which: str = "LA",
    tol: float | None = None,
    trace_chunk_size: int = 256,
    on_progress: ProgressCallback | None = None,
) -> list[TrainRecord]:
    """Train ``problem.model`` in place with SGD and measure it at chosen steps.

    Each step draws ``batch_size`` train samples without replacement from a
    permutation of the train split that is redrawn every epoch by a generator
    seeded with ``seed``; plain SGD (no momentum, no weight decay) then takes one
    step on their mean loss. At each step in ``record_at`` (before that step's
    update) the model is evaluated and the Hessian of the mean train loss is
    measured (:func:`top_eigenvalues`, :func:`exact_trace`).

    Args:
        problem: The problem; its model is trained in place and left in eval
            mode with the final parameters.
        steps: Number of SGD steps.
        record_at: Steps in ``[0, steps]`` to measure at.
        lr: Learning rate.
        batch_size: Samples per step.
        seed: Seeds the mini-batch order and the eigensolver's start vector.
        num_eigvals: Number of top eigenvalues.
        which: Which eigenvalues, see :func:`top_eigenvalues`.
        tol: Eigensolver tolerance, see :func:`top_eigenvalues`.
        trace_chunk_size: Identity columns per product in :func:`exact_trace`.
        on_progress: Progress callback, see :data:`ProgressCallback`.

    Returns:
        One record per step of ``record_at``, in increasing step order.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> problem = problems.get("synthetic_regression", dtype=torch.float64)
        >>> records = train_and_record(problem, steps=10, record_at=[0, 10])
        >>> [r.step for r in records], records[1].train_loss < records[0].train_loss
        ([0, 10], True)
    """
    if steps < 0:
        raise ValueError(f"steps must be at least 0. Got {steps}.")
    at = sorted(set(record_at))
    if any(s < 0 or s > steps for s in at):
        raise ValueError(f"record_at must lie in [0, {steps}]. Got {list(record_at)}.")
    if lr <= 0:
        raise ValueError(f"lr must be positive. Got {lr}.")
    X, y = problem.train_data.X, problem.train_data.y
    num_train = len(y)
    if not 1 <= batch_size <= num_train:
        raise ValueError(
            f"batch_size must lie in [1, {num_train}] (the train samples). "
            f"Got {batch_size}."
        )

    def report(stage: str, step: int, completed: int, total: int | None) -> None:
        if on_progress is not None:
            on_progress(stage, step, completed, total)

    model, loss_fn = problem.model, problem.loss_fn
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    order, position = torch.randperm(num_train, generator=generator), 0
    records = []
    for step in range(steps + 1):
        if step in at:
            model.eval()
            records.append(
                _measure(
                    problem,
                    step,
                    num_eigvals=num_eigvals,
                    which=which,
                    seed=seed,
                    tol=tol,
                    trace_chunk_size=trace_chunk_size,
                    report=report,
                )
            )
        if step == steps:
            break
        if position + batch_size > num_train:
            order, position = torch.randperm(num_train, generator=generator), 0
        index = order[position : position + batch_size].to(X.device)
        position += batch_size
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(X[index]), y[index]).backward()
        optimizer.step()
        report("train", step, step + 1, steps)
    model.eval()
    return records


def _measure(
    problem: Problem,
    step: int,
    *,
    num_eigvals: int,
    which: str,
    seed: int,
    tol: float | None,
    trace_chunk_size: int,
    report: ProgressCallback,
) -> TrainRecord:
    train_loss, train_accuracy = evaluate(
        problem.model, problem.loss_fn, problem.train_data
    )
    test_loss, test_accuracy = evaluate(
        problem.model, problem.loss_fn, problem.test_data
    )
    start = time.perf_counter()
    op = HessianOperator(problem.model, problem.loss_fn, problem.train_data)
    eigen = top_eigenvalues(
        op,
        num_eigvals,
        which=which,
        seed=seed,
        tol=tol,
        on_matvec=lambda count: report("eigsh", step, count, None),
    )
    dim = op.shape[0]
    trace = exact_trace(
        op,
        chunk_size=trace_chunk_size,
        on_columns=lambda done: report("trace", step, done, dim),
    )
    return TrainRecord(
        step=step,
        train_loss=train_loss,
        train_accuracy=train_accuracy,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        eigvals=eigen.eigvals,
        trace=trace,
        num_matvecs=eigen.num_matvecs,
        seconds=time.perf_counter() - start,
    )


def run_demo(
    *,
    steps: int = 1000,
    record_every: int = 250,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    on_progress: ProgressCallback | None = None,
) -> tuple[Problem, list[TrainRecord]]:
    """Train ``digits_mlp`` with SGD and measure its Hessian every few steps.

    The settings of ``curvlab demo``: the problem :data:`DEMO_PROBLEM`
    (``D = 3190``, ``N = 1437`` train samples) built with ``seed``, SGD with
    learning rate :data:`DEMO_LR` and batch size :data:`DEMO_BATCH_SIZE`, the top
    5 eigenvalues (``which="LA"``) and the exact trace at
    :func:`record_steps` ``(steps, record_every)``.

    Args:
        steps: Number of SGD steps.
        record_every: Spacing of the measurements.
        seed: Seeds the problem (initialisation and train/test split), the
            mini-batch order and the eigensolver's start vector.
        dtype: Floating dtype of the model, data and Hessian products.
        on_progress: Progress callback, see :data:`ProgressCallback`.

    Returns:
        The trained problem and the records.

    Raises:
        ValueError: If ``steps < 0`` or ``record_every < 1``.
    """
    record_at = record_steps(steps, record_every)
    problem = problems.get(DEMO_PROBLEM, seed=seed, dtype=dtype)
    records = train_and_record(
        problem,
        steps=steps,
        record_at=record_at,
        seed=seed,
        on_progress=on_progress,
    )
    return problem, records

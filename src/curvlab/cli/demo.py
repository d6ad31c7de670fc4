"""``curvlab demo``: train ``digits_mlp`` with SGD and watch its Hessian.

The work is :func:`curvlab.experiments.train.run_demo`; this module shows its
progress (SGD steps, eigensolver products, trace columns) as Rich progress bars
and prints the records as a table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from curvlab.cli.check import DTYPES
from curvlab.experiments.train import (
    DEMO_BATCH_SIZE,
    DEMO_LR,
    DEMO_PROBLEM,
    TrainRecord,
    run_demo,
)

__all__ = ["main", "render_records"]

_STAGE_LABELS = {"eigsh": "eigsh (top 5, LA)", "trace": "trace (exact)"}


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render_records(
    records: Sequence[TrainRecord], console: Console, *, title: str = ""
) -> None:
    """Print training records as a table, one row per recorded step.

    Args:
        records: Records from :func:`~curvlab.experiments.train.train_and_record`.
        console: Where to print.
        title: Title of the table.
    """
    num_eigvals = max((len(r.eigvals) for r in records), default=0)
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=0,
        pad_edge=False,
        title=title or None,
        caption=(
            "λᵢ: largest Hessian eigenvalues (eigsh, which='LA', seeded start "
            "vector); tr H: exact trace, the sum of eᵢᵀHeᵢ over all D columns; "
            "#mv: products eigsh used; s: seconds for eigsh and trace."
        ),
    )
    for header in ("step", "train loss", "train acc", "test acc"):
        table.add_column(header, justify="right")
    for i in range(num_eigvals):
        table.add_column(f"λ{i + 1}", justify="right")
    for header in ("tr H", "#mv", "s"):
        table.add_column(header, justify="right")
    for r in records:
        eigvals = [f"{e:.4g}" for e in r.eigvals]
        eigvals += [""] * (num_eigvals - len(eigvals))
        table.add_row(
            str(r.step),
            f"{r.train_loss:.4f}",
            _accuracy(r.train_accuracy),
            _accuracy(r.test_accuracy),
            *eigvals,
            f"{r.trace:.4g}",
            str(r.num_matvecs),
            f"{r.seconds:.1f}",
        )
    console.print(table)


def main(
    *,
    steps: int = 1000,
    record_every: int = 250,
    seed: int = 0,
    dtype: str = "float32",
    threads: int | None = 1,
    console: Console | None = None,
    error_console: Console | None = None,
) -> int:
    """Run the demo with progress bars and print its table.

    Args:
        steps: Number of SGD steps.
        record_every: Measure the Hessian every this many steps (and at the end).
        seed: Seeds the problem, the mini-batches and the eigensolver.
        dtype: ``"float32"`` (default, about twice as fast) or ``"float64"``.
        threads: PyTorch CPU threads during the demo (restored afterwards);
            ``None`` keeps the current setting. The products are small, so one
            thread (the default) loses little on an idle machine and does not
            slow down by an order of magnitude when other processes share the
            cores, as several threads do.
        console: Where to print (default: standard output).
        error_console: Where to print errors (default: standard error).

    Returns:
        The exit code: 0 on success, 2 for invalid arguments.
    """
    console = console or Console()
    error_console = error_console or Console(stderr=True)
    if dtype not in DTYPES:
        error_console.print(
            f"[bold red]Error:[/] dtype must be one of {list(DTYPES)}. Got {dtype!r}."
        )
        return 2
    if steps < 0 or record_every < 1 or (threads is not None and threads < 1):
        error_console.print(
            "[bold red]Error:[/] --steps must be at least 0, --record-every and "
            f"--threads at least 1. Got {steps}, {record_every} and {threads}."
        )
        return 2
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(steps, record_every, seed, dtype, console)
    finally:
        torch.set_num_threads(previous_threads)


def _run(steps: int, record_every: int, seed: int, dtype: str, console: Console) -> int:
    console.print(
        f"Training [bold]{DEMO_PROBLEM}[/] with SGD (lr {DEMO_LR}, batch "
        f"{DEMO_BATCH_SIZE}, {steps} steps, seed {seed}, {dtype}, "
        f"{torch.get_num_threads()} CPU thread(s)); measuring the Hessian of the "
        f"mean train loss every {record_every} steps."
    )
    start = time.perf_counter()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        train_task = progress.add_task("SGD steps", total=steps)
        tasks: dict[tuple[str, int], TaskID] = {}
        completed_by_task: dict[TaskID, int] = {}

        def finish_all() -> None:
            for task_id, done in completed_by_task.items():
                progress.update(task_id, total=done, completed=done)

        def on_progress(stage: str, step: int, completed: int, total: int | None):
            if stage == "train":
                progress.update(train_task, completed=completed)
                return
            key = (stage, step)
            if key not in tasks:
                finish_all()  # a new stage starts when the previous one is done
                label = f"{_STAGE_LABELS.get(stage, stage)} at step {step}"
                tasks[key] = progress.add_task(label, total=total)
            completed_by_task[tasks[key]] = completed
            progress.update(tasks[key], completed=completed, total=total)

        problem, records = run_demo(
            steps=steps,
            record_every=record_every,
            seed=seed,
            dtype=DTYPES[dtype],
            on_progress=on_progress,
        )
        finish_all()
    seconds = time.perf_counter() - start
    title = (
        f"{DEMO_PROBLEM}: D = {problem.num_params:,}, "
        f"N = {problem.train_data.num_samples:,} train / "
        f"{problem.test_data.num_samples:,} test, {dtype}"
    )
    render_records(records, console, title=title)
    console.print(f"Done in {seconds:.1f} s.")
    return 0

"""``curvlab train``: train a problem and record it in a run folder.

The options, a YAML file and the run folder's stored config merge in
:func:`curvlab.runs.resolve_config`; a larger ``--steps`` or more
``--record-steps`` extend a stored run, other changes need ``--force``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID

from curvlab.cli import _options as opt
from curvlab.cli._common import (
    check_device,
    check_threads,
    error_printer,
    fmt,
    print_table,
    run_steps,
    torch_threads,
)
from curvlab.cli._options import option
from curvlab.experiments.training import TrainEvent, create_run, train_run
from curvlab.runs import ConfigError, RunFolder, resolve_config
from curvlab.runs.config import DTYPES, OPTIMIZERS

__all__ = ["command", "main", "render_metrics"]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def render_metrics(run: RunFolder, console: Console) -> None:
    """Print the recorded metrics of a run as a table."""
    config, rows = run.config, []
    for row in run.metrics():
        train, test = (
            [f"{row[f'{split}_loss']:.4f}", _percent(row.get(f"{split}_accuracy"))]
            for split in ("train", "test")
        )
        rows.append([str(row["step"]), *train, *test, fmt(row.get("gradient_norm"))])
    print_table(
        console,
        f"{config.problem}: {config.optimizer} (lr {config.lr:g}), batch "
        f"{config.batch_size}, seed {config.seed}, {config.dtype}",
        "‖∇L‖: norm of the gradient of the mean train loss (whole split).",
        ("step", "train loss", "train acc", "test loss", "test acc", "‖∇L‖"),
        rows,
    )


def _show(progress: Progress, task: TaskID, event: TrainEvent) -> None:
    values = event.values
    if event.kind == "start":
        progress.update(task, total=event.total, completed=event.index)
        if skipped := list(values["skipped"]):
            progress.console.print(f"Already recorded: steps {skipped}.")
        for problem in values.get("damaged", ()):
            progress.console.print(
                f"[yellow]Damaged:[/] {escape(problem)}; computing it again."
            )
        if values["resumed_from"] is not None:
            step = values["resumed_from"]
            progress.console.print(f"Resuming from the checkpoint at step {step}.")
    elif event.kind in ("step", "done"):
        progress.update(task, completed=event.index)
    elif event.kind == "record":
        progress.console.print(
            f"step {event.step}: train loss {values['train_loss']:.4f} "
            f"(acc {_percent(values['train_accuracy'])}), test loss "
            f"{values['test_loss']:.4f} (acc {_percent(values['test_accuracy'])})"
        )


def main(
    out: str | Path,
    options: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    force: bool = False,
    machine: opt.Machine = opt.MACHINE,
    deterministic: bool = True,
) -> int:
    """Train and record a run with a progress bar; print the metrics table.

    ``options`` (keyed by :class:`~curvlab.runs.TrainConfig` field, ``None``:
    not given) override the YAML ``config_file``; the rest as in :func:`command`.

    Returns:
        The exit code: 0 on success, 1 if training failed (diverged), 2 for
        invalid options, a config mismatch or a problem that cannot be built,
        130 when interrupted.
    """
    console, fail = Console(), error_printer(Console(stderr=True))
    out, data_dir = Path(out), machine.data_dir
    try:
        stored = None
        if not force and RunFolder.is_run_folder(out):
            stored = RunFolder.open(out).config
        config = resolve_config(options, file=config_file, stored=stored)
        device = check_device(machine.device)
        check_threads(machine.threads)
        run = create_run(config, out, force=force, data_dir=data_dir)
    except (ConfigError, FileNotFoundError, FileExistsError, NotImplementedError) as e:
        return fail(str(e))

    def where(step: int | None) -> str:
        checkpoints = run.done_steps("checkpoint")
        last = f" (last checkpoint: step {checkpoints[-1]})" if checkpoints else ""
        return f"at step {step}{last}"

    def call(on_progress) -> Any:
        options = {"device": device, "data_dir": data_dir}
        options |= {"deterministic": deterministic, "on_progress": on_progress}
        return train_run(run, config, **options)

    errors = (ConfigError, ValueError, FileNotFoundError, ImportError)
    errors += (NotImplementedError,)
    bar = {"show": _show, "total": config.steps, "where": where}
    start = time.perf_counter()
    with torch_threads(machine.threads):
        console.print(
            f"Training [bold]{escape(config.problem)}[/] with {config.optimizer} "
            f"(lr {config.lr:g}, batch {config.batch_size}, {config.steps} steps, "
            f"seed {config.seed}, {config.dtype}, {device}, "
            f"{torch.get_num_threads()} CPU thread(s)) into {escape(str(run.path))}."
        )
        result = run_steps("steps", call, None, console, fail, errors, **bar)
    if isinstance(result, int):
        return result
    if result.start_step is None:
        console.print("Nothing to do: every requested step is recorded.")
    render_metrics(run, console)
    seconds = time.perf_counter() - start
    console.print(f"Run folder: {escape(str(run.path))}. Done in {seconds:.1f} s.")
    return 0


@opt.group
class Config:
    """The options of :class:`~curvlab.runs.TrainConfig` (``None``: not given)."""

    problem = option(
        str, "Problem name (see curvlab.problems.names()).", "--problem", "-p"
    )
    optimizer = option(str, f"One of: {', '.join(OPTIMIZERS)}. [sgd]")
    lr = option(float, "Learning rate. [0.1 for sgd, 1e-3 otherwise]")
    steps = option(int, "Number of optimizer steps. [1000]")
    batch_size = option(int, "Train samples per step. [128]")
    record_steps = option(
        str,
        "Steps to record, e.g. 0,100,500 or 0:1000:100 (stop included); the last "
        "step is always recorded. [0 and --steps]",
    )
    seed = option(int, "Seed of model, split, batch order and dropout. [0]")
    dtype = option(str, f"One of: {', '.join(DTYPES)}. [float32]")
    num_samples = option(int, "Train on a class-balanced subset of this many samples.")
    eval_batch_size = option(int, "Batch size of evaluation and gradient passes.")
    momentum = option(float, "SGD momentum. [0]")
    weight_decay = option(float, "Weight decay of the optimizer. [0]")
    checkpoint_every = option(
        int, "Also checkpoint every this many steps (for resuming)."
    )
    record_gradients = option(
        bool,
        "Record the full-data train gradient at each recorded step. [yes]",
        "--record-gradients/--no-record-gradients",
    )


CONFIG = Config()


@opt.grouped
def command(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "--run",
            help="Run folder: created, or resumed when it holds this run.",
        ),
    ],
    options: Config = CONFIG,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="YAML file of these options; the command line wins."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Delete an existing run in --out and restart."),
    ] = False,
    machine: opt.Machine = opt.MACHINE,
    deterministic: Annotated[
        bool,
        typer.Option(
            help="Deterministic CUDA kernels (resumed runs match bit for bit; "
            "may be slower)."
        ),
    ] = True,
) -> None:
    """Train a problem and record parameters, gradients and metrics in a run folder.

    At each recorded step (before its update) the run folder gets the
    parameters and the gradient of the mean train loss over the whole train
    split (HDF5), loss and accuracy on train and test (metrics.csv), and a
    checkpoint. Run the command again to resume after an interruption; later
    commands read the folder with --run RUN_DIR.
    """
    values = vars(options).copy()
    optimizer = {name: values.pop(name) for name in ("momentum", "weight_decay")}
    optimizer = {name: value for name, value in optimizer.items() if value is not None}
    values["optimizer_options"] = optimizer or None
    raise typer.Exit(main(out, values, config, force, machine, deterministic))

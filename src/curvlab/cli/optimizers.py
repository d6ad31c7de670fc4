"""``curvlab optimizers``: HesScale's optimization study over a grid of runs.

Runs :func:`curvlab.experiments.optimizers.optimizer_study`, on a loopback Dask
cluster (``--workers``) or a scheduler's (``--scheduler``) if asked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from curvlab.cli import _common as common
from curvlab.cli import _options as opt
from curvlab.experiments.optimizers import LABELS

__all__ = ["command", "parse_lrs"]


def parse_lrs(specs: list[str] | None) -> dict[str, list[float]] | None:
    """Read ``--lr METHOD=LR,LR,...`` options.

    Args:
        specs: The option values, e.g. ``["adam=1e-3,1e-4", "sgd=0.1"]``.

    Returns:
        Learning rates per method, or ``None`` when none were given.

    Raises:
        ValueError: For a malformed value or a method given twice.

    Example:
        >>> parse_lrs(["adam=1e-3,1e-4", "sgd=0.1"])
        {'adam': [0.001, 0.0001], 'sgd': [0.1]}
    """
    if not specs:
        return None
    out: dict[str, list[float]] = {}
    for spec in specs:
        method, sep, values = spec.partition("=")
        method = method.strip().lower()
        if not sep or not method or not values.strip():
            raise ValueError(
                f"--lr takes METHOD=LR,LR,... (e.g. adam=1e-3,1e-4). Got {spec!r}."
            )
        if method in out:
            raise ValueError(f"--lr gives the learning rates of {method} twice.")
        try:
            out[method] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"--lr {spec!r}: learning rates must be numbers, comma-separated."
            ) from None
    return out


@contextlib.contextmanager
def _dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """A client on ``scheduler``, on a loopback ``LocalCluster``, or ``None``."""
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise ValueError("Give --workers (a local cluster) or --scheduler, not both.")
    try:
        import distributed
    except ImportError:
        raise ValueError(
            "--workers and --scheduler need dask[distributed]: "
            "pip install 'dask[distributed]'."
        ) from None
    if scheduler is not None:
        with distributed.Client(scheduler) as client:
            yield client
        return
    with (
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _unit_line(step: int, values: dict[str, Any]) -> str:
    label = f"{LABELS[values['method']]} lr {values['lr']:g} seed {values['seed']}"
    if values["diverged_at"] is not None:
        return f"{label}: [red]diverged at step {values['diverged_at']}[/]"
    accuracy = values["final_test_accuracy"]
    accuracy_text = "-" if accuracy is None else f"{100 * accuracy:.2f}%"
    return (
        f"{label}: final train loss {common.fmt(values['final_train_loss'])}, "
        f"test accuracy {accuracy_text}"
    )


def _print_table(study, console: Console) -> None:
    settings, fmt, rows = study.settings, common.fmt, []
    for row in study.table:
        accuracy, se = row["final_test_accuracy"], row["final_test_accuracy_se"] or 0
        loss = f"{fmt(row['final_train_loss'])} ± {fmt(row['final_train_loss_se'], 2)}"
        test = "-" if accuracy is None else f"{100 * accuracy:.2f} ± {100 * se:.2f}%"
        label, lr = LABELS[row["method"]], fmt(row["best_lr"], 3)
        diverged = f"{row['diverged']}/{row['runs']}"
        spent = [fmt(row["seconds_per_step"], 3), fmt(row["time_vs_sgd"], 3)]
        rows.append([label, lr, loss, test, diverged, *spent])
    criterion = settings.criterion.replace("_", " ")
    title = f"{settings.problem}: {settings.steps} steps, batch {settings.batch_size}"
    title += f", {settings.num_seeds} seeds (best lr by {criterion})"
    headers = ("method", "best lr", "final train loss", "test acc.", "diverged")
    common.print_table(
        console,
        title,
        "mean ± standard error over seeds at each method's best lr",
        (*headers, "s/step", "x SGD"),
        rows,
    )


@opt.group
class Grid:
    """The study's grid and runs (``None``: the default of OptimizersSettings)."""

    problem = opt.option(str, "Problem name. Default: mnist5k_mlp.")
    methods = opt.option(
        str,
        "Comma-separated subset of sgd, adam, adahesscale, adahesscalegn, "
        "adahessian. Default: all.",
    )
    lr = opt.option(
        list[str],
        "Learning-rate grid of one method, METHOD=LR,LR,... (repeat the option per "
        "method). Default: 5 rates per method, DEFAULT_LRS in "
        "curvlab.experiments.optimizers.",
        "--lr",
    )
    seeds = opt.option(int, "Seeds per (method, lr). Default: 8.", min=1)
    steps = opt.option(int, "Optimizer steps per run. Default: 2000.", min=1)
    batch_size = opt.option(int, "Samples per step. Default: 32.", min=1)
    eval_every = opt.option(
        int, "Record loss and accuracy every N steps. Default: 100.", min=1
    )
    num_samples = opt.option(
        int, "Train on a balanced subset of N samples. Default: all.", min=1
    )
    dtype = opt.option(str, "float32 or float64. Default: float32.")
    criterion = opt.option(
        str,
        "Best lr by final_loss (final training loss, mean over seeds) or mean_loss "
        "(mean over the curve, as HesScale's code). Default: final_loss.",
    )


@opt.grouped
def command(
    out: Annotated[
        Path, typer.Option(help="Study folder; running again resumes the study.")
    ],
    grid: Grid,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Retrain stored runs from scratch, also with other settings.",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train runs in parallel on a loopback Dask cluster of N "
            "single-thread worker processes (each run uses --threads, default 1).",
        ),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a Dask scheduler to train on.")
    ] = None,
    machine: opt.Machine = opt.MACHINE,
) -> None:
    """HesScale's optimization study: AdaHesScale against SGD, Adam and AdaHessian.

    Trains every (method, learning rate, seed) as a resumable run in OUT/runs/,
    picks each method's best learning rate, and writes the learning curves
    (mean ± standard error over seeds, against steps and training time), the
    table of final values, the time per step relative to SGD and the findings
    to OUT/report/. A diverging run is recorded as diverged and the study goes
    on.
    """
    from curvlab.experiments.optimizers import OptimizersSettings, optimizer_study
    from curvlab.runs.stage import StageEvent

    console = Console()
    fail = common.error_printer(Console(stderr=True))
    try:
        lrs = parse_lrs(grid.lr)
    except ValueError as error:
        raise typer.Exit(common.option_error(error)) from None
    names, methods = None, grid.methods
    if methods is not None:
        names = [m.strip().lower() for m in methods.split(",") if m.strip()]
    g = grid
    settings = OptimizersSettings(
        g.problem, names, lrs, g.seeds, g.steps, g.batch_size, g.eval_every,
        g.num_samples, g.dtype, g.criterion,
    )  # fmt: skip
    device, data_dir, threads = machine.device, machine.data_dir, machine.threads
    try:
        common.check_device(device)
        common.check_threads(threads)
    except (ValueError, RuntimeError) as error:  # a ConfigError is a ValueError
        raise typer.Exit(fail(str(error))) from None
    if workers is not None and threads is None:
        threads = 1

    def call(on_progress):
        def adapt(event: StageEvent) -> None:
            if event.kind == "start":
                skipped = len(event.values["skipped"])
                if skipped:
                    console.print(
                        f"Already stored: {skipped} of {skipped + event.total} runs."
                    )
                on_progress(StageEvent("start", None, 0, event.total, {"skipped": []}))
            elif event.kind == "unit":
                step = event.values["steps_done"]
                on_progress(
                    StageEvent("step", step, event.index, event.total, event.values)
                )
            else:
                on_progress(event)

        with _dask_client(workers, scheduler) as client:
            return optimizer_study(
                out,
                settings,
                force=force,
                client=client,
                device=device,
                data_dir=data_dir,
                threads=threads,
                on_progress=adapt,
            )

    # SettingsConflictError and ConfigError are ValueErrors, FileExistsError an OSError
    errors = (ValueError, TypeError, NotImplementedError, OSError)
    study = common.run_steps("optimizers", call, _unit_line, console, fail, errors)
    if isinstance(study, int):
        raise typer.Exit(study)
    if not study.computed:
        console.print("Nothing to do: every run of the grid is stored.")
    _print_table(study, console)
    for sentence in study.findings:
        console.print(f"- {escape(sentence)}", soft_wrap=True)
    report = study.files["findings"].parent
    console.print(
        f"Report in {escape(str(report))} (table.csv, grid.csv, curves.csv, "
        f"findings.md, optimizers.png). Done in {study.seconds:.1f} s.",
        soft_wrap=True,
    )

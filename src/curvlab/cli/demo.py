"""``curvlab demo``: :func:`curvlab.experiments.demo.demo_run` with progress bars.

The demo (and with it matplotlib) is imported only when it runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from curvlab.cli._common import (
    Fail,
    error_printer,
    fmt,
    progress_bar,
    run_guarded,
    torch_threads,
)
from curvlab.cli._options import DType
from curvlab.cli.check import DTYPES
from curvlab.runs import ConfigError, ConfigMismatchError
from curvlab.runs.stage import SettingsConflictError

if TYPE_CHECKING:
    from curvlab.experiments.demo import DemoEvent, DemoSettings

__all__ = ["command", "main"]

_LABELS = {"spectrum": "spectra", "exhaustive": "exhaustive check"}
_LABELS |= {"hesscale": "HesScale"}
_REFUSED = (ConfigMismatchError, ConfigError, SettingsConflictError, FileExistsError)


def main(
    *,
    out: str | Path = "runs/demo",
    steps: int = 1000,
    seed: int = 0,
    dtype: str | DType = "float32",
    threads: int | None = 1,
    quick: bool = False,
    console: Console | None = None,
    error_console: Console | None = None,
) -> int:
    """Run the demo with progress bars and print where the report is.

    The arguments are :func:`command`'s options (``steps`` is ignored with
    ``quick``; ``threads=None`` keeps the current setting), and the consoles for
    output and errors (default: standard output and standard error).

    Returns:
        The exit code: 0 on success, 1 if a product was NaN/Inf, 2 for invalid
        arguments or a run folder that holds another run, 130 when interrupted.
    """
    from curvlab.experiments.demo import DemoSettings, quick_settings

    dtype = getattr(dtype, "value", dtype)
    fail = error_printer(error_console or Console(stderr=True))
    if dtype not in DTYPES:
        return fail(f"dtype must be one of {list(DTYPES)}. Got {dtype!r}.")
    if steps < 1 or (threads is not None and threads < 1):
        return fail(
            f"--steps and --threads must be at least 1. Got {steps} and {threads}."
        )
    settings = (
        quick_settings(seed=seed, dtype=dtype)
        if quick
        else DemoSettings(steps=steps, seed=seed, dtype=dtype)
    )
    with torch_threads(threads):
        try:
            return _run(Path(out), settings, console or Console(), fail)
        except _REFUSED as error:
            return fail(f"{error}\nChoose another --out or delete the folder.")


def _on_progress(progress: Progress, current: dict[str, Any]):
    """Draw the demo's events: a line and a bar per stage, a line when it ends."""
    tasks: dict[str, TaskID] = {}

    def show(event: DemoEvent) -> None:
        label = _LABELS.get(event.stage, event.stage)
        if event.kind == "start":
            current["label"] = label
            text = f"[bold]{label}[/]: {escape(event.message)}"
            progress.console.print(text, highlight=False)
            tasks[event.stage] = progress.add_task(label, total=event.total)
        elif event.kind == "progress":
            progress.update(
                tasks[event.stage], completed=event.completed, total=event.total
            )
        elif event.kind == "done":
            task = progress.tasks[tasks[event.stage]]
            done = task.total if task.total is not None else task.completed
            progress.update(tasks[event.stage], total=done, completed=done)
            skipped = "skipped, " if event.values.get("status") == "skipped" else ""
            seconds = event.values.get("seconds", 0.0)
            text = f"  {label}: {escape(event.message)} ({skipped}{seconds:.1f} s)"
            progress.console.print(text, highlight=False)

    return show


def _run(out: Path, settings: DemoSettings, console: Console, fail: Fail) -> int:
    from curvlab.experiments.demo import demo_run

    console.print(
        f"curvlab demo on [bold]{settings.problem}[/] into [bold]{escape(str(out))}"
        f"[/] ({settings.dtype}, {torch.get_num_threads()} CPU thread(s)); "
        "finished stages are skipped."
    )
    start = time.perf_counter()
    current = {"label": "the start"}
    with progress_bar(console) as progress:
        show = _on_progress(progress, current)
        outcome = run_guarded(
            lambda: demo_run(out, settings, on_progress=show),
            progress,
            fail,
            (),
            lambda: f"during {current['label']}",
        )
    if isinstance(outcome, int):
        return outcome
    report, summary = outcome
    seconds = time.perf_counter() - start
    for line in _findings(summary["findings"]):
        console.print(f"• {escape(line)}", highlight=False)
    table = Table(title="Wall time of this call", show_header=True)
    table.add_column("stage")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for name, stage in summary["stages"].items():
        label = _LABELS.get(name, name)
        table.add_row(label, stage["status"], f"{stage['seconds']:.1f}")
    console.print(table)
    console.print(f"Report: [bold]{escape(str(report))}[/]")
    console.print(f"HTML:   {escape(str(summary['html']))}")
    console.print(f"Done in {seconds:.1f} s.")
    return 0


def _findings(findings: dict[str, Any]) -> list[str]:
    first, last = (str(step) for step in (findings["steps"][0], findings["steps"][-1]))
    top, layers = findings["spectrum"]["top_eigenvalue"], findings["layers"]
    overlap, exhaustive = findings["overlap"], findings["exhaustive"]
    return [
        f"Top Hessian eigenvalue: {fmt(top[first])} at step {first}, "
        f"{fmt(top[last])} at step {last}.",
        f"Layer closest to the full spectrum at step {last}: "
        f"{layers['closest_layer']}; farthest: {layers['farthest_layer']}.",
        f"Magnitude mask of size {overlap['k']} vs top-{overlap['k']} eigenspace at "
        f"step {last}: {fmt(overlap['overlap_ratio'][last])} times chance.",
        f"Sketch vs exact λ₁ at step {last}: {fmt(exhaustive['lambda_1_sketch'][last])}"
        f" vs {fmt(exhaustive['lambda_1_exact'][last])}; eigenspace overlap "
        f"{fmt(exhaustive['basis_overlap'][last])}.",
        "Diagonal estimators, best first: "
        f"{', '.join(findings['hesscale']['ranking'])}.",
    ]


def command(
    out: Annotated[
        Path, typer.Option(help="Run folder; running again skips finished stages.")
    ] = Path("runs/demo"),
    steps: Annotated[int, typer.Option(min=1, help="Number of SGD steps.")] = 1000,
    seed: Annotated[
        int, typer.Option(help="Seed of the model, split, batches and sketches.")
    ] = 0,
    dtype: Annotated[
        DType, typer.Option(help="float32 is about twice as fast as float64.")
    ] = DType.float32,
    threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="PyTorch CPU threads. 1 loses little on these small products and "
            "stays fast when other processes share the cores.",
        ),
    ] = 1,
    quick: Annotated[
        bool,
        typer.Option(help="A tiny configuration that runs in seconds (for tests)."),
    ] = False,
) -> None:
    """Train digits_mlp, measure its curvature over training, write a report.

    Records the run in --out, then computes the Hessian's spectra (full and
    per layer), the overlap of magnitude masks with the top eigenspace, the
    sketch-vs-exact check and a HesScale comparison, and writes report.md and
    report.html with the figures. A few minutes on 2 CPU cores.
    """
    options = {"out": out, "steps": steps, "seed": seed, "dtype": dtype}
    raise typer.Exit(main(**options, threads=threads, quick=quick))

"""``curvlab hesscale-cost``: time per training step against depth.

The work is :func:`curvlab.experiments.hesscale_cost.hesscale_cost`; this module
parses the options, shows its progress, prints the step times as multiples of a
gradient step in a markdown table, and writes into the output folder (tables
and figure: :mod:`curvlab.experiments.hesscale_plots`):

- ``hesscale_cost.csv``: one row per depth and method (and the unit), with the
  median and the fastest seconds, the multiple of a gradient step, the number
  of timed steps and why a method was skipped;
- ``hesscale_cost.md``: the settings and the table;
- ``hesscale_cost.png``: seconds per step against the parameter count (log-log)
  beside the multiples of a gradient step against depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from curvlab.cli._common import (
    StudyOutOption,
    StudyThreadsOption,
    option_error,
    run_study,
)

__all__ = [
    "CSV_NAME",
    "MARKDOWN_NAME",
    "PNG_NAME",
    "command",
    "main",
    "parse_list",
]

CSV_NAME = "hesscale_cost.csv"
MARKDOWN_NAME = "hesscale_cost.md"
PNG_NAME = "hesscale_cost.png"
FILE_NAMES = (CSV_NAME, MARKDOWN_NAME, PNG_NAME)


def parse_list(text: str, label: str) -> list[str]:
    """Split a comma-separated option value into its stripped, non-empty items.

    Args:
        text: E.g. ``"1,2, 4"``.
        label: Option name for the error message.

    Returns:
        The items.

    Raises:
        ValueError: If there are none.
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{label} needs at least one comma-separated value.")
    return items


def main(
    *,
    out: str | Path,
    depths: Sequence[int] | None = None,
    width: int = 512,
    batch_size: int = 1,
    repeats: int = 30,
    methods: Sequence[str] | None = None,
    max_step_seconds: float = 10.0,
    threads_count: int | None = 1,
    console: Console | None = None,
    error_console: Console | None = None,
) -> int:
    """Run the cost study, print its table and write its files.

    Args:
        out: Output folder (created if missing).
        depths: Numbers of hidden layers; ``None`` for
            :data:`~curvlab.experiments.hesscale_cost.DEFAULT_DEPTHS`.
        width: Hidden units.
        batch_size: Samples per step.
        repeats: Timed steps per method and depth.
        methods: Names from :data:`~curvlab.experiments.hesscale_cost.COST_METHODS`;
            ``None`` for all.
        max_step_seconds: Skip a method once one of its steps takes longer.
        threads_count: PyTorch CPU threads during the study (restored
            afterwards); ``None`` keeps the current setting.
        console: Where to print (default: standard output).
        error_console: Where to print errors (default: standard error).

    Returns:
        The exit code: 0 on success, 2 for invalid arguments.
    """
    # imported here: matplotlib and curvlab.diagonal load only for this command
    from curvlab.experiments.hesscale_cost import DEFAULT_DEPTHS, hesscale_cost
    from curvlab.experiments.hesscale_plots import (
        cost_markdown,
        plot_cost,
        write_cost_csv,
    )

    depths = list(DEFAULT_DEPTHS if depths is None else depths)

    def study(progress: Progress):
        task = progress.add_task("timing", total=len(depths) * repeats)
        done: dict[int, int] = {}

        def on_progress(depth: int, what: str, completed: int, total: int):
            done[depth] = completed
            progress.update(
                task,
                description=f"depth {depth}: {what}",
                completed=sum(done.values()),
            )

        return hesscale_cost(
            depths=depths,
            width=width,
            batch_size=batch_size,
            repeats=repeats,
            methods=methods,
            max_step_seconds=max_step_seconds,
            on_progress=on_progress,
        )

    return run_study(
        out,
        FILE_NAMES,
        threads_count,
        study,
        (cost_markdown, write_cost_csv, plot_cost),
        console,
        error_console,
    )


def command(
    out: StudyOutOption,
    depths: Annotated[
        str, typer.Option(help="Comma-separated numbers of hidden layers.")
    ] = "1,2,4,8,16",
    width: Annotated[int, typer.Option(min=1, help="Hidden units.")] = 512,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per step.")] = 1,
    repeats: Annotated[
        int, typer.Option(min=1, help="Timed steps per method and depth.")
    ] = 30,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated subset of: SGD, Adam, AdaHesScale, "
            "AdaHesScaleGN, GGN-MC, exact GGN diag., exact Hessian diag. "
            "(default: all)."
        ),
    ] = None,
    max_step_seconds: Annotated[
        float,
        typer.Option(min=0.0, help="Skip a method once one step takes longer."),
    ] = 10.0,
    threads: StudyThreadsOption = 1,
) -> None:
    """Time a training step against depth, in gradient steps (HesScale study).

    64 inputs, Linear to --width, depth x [Linear(width, width), Tanh], Linear
    to 100 outputs, no biases, MSE, batch size 1: median time of a whole step
    of SGD, Adam, AdaHesScale, AdaHesScaleGN, GGN-MC and the exact GGN and
    Hessian diagonals (each with an AdaHesScale update), divided by the time
    of a gradient. Prints the table; writes CSV, markdown and a PNG into --out.
    """
    try:
        depth_list = [int(d) for d in parse_list(depths, "--depths")]
        method_list = None if methods is None else parse_list(methods, "--methods")
    except ValueError as error:
        raise typer.Exit(option_error(error)) from None
    raise typer.Exit(
        main(
            out=out,
            depths=depth_list,
            width=width,
            batch_size=batch_size,
            repeats=repeats,
            methods=method_list,
            max_step_seconds=max_step_seconds,
            threads_count=threads,
        )
    )

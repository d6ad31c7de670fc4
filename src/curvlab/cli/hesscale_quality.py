"""``curvlab hesscale-quality``: diagonal estimates against the exact Hessian diagonal.

The work is :func:`curvlab.experiments.hesscale_quality.hesscale_quality`; this
module parses the options, shows its progress, prints the normalised errors as a
markdown table, and writes into the output folder (tables and figure:
:mod:`curvlab.experiments.hesscale_plots`):

- ``hesscale_quality.csv``: per estimator, the normalised and the raw mean L1
  error of each layer and in total, and the range of the per-seed ratios;
- ``hesscale_quality.md``: the settings and the table;
- ``hesscale_quality.png``: the normalised total errors as bars (log scale, one
  dot per seed) beside the raw per-layer errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from curvlab.cli._common import (
    StudyOutOption,
    StudyThreadsOption,
    error_printer,
    run_study,
)

__all__ = ["CSV_NAME", "MARKDOWN_NAME", "PNG_NAME", "command", "main"]

CSV_NAME = "hesscale_quality.csv"
MARKDOWN_NAME = "hesscale_quality.md"
PNG_NAME = "hesscale_quality.png"
FILE_NAMES = (CSV_NAME, MARKDOWN_NAME, PNG_NAME)


def main(
    *,
    out: str | Path,
    seeds: int = 3,
    samples: int = 100,
    width: int = 64,
    epochs: int = 2,
    threads_count: int | None = 1,
    console: Console | None = None,
    error_console: Console | None = None,
) -> int:
    """Run the approximation-quality study, print its table and write its files.

    Args:
        out: Output folder (created if missing).
        seeds: Number of seeds; runs seeds ``0, ..., seeds - 1``.
        samples: Train samples measured per seed (batch size 1).
        width: Units per hidden layer of the 64-w-w-w-10 tanh MLP.
        epochs: SGD epochs before measuring (lr 1e-3, batch size 64).
        threads_count: PyTorch CPU threads during the study (restored
            afterwards); ``None`` keeps the current setting.
        console: Where to print (default: standard output).
        error_console: Where to print errors (default: standard error).

    Returns:
        The exit code: 0 on success, 2 for invalid arguments.
    """
    # imported here: matplotlib and curvlab.diagonal load only for this command
    from curvlab.experiments.hesscale_plots import (
        plot_quality,
        quality_markdown,
        write_quality_csv,
    )
    from curvlab.experiments.hesscale_quality import hesscale_quality

    error_console = error_console or Console(stderr=True)
    if (
        seeds < 1
        or samples < 1
        or width < 1
        or epochs < 0
        or (threads_count is not None and threads_count < 1)
    ):
        return error_printer(error_console)(
            "--seeds, --samples, --width and --threads must be at least 1 and "
            f"--epochs at least 0. Got {seeds}, {samples}, {width}, "
            f"{threads_count} and {epochs}."
        )

    def study(progress: Progress):
        task = progress.add_task("samples", total=seeds * samples)

        def on_progress(seed: int, completed: int, total: int) -> None:
            # seeds run in order 0, 1, ...: ``seed`` of them are done
            progress.update(
                task,
                description=f"seed {seed}: samples",
                completed=seed * total + completed,
            )

        return hesscale_quality(
            seeds=range(seeds),
            num_samples=samples,
            width=width,
            epochs=epochs,
            on_progress=on_progress,
        )

    return run_study(
        out,
        FILE_NAMES,
        threads_count,
        study,
        (quality_markdown, write_quality_csv, plot_quality),
        console,
        error_console,
    )


def command(
    out: StudyOutOption,
    seeds: Annotated[
        int, typer.Option(min=1, help="Number of seeds (runs seeds 0, 1, ...).")
    ] = 3,
    samples: Annotated[
        int,
        typer.Option(min=1, help="Train samples measured per seed (batch size 1)."),
    ] = 100,
    width: Annotated[
        int, typer.Option(min=1, help="Units per hidden layer (the paper: 64).")
    ] = 64,
    epochs: Annotated[
        int,
        typer.Option(min=0, help="SGD epochs before measuring (lr 1e-3, batch 64)."),
    ] = 2,
    threads: StudyThreadsOption = 1,
) -> None:
    """Compare diagonal Hessian estimates with the exact diagonal (HesScale study).

    On the sklearn digits, a 64-w-w-w-10 tanh MLP trained briefly with SGD:
    the L1 error against the exact Hessian diagonal, per layer and in total,
    of HesScale, HesScaleGN, BL89, GGN-MC(1), Hutchinson(1), the squared
    gradient and zero, averaged over samples (batch size 1) and seeds and
    normalised by HesScale's error. Prints the table; writes CSV, markdown and
    a PNG bar chart into --out.
    """
    raise typer.Exit(
        main(
            out=out,
            seeds=seeds,
            samples=samples,
            width=width,
            epochs=epochs,
            threads_count=threads,
        )
    )

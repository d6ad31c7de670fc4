"""``curvlab grassmann``: Grassmannian metrics on random and planted subspaces.

The work is :func:`curvlab.experiments.grassmann.grassmann_study`; this module
parses the options, shows its progress, prints the chance values at ``k/D =
0.2`` beside the paper's and the table of all cells as markdown, and writes into
the output folder (tables and figure:
:mod:`curvlab.experiments.grassmann_plots`):

- ``grassmann.csv``: per scenario, ratio and ``D``, the mean and standard
  deviation over trials of every normalised metric and of the overlap;
- ``grassmann.md``: the settings and both tables;
- ``grassmann.png``: one panel per quantity against ``D``, one line per
  scenario and ratio, with the paper's chance values as dotted lines.
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
from curvlab.experiments.grassmann import (
    DEFAULT_DIMS,
    DEFAULT_PLANTED,
    DEFAULT_RATIOS,
    DEFAULT_TRIALS,
    grassmann_study,
)

__all__ = [
    "CSV_NAME",
    "MARKDOWN_NAME",
    "PNG_NAME",
    "command",
    "main",
    "parse_numbers",
]

CSV_NAME = "grassmann.csv"
MARKDOWN_NAME = "grassmann.md"
PNG_NAME = "grassmann.png"
FILE_NAMES = (CSV_NAME, MARKDOWN_NAME, PNG_NAME)


def parse_numbers(text: str, name: str, kind: type = float) -> list:
    """Parse a comma-separated list of numbers.

    Args:
        text: The option's value, e.g. ``"250, 500"``.
        name: The option's name in messages, e.g. ``"--dims"``.
        kind: ``int`` or ``float``.

    Returns:
        The numbers, in order.

    Raises:
        ValueError: If an entry is no number of that kind or the list is empty.
    """
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise ValueError(f"{name} must be a comma-separated list. Got {text!r}.")
    try:
        return [kind(entry) for entry in entries]
    except ValueError:
        raise ValueError(
            f"{name} must be a comma-separated list of {kind.__name__}s. Got {text!r}."
        ) from None


def main(
    *,
    out: str | Path,
    dims: Sequence[int] = DEFAULT_DIMS,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    planted: Sequence[float] = DEFAULT_PLANTED,
    trials: int = DEFAULT_TRIALS,
    seed: int = 0,
    threads_count: int | None = 1,
    console: Console | None = None,
    error_console: Console | None = None,
) -> int:
    """Run the Grassmannian-metrics study, print its tables and write its files.

    Args:
        out: Output folder (created if missing).
        dims: Ambient dimensions ``D``.
        ratios: Ratios ``k/D`` in ``(0, 1]``.
        planted: Planted overlaps in ``[0, 1]`` (``rotated`` and ``shared``).
        trials: Pairs per cell.
        seed: Base seed.
        threads_count: PyTorch CPU threads during the study (restored
            afterwards); ``None`` keeps the current setting.
        console: Where to print (default: standard output).
        error_console: Where to print errors (default: standard error).

    Returns:
        The exit code: 0 on success, 2 for invalid arguments or an unwritable
        folder.
    """
    # imported here: matplotlib loads only for this command
    from curvlab.experiments.grassmann_plots import (
        grassmann_markdown,
        plot_grassmann,
        write_grassmann_csv,
    )

    def study(progress: Progress):
        task = progress.add_task("cells", total=None)

        def on_progress(completed: int, total: int) -> None:
            progress.update(task, completed=completed, total=total)

        return grassmann_study(
            dims,
            ratios,
            planted=planted,
            num_trials=trials,
            seed=seed,
            on_progress=on_progress,
        )

    return run_study(
        out,
        FILE_NAMES,
        threads_count,
        study,
        (grassmann_markdown, write_grassmann_csv, plot_grassmann),
        console,
        error_console,
        transient=True,
    )


def command(
    out: StudyOutOption,
    dims: Annotated[
        str, typer.Option(help="Comma-separated ambient dimensions D.")
    ] = "250,500,1000,2000",
    ratios: Annotated[
        str, typer.Option(help="Comma-separated ratios k/D in (0, 1].")
    ] = "0.05,0.2",
    planted: Annotated[
        str,
        typer.Option(help="Comma-separated planted overlaps in [0, 1]."),
    ] = "0.5",
    trials: Annotated[int, typer.Option(min=1, help="Pairs per cell.")] = 3,
    seed: Annotated[int, typer.Option(help="Base seed.")] = 0,
    threads: StudyThreadsOption = 1,
) -> None:
    """Grassmannian metrics on random masks, subspaces and planted overlaps.

    For each D and k/D: random subspace pairs, random masks against random
    subspaces, and planted pairs (all angles equal; a shared fraction of
    directions). Every normalised distance and the overlap, as a table (with
    the chance values at k/D = 0.2 beside the paper's); writes CSV, markdown
    and a PNG into --out.
    """
    try:
        dim_list = parse_numbers(dims, "--dims", int)
        ratio_list = parse_numbers(ratios, "--ratios")
        planted_list = parse_numbers(planted, "--planted")
    except ValueError as error:
        raise typer.Exit(option_error(error)) from None
    raise typer.Exit(
        main(
            out=out,
            dims=dim_list,
            ratios=ratio_list,
            planted=planted_list,
            trials=trials,
            seed=seed,
            threads_count=threads,
        )
    )

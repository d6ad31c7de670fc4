"""``curvlab grassmann``: Grassmannian metrics on random and planted subspaces.

The work is :func:`curvlab.experiments.grassmann.grassmann_study`, the files
``grassmann.csv``, ``.md`` and ``.png`` come from
:mod:`curvlab.experiments.grassmann_plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from curvlab.cli._common import StudyOutOption, StudyThreadsOption
from curvlab.cli._study import parse_lists, run_study_events
from curvlab.experiments.grassmann import (
    DEFAULT_DIMS,
    DEFAULT_PLANTED,
    DEFAULT_RATIOS,
    DEFAULT_TRIALS,
    grassmann_study,
)

__all__ = ["command", "main"]


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
    """Run the study, print its tables and write its files (options as the command's).

    Returns:
        The exit code: 0 on success, 2 for invalid arguments or an unwritable
        folder.
    """
    # imported here: matplotlib loads only for this command
    from curvlab.experiments import grassmann_plots as plots

    def call(on_progress):
        return grassmann_study(
            dims,
            ratios,
            planted=planted,
            num_trials=trials,
            seed=seed,
            on_progress=on_progress,
        )

    files = (plots.grassmann_markdown, plots.write_grassmann_csv, plots.plot_grassmann)
    return run_study_events(
        out,
        "grassmann",
        threads_count,
        call,
        files,
        console,
        error_console,
        label="cells",
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
    dims, ratios, planted = parse_lists(
        (dims, "--dims", int),
        (ratios, "--ratios", float),
        (planted, "--planted", float),
    )
    code = main(
        out=out,
        dims=dims,
        ratios=ratios,
        planted=planted,
        trials=trials,
        seed=seed,
        threads_count=threads,
    )
    raise typer.Exit(code)

"""``curvlab grassmann``: Grassmannian metrics on random and planted subspaces."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from curvlab.cli._common import StudyOutOption, StudyThreadsOption
from curvlab.cli._study import parse_lists, run_study_events
from curvlab.experiments.grassmann import grassmann_study


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
    # imported here: matplotlib loads only for this command
    from curvlab.experiments import grassmann_plots as plots

    dims, ratios, planted = parse_lists(
        (dims, "--dims", int),
        (ratios, "--ratios", float),
        (planted, "--planted", float),
    )

    study = partial(
        grassmann_study, dims, ratios, planted=planted, num_trials=trials, seed=seed
    )

    files = (plots.grassmann_markdown, plots.write_grassmann_csv, plots.plot_grassmann)
    code = run_study_events(
        out, "grassmann", threads, study, files, label="cells", transient=True
    )
    raise typer.Exit(code)

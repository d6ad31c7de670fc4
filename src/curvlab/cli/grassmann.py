"""``curvlab grassmann``: Grassmannian metrics on random and planted subspaces."""

from __future__ import annotations

from functools import partial

import typer

from curvlab.cli._options import StudyOutOption, StudyThreadsOption, group, grouped
from curvlab.cli._options import option as opt
from curvlab.cli._study import parse_lists, run_study
from curvlab.experiments.grassmann import grassmann_study


@group
class Grid:
    """The study's cells (comma-separated lists, parsed by the command)."""

    dims = opt(
        str, "Comma-separated ambient dimensions D.", default="250,500,1000,2000"
    )
    ratios = opt(str, "Comma-separated ratios k/D in (0, 1].", default="0.05,0.2")
    planted = opt(str, "Comma-separated planted overlaps in [0, 1].", default="0.5")
    trials = opt(int, "Pairs per cell.", min=1, default=3)
    seed = opt(int, "Base seed.", default=0)


@grouped
def command(out: StudyOutOption, grid: Grid, threads: StudyThreadsOption = 1) -> None:
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
        (grid.dims, "--dims", int),
        (grid.ratios, "--ratios", float),
        (grid.planted, "--planted", float),
    )
    study = partial(
        grassmann_study,
        dims,
        ratios,
        planted=planted,
        num_trials=grid.trials,
        seed=grid.seed,
    )
    files = (plots.grassmann_markdown, plots.write_grassmann_csv, plots.plot_grassmann)
    kind = {"label": "cells", "transient": True}
    raise typer.Exit(run_study(out, "grassmann", threads, study, files, **kind))

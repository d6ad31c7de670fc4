"""``curvlab tic``: the Takeuchi Information Criterion at each recorded step."""

from __future__ import annotations

from typing import Annotated

import typer

from curvlab.cli import _options as opt
from curvlab.cli._common import run_stage_command


@opt.grouped
def command(
    run: opt.RunOption,
    steps: opt.StepsOption = None,
    damping: Annotated[
        float | None, typer.Option(help="δ > 0 added to the GGN. [1e-3]")
    ] = None,
    num_probes: Annotated[
        int | None, typer.Option(min=3, help="Hutch++ probes (CG solves). [30]")
    ] = None,
    subset: opt.Subset = opt.SUBSET,
    force: opt.ForceStepsOption = False,
    machine: opt.Machine = opt.MACHINE,
) -> None:
    """TIC = tr((G + δI)⁻¹ C) and the generalization gap TIC/N at each step.

    G is the GGN and C the centered per-sample gradient covariance (1/N) on a
    class-balanced subset of the train split, by Hutch++ over CG solves, with
    standard errors. Stored in RUN_DIR/tic/ (rerunning skips
    finished steps); the figure goes to RUN_DIR/plots/tic.png.
    """
    from curvlab.experiments.tic import TICSettings, TICStage

    settings = TICSettings(damping, num_probes, **vars(subset))

    def stage(folder, problem):
        return TICStage(folder, settings, problem)

    figure = {"group": "num_data", "value": "gap", "error": "gap_std_error"}
    figure |= {"ylabel": "TIC / N"}
    code = run_stage_command("tic", stage, run, steps, force, machine, figure=figure)
    raise typer.Exit(code)

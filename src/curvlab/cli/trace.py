"""``curvlab trace``: the Hessian's and the GGN's trace at each recorded step."""

from __future__ import annotations

from typing import Annotated

import typer

from curvlab.cli import _options as opt
from curvlab.cli._common import run_stage_command

NumMatvecsOption = Annotated[
    int | None, typer.Option(min=3, help="Hutch++ products per trace. [90]")
]


@opt.grouped
def command(
    run: opt.RunOption,
    steps: opt.StepsOption = None,
    num_matvecs: NumMatvecsOption = None,
    subset: opt.Subset = opt.SUBSET,
    force: opt.ForceStepsOption = False,
    machine: opt.Machine = opt.MACHINE,
) -> None:
    """Trace of the Hessian and the GGN at each recorded step, by Hutch++.

    On a class-balanced subset of the train split, with the standard error of
    each estimate. Stored in RUN_DIR/trace/ (rerunning skips finished steps);
    the figure goes to RUN_DIR/plots/trace.png.
    """
    from curvlab.experiments.trace import TraceSettings, TraceStage

    settings = TraceSettings(num_matvecs, **vars(subset))

    def stage(folder, problem):
        return TraceStage(folder, settings, problem)

    figure = {"group": "operator", "value": "trace", "error": "std_error"}
    code = run_stage_command("trace", stage, run, steps, force, machine, figure=figure)
    raise typer.Exit(code)

"""``curvlab hesscale-cost``: time per training step against depth."""

from __future__ import annotations

from functools import partial

import typer

from curvlab.cli._options import StudyOutOption, StudyThreadsOption, group, grouped
from curvlab.cli._options import option as opt
from curvlab.cli._study import parse_lists, run_study


@group
class Cost:
    """The networks and the timing."""

    depths = opt(str, "Comma-separated numbers of hidden layers.", default="1,2,4,8,16")
    width = opt(int, "Hidden units.", min=1, default=512)
    batch_size = opt(int, "Samples per step.", min=1, default=1)
    repeats = opt(int, "Timed steps per method and depth.", min=1, default=30)
    methods = opt(
        str,
        "Comma-separated subset of: SGD, Adam, AdaHesScale, AdaHesScaleGN, GGN-MC, "
        "exact GGN diag., exact Hessian diag. (default: all).",
    )
    max_step_seconds = opt(
        float, "Skip a method once one step takes longer.", min=0.0, default=10.0
    )


@grouped
def command(out: StudyOutOption, cost: Cost, threads: StudyThreadsOption = 1) -> None:
    """Time a training step against depth, in gradient steps (HesScale study).

    64 inputs, Linear to --width, depth x [Linear(width, width), Tanh], Linear
    to 100 outputs, no biases, MSE, batch size 1: median time of a whole step
    of SGD, Adam, AdaHesScale, AdaHesScaleGN, GGN-MC and the exact GGN and
    Hessian diagonals (each with an AdaHesScale update), divided by the time
    of a gradient. Prints the table; writes CSV, markdown and a PNG into --out.
    """
    # imported here: matplotlib and curvlab.diagonal load only for this command
    from curvlab.experiments import hesscale_plots as plots
    from curvlab.experiments.hesscale_cost import hesscale_cost

    depths, methods = parse_lists(
        (cost.depths, "--depths", int), (cost.methods, "--methods", str)
    )
    study = partial(
        hesscale_cost,
        depths=depths,
        width=cost.width,
        batch_size=cost.batch_size,
        repeats=cost.repeats,
        methods=methods,
        max_step_seconds=cost.max_step_seconds,
    )
    files = (plots.cost_markdown, plots.write_cost_csv, plots.plot_cost)
    raise typer.Exit(
        run_study(out, "hesscale_cost", threads, study, files, label="timing")
    )

"""``curvlab hesscale-cost``: time per training step against depth."""

from __future__ import annotations

from typing import Annotated

import typer

from curvlab.cli._common import StudyOutOption, StudyThreadsOption
from curvlab.cli._study import parse_lists, run_study_events


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
    # imported here: matplotlib and curvlab.diagonal load only for this command
    from curvlab.experiments import hesscale_plots as plots
    from curvlab.experiments.hesscale_cost import hesscale_cost

    depths, methods = parse_lists(
        (depths, "--depths", int), (methods, "--methods", str)
    )

    def call(on_progress):
        return hesscale_cost(
            depths=depths,
            width=width,
            batch_size=batch_size,
            repeats=repeats,
            methods=methods,
            max_step_seconds=max_step_seconds,
            on_progress=on_progress,
        )

    files = (plots.cost_markdown, plots.write_cost_csv, plots.plot_cost)
    code = run_study_events(out, "hesscale_cost", threads, call, files, label="timing")
    raise typer.Exit(code)

"""``curvlab trace``: the Hessian's and the GGN's trace at each recorded step."""

from __future__ import annotations

from typing import Annotated

import typer

from curvlab.cli import _common as common


def command(
    run: common.RunOption,
    steps: common.StepsOption = None,
    num_matvecs: Annotated[
        int | None, typer.Option(min=3, help="Hutch++ products per trace. [90]")
    ] = None,
    samples_per_class: common.SamplesPerClassOption = None,
    seed: common.SeedOption = None,
    dtype: common.RunDtypeOption = None,
    force: common.ForceStepsOption = False,
    device: common.DeviceOption = "cpu",
    data_dir: common.DataDirOption = None,
    threads: common.ThreadsOption = None,
) -> None:
    """Trace of the Hessian and the GGN at each recorded step, by Hutch++.

    On a class-balanced subset of the train split, with the standard error of
    each estimate. Stored in RUN_DIR/trace/ (rerunning skips finished steps);
    the figure goes to RUN_DIR/plots/trace.png.
    """
    from curvlab.experiments.stage_plots import plot_over_steps
    from curvlab.experiments.trace import TraceSettings, TraceStage

    settings = TraceSettings(num_matvecs, samples_per_class, seed, dtype)

    def figure(folder, result) -> str:
        options = {"group": "operator", "value": "trace", "error": "std_error"}
        return f"Figure: {plot_over_steps(folder, 'trace', **options)}."

    code = common.run_stage_command(
        "trace",
        lambda folder, problem: TraceStage(folder, settings, problem),
        render=figure,
        run=run,
        steps=steps,
        force=force,
        device=device,
        data_dir=data_dir,
        threads=threads,
    )
    raise typer.Exit(code)

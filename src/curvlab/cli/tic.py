"""``curvlab tic``: the Takeuchi Information Criterion at each recorded step."""

from __future__ import annotations

from typing import Annotated

import typer

from curvlab.cli import _common as common


def command(
    run: common.RunOption,
    steps: common.StepsOption = None,
    damping: Annotated[
        float | None, typer.Option(help="δ > 0 added to the GGN. [1e-3]")
    ] = None,
    num_probes: Annotated[
        int | None, typer.Option(min=3, help="Hutch++ probes (CG solves). [30]")
    ] = None,
    samples_per_class: common.SamplesPerClassOption = None,
    seed: common.SeedOption = None,
    dtype: common.RunDtypeOption = None,
    force: common.ForceStepsOption = False,
    device: common.DeviceOption = "cpu",
    data_dir: common.DataDirOption = None,
    threads: common.ThreadsOption = None,
) -> None:
    """TIC = tr((G + δI)⁻¹ C) and the generalization gap TIC/N at each step.

    G is the GGN and C the centered per-sample gradient covariance (1/N) on a
    class-balanced subset of the train split, by Hutch++ over CG solves, with
    standard errors. Stored in RUN_DIR/tic/ (rerunning skips
    finished steps); the figure goes to RUN_DIR/plots/tic.png.
    """
    from curvlab.experiments.stage_plots import plot_over_steps
    from curvlab.experiments.tic import TICSettings, TICStage

    settings = TICSettings(damping, num_probes, samples_per_class, seed, dtype)

    def figure(folder, result) -> str:
        options = {"group": "num_data", "value": "gap", "error": "gap_std_error"}
        path = plot_over_steps(folder, "tic", ylabel="TIC / N", **options)
        return f"Figure: {path}."

    code = common.run_stage_command(
        "tic",
        lambda folder, problem: TICStage(folder, settings, problem),
        render=figure,
        run=run,
        steps=steps,
        force=force,
        device=device,
        data_dir=data_dir,
        threads=threads,
    )
    raise typer.Exit(code)

"""``curvlab solve``: a measured sketch solved out of core."""

from __future__ import annotations

from typing import Annotated

import typer

from curvlab.cli import _cluster as cluster
from curvlab.cli import _common as common


def command(
    run: common.RunOption,
    step: Annotated[
        str | None, typer.Option(help="Measured steps, e.g. 100 or 0:1000:100. [all]")
    ] = None,
    split: Annotated[str, typer.Option(help="The Hessian's split.")] = "train",
    scheduler: cluster.SchedulerOption = None,
    workers: cluster.WorkersOption = 2,
    force: common.ForceStepsOption = False,
    threads: common.ThreadsOption = None,
) -> None:
    """Solve the measured SEIGH sketch of a step out of core.

    Streamed CholeskyQR2 over row blocks of the outer sketch (a Dask map-reduce
    with --scheduler), the small core problem in memory, the eigenvectors
    written to RUN_DIR/sketch_<split>/step_S/solve/ by row block, and the
    a-posteriori error from the stored probes.
    """
    from curvlab.experiments.sketch_stages import SolveStage

    def line(number: int, summary: dict) -> str:
        values = summary["eigenvalues"][:3]
        return (
            f"step {number}: λ {', '.join(common.fmt(v) for v in values)}, "
            f"relative error {common.fmt(summary['relative_error'])}"
        )

    def body(client) -> int:
        return common.run_stage_command(
            "solve",
            lambda folder, problem: SolveStage(folder, split, client=client),
            run=run,
            steps=step,
            force=force,
            device="cpu",
            data_dir=None,
            threads=threads,
            step_line=line,
            build=False,
        )

    code = cluster.on_cluster(body, scheduler, workers)
    raise typer.Exit(code)

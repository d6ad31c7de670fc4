"""``curvlab solve``: a measured sketch solved out of core."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from curvlab.cli import _options as opt
from curvlab.cli._cluster import Cluster, SchedulerOption, WorkersOption
from curvlab.cli._common import fmt, run_stage_command, summary_line


def _step_line(step: int, summary: dict) -> str:
    values = ", ".join(fmt(v) for v in summary["eigenvalues"][:3])
    return f"step {step}: λ {values}, relative error {fmt(summary['relative_error'])}"


def solve_steps(
    client: Any,
    run: str | Path,
    steps: str | None,
    force: bool,
    machine: opt.Machine,
    split: str,
    step_line=summary_line,
) -> int:
    """Solve the measured sketches of ``steps`` with ``client``; the exit code."""
    from curvlab.experiments.sketch_stages import SolveStage

    def stage(folder, problem):
        return SolveStage(folder, split, client=client)

    return run_stage_command(
        "solve", stage, run, steps, force, machine, step_line=step_line, build=False
    )


def command(
    run: opt.RunOption,
    step: Annotated[
        str | None, typer.Option(help="Measured steps, e.g. 100 or 0:1000:100. [all]")
    ] = None,
    split: Annotated[str, typer.Option(help="The Hessian's split.")] = "train",
    scheduler: SchedulerOption = None,
    workers: WorkersOption = 2,
    force: opt.ForceStepsOption = False,
    threads: opt.ThreadsOption = None,
) -> None:
    """Solve the measured SEIGH sketch of a step out of core.

    Streamed CholeskyQR2 over row blocks of the outer sketch (a Dask map-reduce
    with --scheduler), the small core problem in memory, the eigenvectors
    written to RUN_DIR/sketch_<split>/step_S/solve/ by row block, and the
    a-posteriori error from the stored probes.
    """
    where = (run, step, force, opt.Machine(threads=threads), split, _step_line)
    code = Cluster(scheduler, workers).run(lambda c: solve_steps(c, *where))
    raise typer.Exit(code)

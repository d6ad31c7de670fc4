"""``curvlab overlap``: magnitude masks against the top Hessian eigenspace.

``curvlab plot overlap --run RUN_DIR`` draws the stored results.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from curvlab.cli import _options as opt
from curvlab.cli._cluster import CLUSTER, Cluster
from curvlab.cli._common import fmt, print_table, run_stage_command
from curvlab.experiments.eigenbasis import DEFAULT_MAX_COLS, DEFAULT_MAX_EXACT_DIM
from curvlab.experiments.overlap import METHODS, OverlapSettings, OverlapStage
from curvlab.runs import RunFolder
from curvlab.runs.stage import StageRunResult

__all__ = ["command", "main", "main_distributed", "render_overlap"]

#: The line after a step (``str.format`` of its summary).
STEP_LINE = (
    "λ1 {eigenvalues[0]:.4g}, overlap@{overlap_at_num_outer[k]} "
    "{overlap_at_num_outer[magnitude]:.4g} ({overlap_at_num_outer[ratio]:.2f}x "
    "chance), {seconds[total]:.1f} s"
)


def render_overlap(run: RunFolder, result: StageRunResult, console: Console) -> str:
    """Print the results of an overlap run as a table; say where they are stored.

    The tables of skipped steps are read from ``run``.
    """
    settings = result.settings
    K = settings.num_outer
    ks = sorted({k for k in (10, 50, 100) if k < K} | {K})  # the paper's and K
    sketched = settings.method != "exact"
    how = f"SEIGH ({settings.num_inner} products, {settings.test_matrix})"
    probes = f"estimated from {settings.num_probes} Gaussian probes"
    rows = []
    for step, summary in sorted(result.summaries.items()):
        values = summary["eigenvalues"] + [None, None, None]
        at = summary["overlap_at_num_outer"]
        computed = result.results.get(step)
        path = run.path_for(result.stage, step, ".csv")
        table = run.read_table(path) if computed is None else computed.rows
        by_k = {row["k"]: row["magnitude"] for row in table}
        numbers = [*values[:3], summary["a_posteriori"]["relative_error"]]
        numbers += [*(by_k.get(k) for k in ks), at["best"], at["chance"]]
        ratio, seconds = f"{at['ratio']:.2f}", f"{summary['seconds']['total']:.1f}"
        rows.append([str(step), *map(fmt, numbers), ratio, seconds])
    print_table(
        console,
        f"{result.stage}: top {K} eigenpairs by |λ|, "
        f"{how if sketched else 'exact eigh'}, "
        f"{settings.samples_per_class} samples per class, seed {settings.seed}",
        "ov@k: magnitude-mask overlap ‖Q[S_k, :k]‖²/k; best mask and chance "
        f"k/D at k={K}; err: ‖H − QΛQᵀ‖_F/‖H‖_F "
        f"({probes if sketched else 'exact'}).",
        ["step", "λ1", "λ2", "λ3", "err", *(f"ov@{k}" for k in ks)]
        + [f"best@{K}", f"chance@{K}", "ov/chance", "s"],
        rows,
    )
    return (
        f"Tables in {escape(str(run.path / result.stage))}; plot with "
        f"`curvlab plot overlap --run {escape(str(run.path))}`."
    )


def main(
    run: str | Path,
    steps: str | None,
    force: bool,
    machine: opt.Machine,
    settings: OverlapSettings,
    max_cols: int | None = DEFAULT_MAX_COLS,
) -> int:
    """Measure the overlap at the run's recorded steps; return the exit code."""

    def stage(folder, problem):
        return OverlapStage(folder, settings, problem, max_cols=max_cols)

    show = {"step_line": STEP_LINE, "render": render_overlap}
    return run_stage_command("overlap", stage, run, steps, force, machine, **show)


def main_distributed(
    run: str | Path,
    steps: str | None,
    force: bool,
    machine: opt.Machine,
    settings: OverlapSettings,
    max_cols: int | None,
    cluster: Cluster,
) -> int:
    """Measure the sketch, solve it out of core, then take the overlap from it.

    The measurement's settings are ``settings``' sketch fields; the exit code
    is the first stage's that fails, else 0.
    """
    from curvlab.cli.measure import measure_steps
    from curvlab.cli.solve import solve_steps
    from curvlab.experiments.sketch_stages import SketchSettings

    names = [field.name for field in dataclasses.fields(SketchSettings)]
    sketch = SketchSettings(**{name: getattr(settings, name) for name in names})
    where = (run, steps, force, machine)

    def body(client) -> int:
        return measure_steps(client, *where, sketch, max_cols=max_cols) or (
            solve_steps(client, *where, sketch.split or "train")
        )

    distributed = dataclasses.replace(settings, method="distributed")
    return cluster.run(body) or main(*where, distributed, max_cols)


@opt.grouped
def command(
    run: opt.RunOption,
    steps: opt.StepsOption = None,
    method: Annotated[
        str | None,
        typer.Option(
            help=f"One of: {', '.join(METHODS)}. auto: the dense eigh when "
            f"D <= --max-exact-dim, SEIGH otherwise. [auto]"
        ),
    ] = None,
    sketch: opt.Sketch = opt.SKETCH,
    num_random: Annotated[
        int | None, typer.Option(min=0, help="Random masks per step. [10]")
    ] = None,
    max_exact_dim: Annotated[
        int, typer.Option(min=1, help="Largest D of the dense eigh.")
    ] = DEFAULT_MAX_EXACT_DIM,
    max_cols: opt.MaxColsOption = DEFAULT_MAX_COLS,
    force: opt.ForceStepsOption = False,
    machine: opt.Machine = opt.MACHINE,
    distributed: Annotated[
        bool,
        typer.Option(
            "--distributed",
            help="Measure each step's sketch into RUN_DIR/sketch_<split>/ (on "
            "Dask with --scheduler), solve it out of core, then take the overlap "
            "from it.",
        ),
    ] = False,
    cluster: Cluster = CLUSTER,
) -> None:
    """Overlap of magnitude masks with the top Hessian eigenspace over training.

    At each recorded step: the Hessian of the mean loss on a class-balanced
    subset of --split, its top --num-outer eigenpairs by |λ| (dense eigh, or
    SEIGH with an a-posteriori error estimate), and for k = 1..K the overlap
    of the k largest-magnitude parameters with the top-k eigenspace, the
    best mask, random masks and chance k/D. Stored in RUN_DIR/overlap_<split>/;
    rerunning skips finished steps.
    """
    if distributed:
        method = method or "distributed"
    own = {"method": method, "num_random": num_random, "max_exact_dim": max_exact_dim}
    settings = OverlapSettings(**vars(sketch), **own)
    where = (run, steps, force, machine, settings, max_cols)
    if distributed:
        raise typer.Exit(main_distributed(*where, cluster))
    raise typer.Exit(main(*where))

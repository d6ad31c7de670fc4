"""``curvlab overlap``: magnitude masks against the top Hessian eigenspace.

The work is :func:`curvlab.experiments.overlap.overlap_run`; this module parses
the options, shows a progress bar (one tick per step, the current phase beside
it) and prints a table of the stored results. Running the same command again
skips the finished steps; ``curvlab overlap --run RUN_DIR`` alone resumes with
the stored settings. ``curvlab plot overlap --run RUN_DIR`` draws the results.

:func:`command` holds the option definitions and is registered on the Typer app
by :mod:`curvlab.cli.app`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from curvlab.cli import _cluster as cluster
from curvlab.cli._common import (
    DataDirOption,
    DeviceOption,
    ForceStepsOption,
    MaxColsOption,
    RunDtypeOption,
    RunOption,
    ThreadsOption,
    fmt,
    run_stage_command,
)
from curvlab.experiments.eigenbasis import (
    DEFAULT_MAX_COLS,
    DEFAULT_MAX_EXACT_DIM,
    SPLITS,
    TEST_MATRICES,
)
from curvlab.experiments.overlap import (
    METHODS,
    OverlapRunResult,
    OverlapSettings,
    OverlapStage,
)
from curvlab.runs import RunFolder

__all__ = ["command", "main", "main_distributed", "render_overlap"]


def _table_ks(num_outer: int) -> list[int]:
    """A few mask sizes for the table: the paper's 10, 50, 100 and ``K``."""
    return sorted({k for k in (10, 50, 100) if k < num_outer} | {num_outer})


def render_overlap(run: RunFolder, result: OverlapRunResult, console: Console) -> None:
    """Print the stored results of an overlap run as a table.

    Args:
        run: The run folder (the tables of skipped steps are read from it).
        result: What :func:`~curvlab.experiments.overlap.overlap_run` returned.
        console: Where to print.
    """
    settings = result.settings
    K = settings.num_outer
    ks = _table_ks(K)
    how = (
        "exact eigh"
        if settings.method == "exact"
        else f"SEIGH ({settings.num_inner} products, {settings.test_matrix})"
    )
    error_kind = (
        "exact"
        if settings.method == "exact"
        else f"estimated from {settings.num_probes} Gaussian probes"
    )
    table = Table(
        box=box.SIMPLE_HEAD,
        title=(
            f"{result.stage}: top {K} eigenpairs by |λ|, {how}, "
            f"{settings.samples_per_class} samples per class, seed {settings.seed}"
        ),
        caption=(
            "ov@k: magnitude-mask overlap ‖Q[S_k, :k]‖²/k; best mask and chance "
            f"k/D at k={K}; err: ‖H − QΛQᵀ‖_F/‖H‖_F ({error_kind})."
        ),
    )
    for header in ("step", "λ1", "λ2", "λ3", "err"):
        table.add_column(header, justify="right")
    for k in ks:
        table.add_column(f"ov@{k}", justify="right")
    for header in (f"best@{K}", f"chance@{K}", "ov/chance", "s"):
        table.add_column(header, justify="right")
    for step, summary in sorted(result.summaries.items()):
        values = summary["eigenvalues"] + [None, None, None]
        at = summary["overlap_at_num_outer"]
        computed = result.results.get(step)
        rows = (
            computed.rows
            if computed is not None
            else run.read_table(run.path_for(result.stage, step, ".csv"))
        )
        by_k = {row["k"]: row["magnitude"] for row in rows}
        table.add_row(
            str(step),
            *(fmt(v) for v in values[:3]),
            fmt(summary["a_posteriori"]["relative_error"]),
            *(fmt(by_k.get(k)) for k in ks),
            fmt(at["best"]),
            fmt(at["chance"]),
            f"{at['ratio']:.2f}",
            f"{summary['seconds']['total']:.1f}",
        )
    console.print(table)


def _step_line(step: int, summary: dict) -> str:
    at = summary["overlap_at_num_outer"]
    return (
        f"step {step}: λ1 {summary['eigenvalues'][0]:.4g}, "
        f"overlap@{at['k']} {at['magnitude']:.4g} "
        f"({at['ratio']:.2f}x chance), "
        f"{summary['seconds']['total']:.1f} s"
    )


def main(
    *,
    run: str | Path,
    steps: str | None = None,
    settings: OverlapSettings | None = None,
    force: bool = False,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    threads: int | None = None,
    max_cols: int | None = DEFAULT_MAX_COLS,
    console: Console | None = None,
    error_console: Console | None = None,
) -> int:
    """Measure the overlap at the run's recorded steps, with a progress bar.

    Args:
        run: The run folder.
        steps: Steps to measure (``"0,100:1000:100"``); default all recorded.
        settings: The options given (unset fields: stored settings, defaults).
        force: Recompute finished steps.
        device: Device of model, data and products.
        data_dir: Data folder of file-based problems.
        threads: PyTorch CPU threads (restored afterwards).
        max_cols: Hessian columns per pass over the data.
        console: Where to print (default: standard output).
        error_console: Where to print errors (default: standard error).

    Returns:
        The exit code: 0 on success, 1 if a product was NaN/Inf, 2 for invalid
        options, missing steps or settings that differ from the stored ones,
        130 when interrupted.
    """
    console = console or Console()

    def render(folder, result):
        render_overlap(folder, result, console)
        return (
            f"Tables in {escape(str(folder.path / result.stage))}; plot with "
            f"`curvlab plot overlap --run {escape(str(folder.path))}`."
        )

    return run_stage_command(
        "overlap",
        lambda folder, problem: OverlapStage(
            folder, settings, problem, max_cols=max_cols
        ),
        step_line=_step_line,
        render=render,
        run=run,
        steps=steps,
        force=force,
        device=device,
        data_dir=data_dir,
        threads=threads,
        console=console,
        error_console=error_console,
    )


def command(
    run: RunOption,
    steps: Annotated[
        str | None,
        typer.Option(
            help="Recorded steps to measure, e.g. 0,100 or 0:1000:100 (stop "
            "included). [all recorded]"
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help=f"One of: {', '.join(METHODS)}. auto: the dense eigh when "
            f"D <= --max-exact-dim, SEIGH otherwise. [auto]"
        ),
    ] = None,
    num_outer: Annotated[
        int | None,
        typer.Option(
            min=1, help="Eigenpairs K and largest mask size. [5% of D, at most 1000]"
        ),
    ] = None,
    num_inner: Annotated[
        int | None,
        typer.Option(min=1, help="SEIGH: Hessian-vector products s >= K. [2K]"),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help=f"Split of the Hessian: {', '.join(SPLITS)}. [train]"),
    ] = None,
    samples_per_class: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Hessian samples per class (lowest indices; regression: in "
            "total). [50]",
        ),
    ] = None,
    num_random: Annotated[
        int | None, typer.Option(min=0, help="Random masks per step. [10]")
    ] = None,
    test_matrix: Annotated[
        str | None,
        typer.Option(help=f"SEIGH test matrix: {', '.join(TEST_MATRICES)}. [ssrft]"),
    ] = None,
    num_probes: Annotated[
        int | None,
        typer.Option(min=1, help="SEIGH: Gaussian probes of the error. [30]"),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, help="Seed of sketch, probes and masks. [the run's]"),
    ] = None,
    dtype: RunDtypeOption = None,
    max_exact_dim: Annotated[
        int,
        typer.Option(min=1, help="Largest D of the dense eigh."),
    ] = DEFAULT_MAX_EXACT_DIM,
    max_cols: MaxColsOption = DEFAULT_MAX_COLS,
    force: ForceStepsOption = False,
    device: DeviceOption = "cpu",
    data_dir: DataDirOption = None,
    threads: ThreadsOption = None,
    distributed: Annotated[
        bool,
        typer.Option(
            "--distributed",
            help="Measure each step's sketch into RUN_DIR/sketch_<split>/ (on "
            "Dask with --scheduler), solve it out of core, then take the overlap "
            "from it.",
        ),
    ] = False,
    scheduler: cluster.SchedulerOption = None,
    workers: cluster.WorkersOption = 2,
    slurm_gpus: cluster.GpusOption = 0,
    slurm_walltime: cluster.WalltimeOption = "02:00:00",
    slurm_lifetime: cluster.LifetimeOption = None,
    slurm_cores: cluster.JobCoresOption = 4,
    slurm_memory: cluster.JobMemoryOption = "16GB",
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
    settings = OverlapSettings(
        split=split,
        method=method,
        num_outer=num_outer,
        num_inner=num_inner,
        samples_per_class=samples_per_class,
        num_random=num_random,
        test_matrix=test_matrix,
        num_probes=num_probes,
        seed=seed,
        dtype=dtype,
        max_exact_dim=max_exact_dim,
    )
    options = {"force": force, "device": device, "data_dir": data_dir}
    options |= {"threads": threads}
    if not distributed:
        raise typer.Exit(
            main(run=run, steps=steps, settings=settings, max_cols=max_cols, **options)
        )
    slurm = {"gpus": slurm_gpus, "walltime": slurm_walltime}
    slurm |= {"lifetime": slurm_lifetime, "cores": slurm_cores, "memory": slurm_memory}
    code = main_distributed(
        run=run,
        steps=steps,
        settings=settings,
        max_cols=max_cols,
        scheduler=scheduler,
        workers=workers,
        slurm=slurm,
        **options,
    )
    raise typer.Exit(code)


def main_distributed(
    *,
    run: str | Path,
    steps: str | None,
    settings: OverlapSettings,
    max_cols: int | None,
    scheduler: str | None,
    workers: int,
    slurm: dict,
    **options,
) -> int:
    """Measure, solve out of core, then take the overlap from the stores.

    Args:
        run: The run folder.
        steps: Steps (default all recorded).
        settings: The overlap's settings; its sketch fields are the
            measurement's.
        max_cols: Hessian columns per pass over the data.
        scheduler: ``--scheduler`` (``None``: this process).
        workers: ``--workers``.
        slurm: ``gpus``, ``walltime``, ``lifetime``, ``cores``, ``memory``.
        **options: ``force``, ``device``, ``data_dir``, ``threads``.

    Returns:
        The exit code.
    """
    from curvlab.experiments.sketch_stages import (
        MeasureStage,
        SketchSettings,
        SolveStage,
    )

    fields = ("split", "num_outer", "num_inner", "samples_per_class")
    fields += ("test_matrix", "num_probes", "seed", "dtype")
    sketch = SketchSettings(**{name: getattr(settings, name) for name in fields})
    device, data_dir = options["device"], options["data_dir"]

    def body(client) -> int:
        return run_stage_command(
            "measure",
            lambda folder, problem: MeasureStage(
                folder,
                sketch,
                problem.num_params,
                client=client,
                device=device,
                data_dir=data_dir,
                max_cols=max_cols,
            ),
            run=run,
            steps=steps,
            **options,
        ) or run_stage_command(
            "solve",
            lambda folder, problem: SolveStage(
                folder, sketch.split or "train", client=client
            ),
            run=run,
            steps=steps,
            build=False,
            **options,
        )

    code = cluster.on_cluster(body, scheduler, workers, **slurm)
    distributed = dataclasses.replace(settings, method="distributed")
    return code or main(
        run=run, steps=steps, settings=distributed, max_cols=max_cols, **options
    )

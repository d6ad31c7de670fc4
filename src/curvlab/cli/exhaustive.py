"""``curvlab exhaustive``: SEIGH against the exact eigendecomposition over training.

The work is :func:`curvlab.experiments.exhaustive.exhaustive_run`; this module
parses the options, shows a progress bar and prints one row per step: the
largest relative eigenvalue error among the top 3 and top ``K``, the overlap of
the exact and sketched ``K``-dimensional eigenspaces and the median/largest
principal angle between them, the magnitude-mask overlap of each, and the
a-posteriori error estimate against the exact error. Problems too large for a
dense ``eigh`` are refused. Running again skips finished steps.

:func:`command` holds the option definitions and is registered on the Typer app
by :mod:`curvlab.cli.app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
from curvlab.experiments.exhaustive import (
    ExhaustiveRunResult,
    ExhaustiveSettings,
    ExhaustiveStage,
)

__all__ = ["command", "main", "render_exhaustive"]


def _step_line(step: int, summary: dict) -> str:
    return (
        f"step {step}: basis overlap "
        f"{summary['basis_overlap']['at_num_outer']:.4f}, error "
        f"estimate {summary['a_posteriori']['estimate']:.3g} (exact "
        f"{summary['a_posteriori']['exact']:.3g}), "
        f"{summary['seconds']['total']:.1f} s"
    )


def render_exhaustive(result: ExhaustiveRunResult, console: Console) -> None:
    """Print the summaries of an exhaustive run as a table.

    Args:
        result: What :func:`~curvlab.experiments.exhaustive.exhaustive_run`
            returned.
        console: Where to print.
    """
    settings = result.settings
    K = settings.num_outer
    table = Table(
        box=box.SIMPLE_HEAD,
        title=(
            f"{result.stage}: SEIGH (K={K}, s={settings.num_inner}, "
            f"{settings.test_matrix}) against the exact eigh, "
            f"{settings.samples_per_class} samples per class"
        ),
        caption=(
            "rel err: largest |λ̂ᵢ − λᵢ|/|λᵢ| among the top 3 and top K by |λ|; "
            "basis ov: ‖QᵀW‖²/K of the exact and sketched eigenspaces; angles "
            "between them (degrees); mask ov: magnitude mask at k=K (exact / "
            "sketch); error: ‖H − Ĥ‖_F estimated / exact, and the best rank-K error."
        ),
    )
    headers = (
        "step",
        "λ1 exact",
        "λ1 sketch",
        "rel err top 3",
        f"rel err top {K}",
        "basis ov",
        "angle med",
        "angle max",
        "mask ov exact",
        "mask ov sketch",
        "error est",
        "error exact",
        f"best rank {K}",
        "s",
    )
    for header in headers:
        table.add_column(header, justify="right")
    for step, summary in sorted(result.summaries.items()):
        errors = summary["eigenvalue_errors"]
        angles = summary["principal_angles_degrees"]
        mask = summary["magnitude_overlap"]
        post = summary["a_posteriori"]
        table.add_row(
            str(step),
            fmt(summary["eigenvalues_exact"][0], 3),
            fmt(summary["eigenvalues_sketch"][0], 3),
            fmt(errors.get("max_rel_top_3", errors["max_rel_top_1"]), 3),
            fmt(max(errors.values()), 3),
            f"{summary['basis_overlap']['at_num_outer']:.4f}",
            fmt(angles["median"], 3),
            fmt(angles["max"], 3),
            fmt(mask["exact"], 3),
            fmt(mask["sketch"], 3),
            fmt(post["estimate"], 3),
            fmt(post["exact"], 3),
            fmt(post["best_rank_k_error"], 3),
            f"{summary['seconds']['total']:.1f}",
        )
    console.print(table)


def main(
    *,
    run: str | Path,
    steps: str | None = None,
    settings: ExhaustiveSettings | None = None,
    force: bool = False,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    threads: int | None = None,
    max_cols: int | None = DEFAULT_MAX_COLS,
    console: Console | None = None,
    error_console: Console | None = None,
) -> int:
    """Run the exhaustive check at the run's recorded steps, with a progress bar.

    Args:
        run: The run folder.
        steps: Steps (``"0,100:1000:100"``); default all recorded.
        settings: The options given (unset: stored settings, then defaults).
        force: Recompute finished steps.
        device: Device of model, data and products.
        data_dir: Data folder of file-based problems.
        threads: PyTorch CPU threads (restored afterwards).
        max_cols: Hessian columns per pass over the data.
        console: Where to print (default: standard output).
        error_console: Where to print errors (default: standard error).

    Returns:
        The exit code: 0 on success, 1 if a product was NaN/Inf, 2 for invalid
        options, a problem too large for the dense check, missing steps or
        settings that differ from the stored ones, 130 when interrupted.
    """
    console = console or Console()

    def render(folder, result):
        render_exhaustive(result, console)
        return f"Tables in {escape(str(folder.path / result.stage))}."

    return run_stage_command(
        "exhaustive",
        lambda folder, problem: ExhaustiveStage(
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
        typer.Option(help="Recorded steps, e.g. 0,100 or 0:1000:100. [all recorded]"),
    ] = None,
    num_outer: Annotated[
        int | None,
        typer.Option(min=1, help="Eigenpairs K compared. [5% of D, at most 1000]"),
    ] = None,
    num_inner: Annotated[
        int | None,
        typer.Option(min=1, help="SEIGH Hessian-vector products s >= K. [2K]"),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help=f"Split of the Hessian: {', '.join(SPLITS)}. [train]"),
    ] = None,
    samples_per_class: Annotated[
        int | None,
        typer.Option(min=1, help="Hessian samples per class. [50]"),
    ] = None,
    test_matrix: Annotated[
        str | None,
        typer.Option(help=f"SEIGH test matrix: {', '.join(TEST_MATRICES)}. [ssrft]"),
    ] = None,
    num_probes: Annotated[
        int | None,
        typer.Option(min=1, help="Gaussian probes of the error estimate. [30]"),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, help="Seed of sketch and probes. [the run's]"),
    ] = None,
    dtype: RunDtypeOption = None,
    max_dim: Annotated[
        int,
        typer.Option(min=1, help="Refuse problems with more parameters."),
    ] = DEFAULT_MAX_EXACT_DIM,
    max_cols: MaxColsOption = DEFAULT_MAX_COLS,
    force: ForceStepsOption = False,
    device: DeviceOption = "cpu",
    data_dir: DataDirOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Check SEIGH against the exact eigendecomposition at each recorded step.

    For problems small enough for a dense eigh (D <= --max-dim): eigenvalue
    errors of the top K by |λ|, overlap and principal angles between the exact
    and sketched eigenspaces, the magnitude-mask overlap of each, and the
    a-posteriori error estimate against the exact error. Stored in
    RUN_DIR/exhaustive_<split>/; rerunning skips finished steps.
    """
    settings = ExhaustiveSettings(
        split=split,
        num_outer=num_outer,
        num_inner=num_inner,
        samples_per_class=samples_per_class,
        test_matrix=test_matrix,
        num_probes=num_probes,
        seed=seed,
        dtype=dtype,
        max_dim=max_dim,
    )
    raise typer.Exit(
        main(
            run=run,
            steps=steps,
            settings=settings,
            force=force,
            device=device,
            data_dir=data_dir,
            threads=threads,
            max_cols=max_cols,
        )
    )

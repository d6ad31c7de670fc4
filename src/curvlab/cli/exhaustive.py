"""``curvlab exhaustive``: SEIGH against the exact eigendecomposition over training."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from curvlab.cli import _options as opt
from curvlab.cli._common import fmt, print_table, run_stage_command
from curvlab.experiments.eigenbasis import DEFAULT_MAX_COLS, DEFAULT_MAX_EXACT_DIM
from curvlab.experiments.exhaustive import ExhaustiveSettings, ExhaustiveStage
from curvlab.runs import RunFolder
from curvlab.runs.stage import StageRunResult

__all__ = ["command", "render_exhaustive"]

#: The line after a step (``str.format`` of its summary).
STEP_LINE = (
    "basis overlap {basis_overlap[at_num_outer]:.4f}, error estimate "
    "{a_posteriori[estimate]:.3g} (exact {a_posteriori[exact]:.3g}), "
    "{seconds[total]:.1f} s"
)


def _row(step: int, summary: dict) -> list[str]:
    errors, post = summary["eigenvalue_errors"], summary["a_posteriori"]
    angles, mask = summary["principal_angles_degrees"], summary["magnitude_overlap"]
    numbers = [summary["eigenvalues_exact"][0], summary["eigenvalues_sketch"][0]]
    numbers += [errors.get("max_rel_top_3", errors["max_rel_top_1"])]
    numbers += [max(errors.values()), angles["median"], angles["max"]]
    numbers += [mask["exact"], mask["sketch"], post["estimate"], post["exact"]]
    cells = [fmt(value, 3) for value in [*numbers, post["best_rank_k_error"]]]
    cells.insert(4, f"{summary['basis_overlap']['at_num_outer']:.4f}")  # basis ov
    return [str(step), *cells, f"{summary['seconds']['total']:.1f}"]


def render_exhaustive(run: RunFolder, result: StageRunResult, console: Console) -> None:
    """Print the summaries of an exhaustive run (``run_stage``'s result) as a table."""
    settings = result.settings
    K = settings.num_outer
    headers = ("step", "λ1 exact", "λ1 sketch", "rel err top 3", f"rel err top {K}")
    headers += ("basis ov", "angle med", "angle max", "mask ov exact")
    headers += ("mask ov sketch", "error est", "error exact", f"best rank {K}", "s")
    print_table(
        console,
        f"{result.stage}: SEIGH (K={K}, s={settings.num_inner}, "
        f"{settings.test_matrix}) against the exact eigh, "
        f"{settings.samples_per_class} samples per class",
        "rel err: largest |λ̂ᵢ − λᵢ|/|λᵢ| among the top 3 and top K by |λ|; "
        "basis ov: ‖QᵀW‖²/K of the exact and sketched eigenspaces; angles "
        "between them (degrees); mask ov: magnitude mask at k=K (exact / "
        "sketch); error: ‖H − Ĥ‖_F estimated / exact, and the best rank-K error.",
        headers,
        (_row(step, summary) for step, summary in sorted(result.summaries.items())),
    )


MaxDimOption = Annotated[
    int, typer.Option(min=1, help="Refuse problems with more parameters.")
]


@opt.grouped
def command(
    run: opt.RunOption,
    steps: opt.StepsOption = None,
    sketch: opt.Sketch = opt.SKETCH,
    max_dim: MaxDimOption = DEFAULT_MAX_EXACT_DIM,
    max_cols: opt.MaxColsOption = DEFAULT_MAX_COLS,
    force: opt.ForceStepsOption = False,
    machine: opt.Machine = opt.MACHINE,
) -> None:
    """Check SEIGH against the exact eigendecomposition at each recorded step.

    For problems small enough for a dense eigh (D <= --max-dim): eigenvalue
    errors of the top K by |λ|, overlap and principal angles between the exact
    and sketched eigenspaces, the magnitude-mask overlap of each, and the
    a-posteriori error estimate against the exact error. Stored in
    RUN_DIR/exhaustive_<split>/; rerunning skips finished steps.
    """
    settings = ExhaustiveSettings(**vars(sketch), max_dim=max_dim)

    def stage(folder, problem):
        return ExhaustiveStage(folder, settings, problem, max_cols=max_cols)

    show = {"step_line": STEP_LINE, "render": render_exhaustive}
    code = run_stage_command("exhaustive", stage, run, steps, force, machine, **show)
    raise typer.Exit(code)

"""``curvlab hesscale-quality``: diagonal estimates against the exact Hessian one."""

from __future__ import annotations

from functools import partial

import typer

from curvlab.cli._options import StudyOutOption, StudyThreadsOption, group, grouped
from curvlab.cli._options import option as opt
from curvlab.cli._study import run_study


@group
class Quality:
    """The study's sizes."""

    seeds = opt(int, "Number of seeds (runs seeds 0, 1, ...).", min=1, default=3)
    samples = opt(
        int, "Train samples measured per seed (batch size 1).", min=1, default=100
    )
    width = opt(int, "Units per hidden layer (the paper: 64).", min=1, default=64)
    epochs = opt(
        int, "SGD epochs before measuring (lr 1e-3, batch 64).", min=0, default=2
    )


@grouped
def command(
    out: StudyOutOption, sizes: Quality, threads: StudyThreadsOption = 1
) -> None:
    """Compare diagonal Hessian estimates with the exact diagonal (HesScale study).

    On the sklearn digits, a 64-w-w-w-10 tanh MLP trained briefly with SGD:
    the L1 error against the exact Hessian diagonal, per layer and in total,
    of HesScale, HesScaleGN, BL89, GGN-MC(1), Hutchinson(1), the squared
    gradient and zero, averaged over samples (batch size 1) and seeds and
    normalised by HesScale's error. Prints the table; writes CSV, markdown and
    a PNG bar chart into --out.
    """
    # imported here: matplotlib and curvlab.diagonal load only for this command
    from curvlab.experiments import hesscale_plots as plots
    from curvlab.experiments.hesscale_quality import hesscale_quality

    study = partial(
        hesscale_quality,
        seeds=range(sizes.seeds),
        num_samples=sizes.samples,
        width=sizes.width,
        epochs=sizes.epochs,
    )
    files = (plots.quality_markdown, plots.write_quality_csv, plots.plot_quality)
    stem = "hesscale_quality"
    raise typer.Exit(run_study(out, stem, threads, study, files, label="samples"))

"""``curvlab hesscale-quality``: diagonal estimates against the exact Hessian one."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from curvlab.cli._common import StudyOutOption, StudyThreadsOption
from curvlab.cli._study import run_study_events


def command(
    out: StudyOutOption,
    seeds: Annotated[
        int, typer.Option(min=1, help="Number of seeds (runs seeds 0, 1, ...).")
    ] = 3,
    samples: Annotated[
        int,
        typer.Option(min=1, help="Train samples measured per seed (batch size 1)."),
    ] = 100,
    width: Annotated[
        int, typer.Option(min=1, help="Units per hidden layer (the paper: 64).")
    ] = 64,
    epochs: Annotated[
        int,
        typer.Option(min=0, help="SGD epochs before measuring (lr 1e-3, batch 64)."),
    ] = 2,
    threads: StudyThreadsOption = 1,
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
        seeds=range(seeds),
        num_samples=samples,
        width=width,
        epochs=epochs,
    )

    files = (plots.quality_markdown, plots.write_quality_csv, plots.plot_quality)
    code = run_study_events(
        out, "hesscale_quality", threads, study, files, label="samples"
    )
    raise typer.Exit(code)

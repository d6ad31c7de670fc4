"""``curvlab spectrum``: Hessian spectra at the recorded steps of a run.

The work is :class:`curvlab.experiments.spectrum.SpectrumStage`; this module
prints a table of the full Hessian's extreme eigenvalues and trace per step.
"""

from __future__ import annotations

from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.markup import escape

from curvlab.cli import _options as opt
from curvlab.cli._common import fmt, option_error, print_table, run_stage_command
from curvlab.cli._options import option
from curvlab.experiments.spectrum import (
    STAGE,
    SpectrumSettings,
    SpectrumStage,
    read_spectrum,
)
from curvlab.runs import RunFolder
from curvlab.runs.stage import StageRunResult
from curvlab.subspace.spectra import MAX_EXACT_DIM

__all__ = ["command", "render_spectra"]


def render_spectra(run: RunFolder, result: StageRunResult, console: Console) -> str:
    """Print the full Hessian's extreme eigenvalues and trace per step.

    The spectra of skipped steps are read from ``run``; the text returned says
    where they are stored.
    """
    rows = []
    for step in sorted(set(result.computed) | set(result.skipped)):
        stored = result.results.get(step) or read_spectrum(run, step)
        full = stored.spectra["hessian"].full
        top, bottom = full.top_eigenvalues, full.bottom_eigenvalues
        top = "-" if top is None else ", ".join(f"{v:.4g}" for v in top[:3].tolist())
        bottom = None if bottom is None or not len(bottom) else float(bottom[0])
        products = str(sum(s.num_matvecs for s in stored.spectra.values()))
        cells = [str(step), full.method, str(full.dim), top, fmt(bottom, 5)]
        cells += [fmt(full.trace, 5), products, f"{stored.seconds:.1f}"]
        rows.append(cells)
    if rows:
        print_table(
            console,
            f"Hessian spectrum of {run.config.problem} ({escape(str(run.path))})",
            "λ by |λ|: top eigenvalues by magnitude; SLQ traces are Hutchinson "
            "estimates.",
            ("step", "method", "D", "λ by |λ|", "λ_min", "trace", "products")
            + ("seconds",),
            rows,
        )
    return f"Spectra in {escape(str(run.path / STAGE))}."


def _step_line(step: int, summary: dict) -> str:
    return (
        f"step {step}: D={summary['dim']} ({summary['method']}), largest |λ| "
        f"{fmt(summary['top_eigenvalue'], 5)}, trace {fmt(summary['trace'], 5)}, "
        f"{summary['num_matvecs']} products, {summary['seconds']:.1f} s"
    )


@opt.group
class Spectra:
    """The options of :class:`~curvlab.experiments.spectrum.SpectrumSettings`."""

    layers = option(
        bool,
        "Also the spectrum of every layer's block.",
        "--layers/--no-layers",
        default=False,
    )
    blocks = option(
        str,
        "Layer blocks: 'modules' (a layer's weight with its bias) or 'weights' "
        "(Linear/conv weights only, as LayerHessians).",
        default="modules",
    )
    method = option(
        str,
        "exact (dense eigh), lanczos (extreme eigenvalues only), slq (density by "
        "stochastic Lanczos quadrature) or auto (exact up to --max-exact-dim, else "
        "slq).",
        default="auto",
    )
    split_ggn = option(
        bool,
        "Also the spectra of the GGN G and the residual H - G.",
        "--split-ggn/--no-split-ggn",
        default=False,
    )
    samples_per_class = option(
        int, "Hessian samples per class (seeded by the run's seed).", default=10, min=1
    )
    top_k = option(int, "Eigenvalues of largest magnitude.", default=10, min=0)
    bottom_k = option(int, "Most negative eigenvalues.", default=3, min=0)
    num_probes = option(int, "SLQ probes.", default=1, min=1)
    num_steps = option(int, "SLQ Lanczos steps per probe.", default=128, min=1)
    grid_points = option(int, "Points of the stored densities.", default=1024, min=2)
    max_exact_dim = option(
        int,
        f"Largest block with a dense eigh. [stored, else {MAX_EXACT_DIM}]",
        min=1,
    )
    tol = option(float, "Relative tolerance of the Lanczos eigensolves.", default=1e-6)
    seed = option(int, "Seed of probes and start vectors. [run's]")
    dtype = opt.RUN_DTYPE


SPECTRA = Spectra()


@opt.grouped
def command(
    run: opt.RunOption,
    steps: opt.StepsOption = None,
    spectra: Spectra = SPECTRA,
    force: Annotated[
        bool, typer.Option("--force", help="Recompute steps that are done.")
    ] = False,
    machine: opt.Machine = opt.MACHINE,
) -> None:
    """Hessian spectra at the recorded steps of a run, full and per layer.

    At each recorded step, on a class-balanced subset of the train split: the
    full Hessian's extreme eigenvalues (Lanczos, or exact) and its spectral
    density (exact eigenvalues or SLQ); with --layers the same for each layer's
    diagonal block, with --split-ggn also for the GGN and H - G. Results go to
    RUN_DIR/spectrum/step_XXXXXXXX.json; run again to resume. Plot them with
    `curvlab plot spectrum` and `curvlab plot match`.
    """
    try:
        settings = SpectrumSettings(**vars(spectra))
    except ValueError as error:
        raise typer.Exit(option_error(error)) from None
    device, data_dir = machine.device, machine.data_dir

    def stage(folder, problem):  # None: the stage builds the problem itself
        return SpectrumStage(folder, settings, device=device, data_dir=data_dir)

    def header(folder: RunFolder) -> str:
        return (
            f"Spectra of [bold]{escape(folder.config.problem)}[/] in "
            f"{escape(str(folder.path))}: method {settings.method}"
            f"{', layers' if settings.layers else ''}"
            f"{', GGN/residual split' if settings.split_ggn else ''}, "
            f"{settings.samples_per_class} samples per class, {device}, "
            f"{torch.get_num_threads()} CPU thread(s)."
        )

    show = {"step_line": _step_line, "render": render_spectra, "header": header}
    show["build"] = False
    code = run_stage_command("spectra", stage, run, steps, force, machine, **show)
    raise typer.Exit(code)

"""``curvlab spectrum``: Hessian spectra at the recorded steps of a run.

The work is :class:`curvlab.experiments.spectrum.SpectrumStage`; this module
prints a table of the full Hessian's extreme eigenvalues and trace per step.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.markup import escape

from curvlab.cli import _options as opt
from curvlab.cli._common import fmt, option_error, print_table, run_stage_command
from curvlab.experiments.spectrum import (
    STAGE,
    SpectrumSettings,
    SpectrumStage,
    read_spectrum,
)
from curvlab.runs import RunFolder
from curvlab.runs.stage import StageRunResult

__all__ = ["command", "render_spectra"]


def render_spectra(run: RunFolder, result: StageRunResult, console: Console) -> str:
    """Print the full Hessian's extreme eigenvalues and trace per step.

    Args:
        run: The run folder (the spectra of skipped steps are read from it).
        result: What :func:`~curvlab.runs.stage.run_stage` returned.
        console: Where to print.

    Returns:
        Where the spectra are.
    """
    rows = []
    for step in sorted(set(result.computed) | set(result.skipped)):
        stored = result.results.get(step) or read_spectrum(run, step)
        full = stored.spectra["hessian"].full
        top, bottom = full.top_eigenvalues, full.bottom_eigenvalues
        rows.append(
            [
                str(step),
                full.method,
                str(full.dim),
                "-" if top is None else ", ".join(f"{v:.4g}" for v in top[:3].tolist()),
                fmt(None if bottom is None or not len(bottom) else float(bottom[0]), 5),
                fmt(full.trace, 5),
                str(sum(s.num_matvecs for s in stored.spectra.values())),
                f"{stored.seconds:.1f}",
            ]
        )
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


def _header(folder: RunFolder, settings: SpectrumSettings, device: str) -> str:
    return (
        f"Spectra of [bold]{escape(folder.config.problem)}[/] in "
        f"{escape(str(folder.path))}: method {settings.method}"
        f"{', layers' if settings.layers else ''}"
        f"{', GGN/residual split' if settings.split_ggn else ''}, "
        f"{settings.samples_per_class} samples per class, {device}, "
        f"{torch.get_num_threads()} CPU thread(s)."
    )


@dataclasses.dataclass(frozen=True)
class Spectra:
    """The options of :class:`~curvlab.experiments.spectrum.SpectrumSettings`."""

    layers: Annotated[
        bool,
        typer.Option(
            "--layers/--no-layers", help="Also the spectrum of every layer's block."
        ),
    ] = False
    blocks: Annotated[
        str,
        typer.Option(
            help="Layer blocks: 'modules' (a layer's weight with its bias) or "
            "'weights' (Linear/conv weights only, as LayerHessians)."
        ),
    ] = "modules"
    method: Annotated[
        str,
        typer.Option(
            help="exact (dense eigh), lanczos (extreme eigenvalues only), slq "
            "(density by stochastic Lanczos quadrature) or auto (exact up to "
            "--max-exact-dim, else slq)."
        ),
    ] = "auto"
    split_ggn: Annotated[
        bool,
        typer.Option(
            "--split-ggn/--no-split-ggn",
            help="Also the spectra of the GGN G and the residual H - G.",
        ),
    ] = False
    samples_per_class: Annotated[
        int,
        typer.Option(
            min=1, help="Hessian samples per class (seeded by the run's seed)."
        ),
    ] = 10
    top_k: Annotated[
        int, typer.Option(min=0, help="Eigenvalues of largest magnitude.")
    ] = 10
    bottom_k: Annotated[int, typer.Option(min=0, help="Most negative eigenvalues.")] = 3
    num_probes: Annotated[int, typer.Option(min=1, help="SLQ probes.")] = 1
    num_steps: Annotated[
        int, typer.Option(min=1, help="SLQ Lanczos steps per probe.")
    ] = 128
    grid_points: Annotated[
        int, typer.Option(min=2, help="Points of the stored densities.")
    ] = 1024
    max_exact_dim: Annotated[
        int, typer.Option(min=1, help="Largest block with a dense eigh.")
    ] = 4096
    tol: Annotated[
        float, typer.Option(help="Relative tolerance of the Lanczos eigensolves.")
    ] = 1e-6
    seed: Annotated[
        int | None, typer.Option(help="Seed of probes and start vectors. [run's]")
    ] = None
    dtype: opt.RunDtypeOption = None


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

    def stage(folder, problem):
        return SpectrumStage(folder, settings, device=device, data_dir=data_dir)

    show = {"step_line": _step_line, "render": render_spectra, "build": False}
    show["header"] = lambda folder: _header(folder, settings, device)
    code = run_stage_command("spectra", stage, run, steps, force, machine, **show)
    raise typer.Exit(code)

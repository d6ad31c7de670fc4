"""``curvlab spectrum``: Hessian spectra at the recorded steps of a run.

The work is :func:`curvlab.experiments.spectrum.spectrum_run`; this module turns
the options into :class:`~curvlab.experiments.spectrum.SpectrumSettings`, shows a
progress bar (one tick per spectrum) and prints a table of the full Hessian's
extreme eigenvalues and trace per step. Running the command again skips the
steps that are done with the same settings; ``--force`` recomputes them.

:func:`command` holds the option definitions and is registered on the Typer app
by :mod:`curvlab.cli.app`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from curvlab.cli._common import (
    DataDirOption,
    DeviceOption,
    RunOption,
    ThreadsOption,
    check_device,
    check_threads,
    error_printer,
    fmt,
    option_error,
    run_steps,
    torch_threads,
)
from curvlab.experiments.spectrum import (
    STAGE,
    SpectrumResult,
    SpectrumSettings,
    read_spectrum,
    spectrum_run,
)
from curvlab.runs import ConfigError, MissingStepError, RunFolder, parse_steps
from curvlab.runs.stage import SettingsConflictError

__all__ = ["command", "main", "render_spectra"]


def render_spectra(run: RunFolder, result: SpectrumResult, console: Console) -> None:
    """Print the full Hessian's extreme eigenvalues and trace per step.

    Args:
        run: The run folder (the spectra of skipped steps are read from it).
        result: What :func:`~curvlab.experiments.spectrum.spectrum_run` returned.
        console: Where to print.
    """
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"Hessian spectrum of {run.config.problem} ({escape(str(run.path))})",
        caption="λ by |λ|: top eigenvalues by magnitude; SLQ traces are "
        "Hutchinson estimates.",
    )
    for header in ("step", "method", "D", "λ by |λ|", "λ_min", "trace", "products"):
        table.add_column(header, justify="right")
    table.add_column("seconds", justify="right")
    for step in sorted(set(result.computed) | set(result.skipped)):
        stored = result.results.get(step) or read_spectrum(run, step)
        full = stored.spectra["hessian"].full
        top = full.top_eigenvalues
        bottom = full.bottom_eigenvalues
        products = sum(s.num_matvecs for s in stored.spectra.values())
        table.add_row(
            str(step),
            full.method,
            str(full.dim),
            "-" if top is None else ", ".join(f"{v:.4g}" for v in top[:3].tolist()),
            fmt(None if bottom is None or not len(bottom) else float(bottom[0]), 5),
            fmt(full.trace, 5),
            str(products),
            f"{stored.seconds:.1f}",
        )
    console.print(table)


def _step_line(step: int, summary: dict) -> str:
    return (
        f"step {step}: D={summary['dim']} ({summary['method']}), largest |λ| "
        f"{fmt(summary['top_eigenvalue'], 5)}, trace {fmt(summary['trace'], 5)}, "
        f"{summary['num_matvecs']} products, {summary['seconds']:.1f} s"
    )


def main(
    *,
    run: str | Path,
    steps: str | None = None,
    settings: SpectrumSettings | None = None,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    threads: int | None = None,
    force: bool = False,
    console: Console | None = None,
    error_console: Console | None = None,
) -> int:
    """Compute the spectra of a run with a progress bar; print a summary table.

    Args:
        run: The run folder.
        steps: Steps to do, e.g. ``"0,100"`` or ``"0:1000:100"``; ``None`` for
            all recorded steps.
        settings: What to compute (default
            :class:`~curvlab.experiments.spectrum.SpectrumSettings`).
        device: Device of the products.
        data_dir: Data folder of file-based problems.
        threads: PyTorch CPU threads (restored afterwards).
        force: Recompute steps that are done.
        console: Where to print (default: standard output).
        error_console: Where to print errors (default: standard error).

    Returns:
        The exit code: 0 on success, 2 for invalid options, a missing run or
        step or a settings mismatch, 130 when interrupted.
    """
    console = console or Console()
    fail = error_printer(error_console or Console(stderr=True))
    try:
        folder = RunFolder.open(run)
        requested = None if steps is None else list(parse_steps(steps))
        check_threads(threads)
        check_device(device)
    except (FileNotFoundError, ConfigError, RuntimeError) as error:
        return fail(str(error))
    settings = settings or SpectrumSettings()
    start = time.perf_counter()
    console.print(
        f"Spectra of [bold]{escape(folder.config.problem)}[/] in "
        f"{escape(str(folder.path))}: method {settings.method}"
        f"{', layers' if settings.layers else ''}"
        f"{', GGN/residual split' if settings.split_ggn else ''}, "
        f"{settings.samples_per_class} samples per class, {device}, "
        f"{threads or torch.get_num_threads()} CPU thread(s)."
    )
    errors = (
        MissingStepError,
        SettingsConflictError,
        ConfigError,
        ValueError,
        FileNotFoundError,
        ImportError,
    )
    with torch_threads(threads):
        result = run_steps(
            "spectra",
            lambda on_progress: spectrum_run(
                folder,
                settings,
                steps=requested,
                device=device,
                data_dir=data_dir,
                force=force,
                on_progress=on_progress,
            ),
            _step_line,
            console,
            fail,
            errors,
        )
    if isinstance(result, int):
        return result
    if not result.computed:
        console.print("Nothing to do: every requested step is done.")
    if result.computed or result.skipped:
        render_spectra(folder, result, console)
    console.print(
        f"Spectra in {escape(str(folder.path / STAGE))}. Done in "
        f"{time.perf_counter() - start:.1f} s."
    )
    return 0


def command(
    run: RunOption,
    steps: Annotated[
        str | None,
        typer.Option(
            help="Recorded steps, e.g. 0,100 or 0:1000:100 (stop included). "
            "[all recorded]"
        ),
    ] = None,
    layers: Annotated[
        bool,
        typer.Option(
            "--layers/--no-layers", help="Also the spectrum of every layer's block."
        ),
    ] = False,
    blocks: Annotated[
        str,
        typer.Option(
            help="Layer blocks: 'modules' (a layer's weight with its bias) or "
            "'weights' (Linear/conv weights only, as LayerHessians)."
        ),
    ] = "modules",
    method: Annotated[
        str,
        typer.Option(
            help="exact (dense eigh), lanczos (extreme eigenvalues only), slq "
            "(density by stochastic Lanczos quadrature) or auto (exact up to "
            "--max-exact-dim, else slq)."
        ),
    ] = "auto",
    split_ggn: Annotated[
        bool,
        typer.Option(
            "--split-ggn/--no-split-ggn",
            help="Also the spectra of the GGN G and the residual H - G.",
        ),
    ] = False,
    samples_per_class: Annotated[
        int,
        typer.Option(
            min=1, help="Hessian samples per class (seeded by the run's seed)."
        ),
    ] = 10,
    top_k: Annotated[
        int, typer.Option(min=0, help="Eigenvalues of largest magnitude.")
    ] = 10,
    bottom_k: Annotated[
        int, typer.Option(min=0, help="Most negative eigenvalues.")
    ] = 3,
    num_probes: Annotated[int, typer.Option(min=1, help="SLQ probes.")] = 1,
    num_steps: Annotated[
        int, typer.Option(min=1, help="SLQ Lanczos steps per probe.")
    ] = 128,
    grid_points: Annotated[
        int, typer.Option(min=2, help="Points of the stored densities.")
    ] = 1024,
    max_exact_dim: Annotated[
        int, typer.Option(min=1, help="Largest block with a dense eigh.")
    ] = SpectrumSettings.max_exact_dim,
    tol: Annotated[
        float, typer.Option(help="Relative tolerance of the Lanczos eigensolves.")
    ] = 1e-6,
    seed: Annotated[
        int | None, typer.Option(help="Seed of probes and start vectors. [run's]")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32 or float64. [run's]")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Recompute steps that are done.")
    ] = False,
    device: DeviceOption = "cpu",
    data_dir: DataDirOption = None,
    threads: ThreadsOption = None,
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
        settings = SpectrumSettings(
            method=method,
            layers=layers,
            blocks=blocks,
            split_ggn=split_ggn,
            samples_per_class=samples_per_class,
            top_k=top_k,
            bottom_k=bottom_k,
            num_probes=num_probes,
            num_steps=num_steps,
            grid_points=grid_points,
            max_exact_dim=max_exact_dim,
            tol=tol,
            seed=seed,
            dtype=dtype,
        )
    except ValueError as error:
        raise typer.Exit(option_error(error)) from None
    raise typer.Exit(
        main(
            run=run,
            steps=steps,
            settings=settings,
            device=device,
            data_dir=data_dir,
            threads=threads,
            force=force,
        )
    )

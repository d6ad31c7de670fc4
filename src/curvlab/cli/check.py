"""``curvlab check``: :func:`curvlab.experiments.check.check_problem` as Rich tables.

Exit code 0 when every operator is OK or skipped (unsupported loss), 1 when one
fails, 2 when the problem cannot be built.
"""

from __future__ import annotations

from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from curvlab.cli._common import check_device
from curvlab.cli._options import DataDirOption, DeviceOption, DType
from curvlab.experiments.check import CheckReport, check_problem

__all__ = ["DTYPES", "command", "render_report"]

#: The dtypes the command line accepts, by name.
DTYPES = {"float32": torch.float32, "float64": torch.float64}

_STYLES = {"OK": "bold green", "FAIL": "bold red", "SKIP": "yellow"}
_COLUMNS = ("Build", "1st product\n+ det. check", "Product", "vᵀAv / vᵀv")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{1e3 * value:.1f} ms" if value < 1.0 else f"{value:.2f} s"


def render_report(report: CheckReport, console: Console) -> None:
    """Print a :func:`~curvlab.experiments.check.check_problem` report."""
    batches = "batch" if report.num_batches == 1 else "batches"
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    for row in (
        ("Problem", f"{report.problem}: {escape(report.description)}"),
        ("D", f"{report.num_params:,} parameters"),
        ("N", f"{report.num_data:,} train samples in {report.num_batches} {batches}"),
        ("dtype", str(report.dtype).removeprefix("torch.")),
        ("device", str(report.device)),
        ("loss", f"{report.loss:.6g} (mean train loss)"),
        ("gradient", f"{_seconds(report.gradient_seconds)} (one pass over the data)"),
    ):
        summary.add_row(*row)
    console.print(summary)

    table = Table(title="Operators: one product with a random vector v")
    table.add_column("Operator", no_wrap=True)
    table.add_column("Status")
    for header in _COLUMNS:
        table.add_column(header, justify="right")
    messages = any(check.message for check in report.operators)
    if messages:
        table.add_column("Message", overflow="fold", ratio=1)
    for check in report.operators:
        table.add_row(
            check.name,
            f"[{_STYLES.get(check.status, '')}]{check.status}[/]",
            _seconds(check.build_seconds),
            _seconds(check.first_seconds),
            _seconds(check.product_seconds),
            "-" if check.rayleigh is None else f"{check.rayleigh:.4g}",
            *([escape(check.message)] if messages else []),
        )
    console.print(table)
    failed = [c.name for c in report.operators if not c.ok]
    if failed:
        console.print(f"[bold red]FAIL[/]: {', '.join(failed)}.")
    else:
        console.print("[bold green]All operators OK.[/]")


def command(
    problem: Annotated[
        str,
        typer.Option(
            "--problem",
            "-p",
            help="Problem name (see curvlab.problems.names()), e.g. digits_mlp.",
        ),
    ],
    dtype: Annotated[
        DType, typer.Option(help="Floating dtype of model, data and products.")
    ] = DType.float32,
    device: DeviceOption = "cpu",
    data_dir: DataDirOption = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the problem, random vector and MC labels.")
    ] = 0,
    num_samples: Annotated[
        int | None,
        typer.Option(min=1, help="Use only this many train samples (default: all)."),
    ] = None,
) -> None:
    """Build every curvature operator on a problem, multiply once, and time it.

    Checks the Hessian, GGN, exact Fisher, Monte-Carlo Fisher (1 sample) and
    empirical Fisher: one product with a random vector, the determinism check,
    and a second product that must agree. Exits with 1 if an operator fails.
    """
    console, error_console = Console(), Console(stderr=True)
    try:
        resolved = check_device(device)
        with console.status(f"Building {problem}...") as status:
            report = check_problem(
                problem,
                dtype=DTYPES[dtype.value],
                device=resolved,
                data_dir=data_dir,
                seed=seed,
                num_samples=num_samples,
                on_progress=lambda event: status.update(
                    f"{escape(problem)}: checking {event.values['phase']}..."
                ),
            )
    except (ValueError, TypeError, FileNotFoundError, ImportError) as error:
        error_console.print(f"[bold red]Error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(2) from None
    render_report(report, console)
    raise typer.Exit(0 if report.ok else 1)

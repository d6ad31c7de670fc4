"""The ``curvlab`` Typer app: argument parsing only.

Each command forwards its options to the ``main`` function of its module
(:mod:`curvlab.cli.check`, :mod:`curvlab.cli.demo`,
:mod:`curvlab.cli.hesscale_quality`, :mod:`curvlab.cli.hesscale_cost`) and exits
with the code it returns.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from curvlab import __version__
from curvlab.cli import check as check_command
from curvlab.cli import exhaustive as exhaustive_command
from curvlab.cli import grassmann as grassmann_command
from curvlab.cli import hesscale_cost as hesscale_cost_command
from curvlab.cli import hesscale_quality as hesscale_quality_command
from curvlab.cli import overlap as overlap_command
from curvlab.cli import plot as plot_command
from curvlab.cli import spectrum as spectrum_command
from curvlab.cli import trace as trace_command
from curvlab.cli import train as train_command
from curvlab.cli._common import DataDirOption, DeviceOption

__all__ = ["app", "main"]

app = typer.Typer(
    name="curvlab",
    help="Measure the curvature of neural networks: Hessian, GGN and Fisher "
    "operators over whole data sets, applied matrix-free.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class DType(str, Enum):
    """Floating dtypes the commands accept."""

    float32 = "float32"
    float64 = "float64"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"curvlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Measure the curvature of neural networks."""


@app.command("check")
def check(
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
    raise typer.Exit(
        check_command.main(
            problem,
            dtype=dtype.value,
            device=device,
            data_dir=data_dir,
            seed=seed,
            num_samples=num_samples,
        )
    )


@app.command("demo")
def demo(
    out: Annotated[
        Path, typer.Option(help="Run folder; running again skips finished stages.")
    ] = Path("runs/demo"),
    steps: Annotated[int, typer.Option(min=1, help="Number of SGD steps.")] = 1000,
    seed: Annotated[
        int, typer.Option(help="Seed of the model, split, batches and sketches.")
    ] = 0,
    dtype: Annotated[
        DType, typer.Option(help="float32 is about twice as fast as float64.")
    ] = DType.float32,
    threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="PyTorch CPU threads. 1 loses little on these small products and "
            "stays fast when other processes share the cores.",
        ),
    ] = 1,
    quick: Annotated[
        bool,
        typer.Option(help="A tiny configuration that runs in seconds (for tests)."),
    ] = False,
) -> None:
    """Train digits_mlp, measure its curvature over training, write a report.

    Records the run in --out, then computes the Hessian's spectra (full and
    per layer), the overlap of magnitude masks with the top eigenspace, the
    sketch-vs-exact check and a HesScale comparison, and writes report.md and
    report.html with the figures. A few minutes on 2 CPU cores.
    """
    # imported here: the report's plotting stack loads only for this command
    from curvlab.cli import demo as demo_command

    raise typer.Exit(
        demo_command.main(
            out=out,
            steps=steps,
            seed=seed,
            dtype=dtype.value,
            threads=threads,
            quick=quick,
        )
    )


# options and help live in curvlab.cli.hesscale_quality, curvlab.cli.hesscale_cost
# and curvlab.cli.grassmann
app.command("hesscale-quality")(hesscale_quality_command.command)
app.command("hesscale-cost")(hesscale_cost_command.command)
app.command("grassmann")(grassmann_command.command)

# options and help live in curvlab.cli.train
app.command("train")(train_command.command)

# options and help live in curvlab.cli.overlap and curvlab.cli.exhaustive
app.command("overlap")(overlap_command.command)
app.command("exhaustive")(exhaustive_command.command)

# options and help live in curvlab.cli.spectrum and curvlab.cli.plot
app.command("spectrum")(spectrum_command.command)
app.command("trace")(trace_command.command)
app.add_typer(plot_command.app, name="plot")


def main() -> None:
    """Run the command line interface (the ``curvlab`` console script)."""
    app(prog_name="curvlab")

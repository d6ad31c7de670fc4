"""The ``curvlab`` Typer app: argument parsing only.

Each command forwards its options to the ``main`` function of its module
(:mod:`curvlab.cli.check`, :mod:`curvlab.cli.demo`) and exits with the code it
returns.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from curvlab import __version__
from curvlab.cli import check as check_command
from curvlab.cli import demo as demo_command

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
    device: Annotated[
        str, typer.Option(help="Device: cpu, cuda or cuda:<index>.")
    ] = "cpu",
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Folder with the data files of file-based problems."),
    ] = None,
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
    steps: Annotated[int, typer.Option(min=0, help="Number of SGD steps.")] = 1000,
    record_every: Annotated[
        int,
        typer.Option(min=1, help="Measure the Hessian every this many steps."),
    ] = 250,
    seed: Annotated[
        int, typer.Option(help="Seed of the model, split, batches and eigensolver.")
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
) -> None:
    """Train digits_mlp with SGD and track its Hessian's top eigenvalues and trace.

    At step 0, every --record-every steps and at the end, prints the train loss,
    the train and test accuracy, the 5 largest Hessian eigenvalues (ARPACK,
    which='LA') and the exact Hessian trace.
    """
    raise typer.Exit(
        demo_command.main(
            steps=steps,
            record_every=record_every,
            seed=seed,
            dtype=dtype.value,
            threads=threads,
        )
    )


def main() -> None:
    """Run the command line interface (the ``curvlab`` console script)."""
    app(prog_name="curvlab")

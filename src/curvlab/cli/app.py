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
from curvlab.cli import optimizers as optimizers_command
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


@app.command("hesscale-quality")
def hesscale_quality(
    out: Annotated[
        Path, typer.Option(help="Folder for the CSV, markdown and PNG files.")
    ],
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
    threads: Annotated[int, typer.Option(min=1, help="PyTorch CPU threads.")] = 1,
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
    from curvlab.cli import hesscale_quality as hesscale_quality_command

    raise typer.Exit(
        hesscale_quality_command.main(
            out=out,
            seeds=seeds,
            samples=samples,
            width=width,
            epochs=epochs,
            threads_count=threads,
        )
    )


@app.command("hesscale-cost")
def hesscale_cost(
    out: Annotated[
        Path, typer.Option(help="Folder for the CSV, markdown and PNG files.")
    ],
    depths: Annotated[
        str, typer.Option(help="Comma-separated numbers of hidden layers.")
    ] = "1,2,4,8,16",
    width: Annotated[int, typer.Option(min=1, help="Hidden units.")] = 512,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per step.")] = 1,
    repeats: Annotated[
        int, typer.Option(min=1, help="Timed steps per method and depth.")
    ] = 30,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated subset of: SGD, Adam, AdaHesScale, "
            "AdaHesScaleGN, GGN-MC, exact GGN diag., exact Hessian diag. "
            "(default: all)."
        ),
    ] = None,
    max_step_seconds: Annotated[
        float,
        typer.Option(min=0.0, help="Skip a method once one step takes longer."),
    ] = 10.0,
    threads: Annotated[int, typer.Option(min=1, help="PyTorch CPU threads.")] = 1,
) -> None:
    """Time a training step against depth, in gradient steps (HesScale study).

    64 inputs, Linear to --width, depth x [Linear(width, width), Tanh], Linear
    to 100 outputs, no biases, MSE, batch size 1: median time of a whole step
    of SGD, Adam, AdaHesScale, AdaHesScaleGN, GGN-MC and the exact GGN and
    Hessian diagonals (each with an AdaHesScale update), divided by the time
    of a gradient. Prints the table; writes CSV, markdown and a PNG into --out.
    """
    # imported here: matplotlib and curvlab.diagonal load only for this command
    from curvlab.cli import hesscale_cost as hesscale_cost_command

    try:
        depth_list = [
            int(d) for d in hesscale_cost_command.parse_list(depths, "--depths")
        ]
        method_list = (
            None
            if methods is None
            else hesscale_cost_command.parse_list(methods, "--methods")
        )
    except ValueError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(
        hesscale_cost_command.main(
            out=out,
            depths=depth_list,
            width=width,
            batch_size=batch_size,
            repeats=repeats,
            methods=method_list,
            max_step_seconds=max_step_seconds,
            threads_count=threads,
        )
    )


@app.command("grassmann")
def grassmann(
    out: Annotated[
        Path, typer.Option(help="Folder for the CSV, markdown and PNG files.")
    ],
    dims: Annotated[
        str, typer.Option(help="Comma-separated ambient dimensions D.")
    ] = "250,500,1000,2000",
    ratios: Annotated[
        str, typer.Option(help="Comma-separated ratios k/D in (0, 1].")
    ] = "0.05,0.2",
    planted: Annotated[
        str,
        typer.Option(help="Comma-separated planted overlaps in [0, 1]."),
    ] = "0.5",
    trials: Annotated[int, typer.Option(min=1, help="Pairs per cell.")] = 3,
    seed: Annotated[int, typer.Option(help="Base seed.")] = 0,
    threads: Annotated[int, typer.Option(min=1, help="PyTorch CPU threads.")] = 1,
) -> None:
    """Grassmannian metrics on random masks, subspaces and planted overlaps.

    For each D and k/D: random subspace pairs, random masks against random
    subspaces, and planted pairs (all angles equal; a shared fraction of
    directions). Every normalised distance and the overlap, as a table (with
    the chance values at k/D = 0.2 beside the paper's); writes CSV, markdown
    and a PNG into --out.
    """
    # imported here: matplotlib loads only for this command
    from curvlab.cli import grassmann as grassmann_command

    try:
        dim_list = grassmann_command.parse_numbers(dims, "--dims", int)
        ratio_list = grassmann_command.parse_numbers(ratios, "--ratios")
        planted_list = grassmann_command.parse_numbers(planted, "--planted")
    except ValueError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(
        grassmann_command.main(
            out=out,
            dims=dim_list,
            ratios=ratio_list,
            planted=planted_list,
            trials=trials,
            seed=seed,
            threads_count=threads,
        )
    )


# options and help live in curvlab.cli.train
app.command("train")(train_command.command)

# options and help live in curvlab.cli.overlap and curvlab.cli.exhaustive
app.command("overlap")(overlap_command.command)
app.command("exhaustive")(exhaustive_command.command)

# options and help live in curvlab.cli.spectrum and curvlab.cli.plot
app.command("spectrum")(spectrum_command.command)
app.command("trace")(trace_command.command)
app.command("optimizers")(optimizers_command.command)
app.add_typer(plot_command.app, name="plot")


def main() -> None:
    """Run the command line interface (the ``curvlab`` console script)."""
    app(prog_name="curvlab")

"""The ``curvlab`` Typer app: it only registers the commands.

Each command lives in its own module, which declares the command's options and
help in a ``command(...)`` function and does the work in a plain ``main(...)``
that returns the exit code (:mod:`curvlab.cli.train`, :mod:`curvlab.cli.check`,
...). The modules are imported here at start, so they import matplotlib, the
demo, the report and the HesScale studies only inside their functions.
"""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

from curvlab import __version__
from curvlab.cli import check as check_command
from curvlab.cli import demo as demo_command
from curvlab.cli import exhaustive as exhaustive_command
from curvlab.cli import grassmann as grassmann_command
from curvlab.cli import hesscale_cost as hesscale_cost_command
from curvlab.cli import hesscale_quality as hesscale_quality_command
from curvlab.cli import measure as measure_command
from curvlab.cli import optimizers as optimizers_command
from curvlab.cli import overlap as overlap_command
from curvlab.cli import pipeline as pipeline_command
from curvlab.cli import plot as plot_command
from curvlab.cli import solve as solve_command
from curvlab.cli import spectrum as spectrum_command
from curvlab.cli import tic as tic_command
from curvlab.cli import trace as trace_command
from curvlab.cli import train as train_command
from curvlab.cli._common import exit_on_run_errors

__all__ = ["app", "main"]


class _Group(TyperGroup):
    """The app's command group: run-folder errors end in one line and an exit code."""

    def invoke(self, ctx):  # noqa: D102 - click's Group.invoke
        with exit_on_run_errors():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Group,
    name="curvlab",
    help="Measure the curvature of neural networks: Hessian, GGN and Fisher "
    "operators over whole data sets, applied matrix-free.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


app.command("check")(check_command.command)
app.command("demo")(demo_command.command)
app.command("hesscale-quality")(hesscale_quality_command.command)
app.command("hesscale-cost")(hesscale_cost_command.command)
app.command("grassmann")(grassmann_command.command)
app.command("train")(train_command.command)
app.command("overlap")(overlap_command.command)
app.command("exhaustive")(exhaustive_command.command)
app.command("spectrum")(spectrum_command.command)
app.command("trace")(trace_command.command)
app.command("tic")(tic_command.command)
app.command("measure")(measure_command.command)
app.command("solve")(solve_command.command)
app.command("pipeline")(pipeline_command.command)
app.command("optimizers")(optimizers_command.command)
app.add_typer(plot_command.app, name="plot")


def main() -> None:
    """Run the command line interface (the ``curvlab`` console script)."""
    app(prog_name="curvlab")

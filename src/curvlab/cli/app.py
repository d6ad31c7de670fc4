"""The ``curvlab`` Typer app: it only registers the commands.

Each command is the ``command`` function of its own module, imported at start:
the modules import matplotlib, the demo, the report and the HesScale studies
only inside their functions.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperGroup

from curvlab import __version__
from curvlab.cli._common import exit_on_run_errors

__all__ = ["app", "main"]

#: The commands, as ``curvlab --help`` lists them (modules ``curvlab.cli.<name>``).
COMMANDS = ("check", "demo", "hesscale-quality", "hesscale-cost", "grassmann")
COMMANDS += ("train", "overlap", "exhaustive", "spectrum", "trace", "tic")
COMMANDS += ("measure", "solve", "pipeline", "optimizers")


class _Group(TyperGroup):
    """The app's command group: run-folder errors end in one line and an exit code.

    Option help is plain text: a trailing ``[the run's]`` names a default, which
    Rich would otherwise swallow as a style tag, so it is escaped here once.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        commands = list(self.commands.values())
        while commands:
            command = commands.pop()
            commands.extend(getattr(command, "commands", {}).values())
            for param in command.params:
                if getattr(param, "help", None):
                    param.help = escape(param.help)

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


for _name in COMMANDS:
    _module = importlib.import_module(f"curvlab.cli.{_name.replace('-', '_')}")
    app.command(_name)(_module.command)
app.add_typer(importlib.import_module("curvlab.cli.plot").app, name="plot")


def main() -> None:
    """Run the command line interface (the ``curvlab`` console script)."""
    app(prog_name="curvlab")

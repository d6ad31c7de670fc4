"""The ``curvlab`` command line: a Typer app, one module per command.

Each command module declares its options in a ``command(...)`` function and
exposes a plain ``main(...)`` function that returns the exit code, so tests call
it directly; :mod:`curvlab.cli.app` only registers the commands. What commands
share (option types, the device check, the number formatter, the progress bar
and the one Ctrl-C handler) is in :mod:`curvlab.cli._common`. The work itself
happens in :mod:`curvlab.experiments`.
"""

"""The ``curvlab`` command line: a Typer app, one module per command.

Each command module exposes a plain ``main(...)`` function that returns the exit
code, so tests call it directly; :mod:`curvlab.cli.app` only parses arguments.
The work itself happens in :mod:`curvlab.experiments`.
"""

"""The ``curvlab`` command line: a Typer app, one module per command.

Each module's ``command(...)`` (some also have a ``main(...)`` returning the exit
code) calls into :mod:`curvlab.experiments`; :mod:`curvlab.cli.app` registers
them. Shared options are in :mod:`curvlab.cli._options`, shared glue in
:mod:`curvlab.cli._common`.
"""

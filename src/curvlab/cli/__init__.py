"""The ``curvlab`` command line: a Typer app, one module per command.

Each command module declares its options in a ``command(...)`` function that
calls into :mod:`curvlab.experiments` (some also expose a plain ``main(...)``
returning the exit code); :mod:`curvlab.cli.app` only registers the commands.
The options commands share are declared once in :mod:`curvlab.cli._options`;
the glue they share (the device check, the number formatter, the progress bar,
the one Ctrl-C handler, the body of a stage command) is in
:mod:`curvlab.cli._common`.
"""

"""``curvlab plot``: figures from the results stored in a run folder.

One command per figure, each a plotting function of the run folder imported
when it runs (``curvlab --help`` does not load matplotlib).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from curvlab.cli._common import error_printer
from curvlab.cli._options import RunOption
from curvlab.runs import ConfigError, MissingStepError, RunFolder, parse_steps

__all__ = ["OVERLAP_MODULE", "app", "main"]

#: Module whose ``plot_overlap(run)`` draws ``curvlab plot overlap``.
OVERLAP_MODULE = "curvlab.experiments.overlap_plots"

app = typer.Typer(
    name="plot",
    help="Draw figures from the results stored in a run folder (PNG files in "
    "RUN_DIR/plots/).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _spectrum(run: RunFolder, steps: str | None = None, operator=None):
    from curvlab.experiments.spectrum_plots import plot_spectrum

    chosen = None if steps is None else list(parse_steps(steps))
    operators = None if operator is None else [operator]
    return plot_spectrum(run, steps=chosen, operators=operators)


def _match(run: RunFolder, step: int | None = None, operator: str = "hessian"):
    from curvlab.experiments.spectrum_plots import plot_match

    return plot_match(run, step=step, operator=operator)


def _overlap(run: RunFolder):
    if importlib.util.find_spec(OVERLAP_MODULE) is None:
        raise ConfigError(
            "`curvlab plot overlap` needs the overlap experiment "
            f"({OVERLAP_MODULE}), which this installation does not have."
        )
    return importlib.import_module(OVERLAP_MODULE).plot_overlap(run)


_PLOTS = {"spectrum": _spectrum, "match": _match, "overlap": _overlap}


def main(what: str, *, run: str | Path, **options) -> int:
    """Draw figure ``what`` with ``options`` for a run; print the files written.

    Returns:
        The exit code: 0 on success, 2 for an unknown figure, a missing run or
        missing results.
    """
    try:
        if what not in _PLOTS:
            raise ConfigError(f"Unknown figure {what!r}. Choose from {list(_PLOTS)}.")
        files = _PLOTS[what](RunFolder.open(run), **options)
    except (ConfigError, FileNotFoundError, MissingStepError, ValueError) as error:
        return error_printer(Console(stderr=True))(str(error))
    for path in files:
        Console().print(escape(str(path)), soft_wrap=True)
    return 0


_Steps = Annotated[
    str | None, typer.Option(help="Steps to draw, e.g. 0,100. [all stored]")
]
_Operators = Annotated[
    str | None, typer.Option(help="hessian, ggn or residual. [all stored]")
]
_Step = Annotated[
    int | None, typer.Option(help="Step of the per-step figure. [last stored]")
]
_Operator = Annotated[str, typer.Option(help="hessian, ggn or residual.")]


@app.command("spectrum")
def spectrum(run: RunOption, steps: _Steps = None, operator: _Operators = None) -> None:
    """Spectral densities over training: one panel per layer and the full one.

    Log-scale density against the eigenvalue, one curve per stored step (from
    `curvlab spectrum`), per operator; and the extreme eigenvalues against the
    step.
    """
    raise typer.Exit(main("spectrum", run=run, steps=steps, operator=operator))


@app.command("match")
def match(run: RunOption, step: _Step = None, operator: _Operator = "hessian") -> None:
    """Layer-vs-full spectrum distances against depth (needs `spectrum --layers`).

    At one step (match_distros_peak.png) and summed over the stored steps
    (match_distros_wasserstein.png), each normalised by its maximum over
    layers: the Wasserstein-1 distance between the spectra next to the
    published LayerHessians matching procedure; all values in
    match_distances.csv.
    """
    raise typer.Exit(main("match", run=run, step=step, operator=operator))


@app.command("overlap")
def overlap(run: RunOption) -> None:
    """Overlap figures of the overlap experiment (if installed)."""
    raise typer.Exit(main("overlap", run=run))

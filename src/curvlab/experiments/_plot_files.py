"""What the ``*_plots`` modules share: CSV tables, Agg figures, PNGs of a run."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from curvlab.runs.folder import RunFolder

__all__ = ["PLOTS", "new_figure", "save_plot", "write_csv"]

#: Folder of the plots inside the run folder.
PLOTS = "plots"


def write_csv(
    path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Write a header and rows with :mod:`csv`'s default dialect (CRLF line ends)."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def new_figure(width: float, height: float, **options) -> Figure:
    """A ``width x height`` inch figure on an Agg canvas (``options`` of Figure)."""
    figure = Figure(figsize=(width, height), **options)
    FigureCanvasAgg(figure)
    return figure


def save_plot(run: RunFolder, figure: Figure, name: str, *, dpi: int = 110) -> Path:
    """Write ``figure`` atomically as ``RUN_DIR/plots/<name>`` (PNG)."""
    path = run.resolve(Path(PLOTS) / name)
    with run.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return path

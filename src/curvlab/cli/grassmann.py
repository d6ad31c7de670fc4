"""``curvlab grassmann``: Grassmannian metrics on random and planted subspaces.

The work is :func:`curvlab.experiments.grassmann.grassmann_study`; this module
shows its progress, prints the chance values at ``k/D = 0.2`` beside the
paper's and the table of all cells as markdown, and writes into the output
folder:

- ``grassmann.csv``: per scenario, ratio and ``D``, the mean and standard
  deviation over trials of every normalised metric and of the overlap;
- ``grassmann.md``: the settings and both tables;
- ``grassmann.png``: one panel per quantity against ``D``, one line per
  scenario and ratio, with the paper's chance values as dotted lines.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from curvlab.cli._common import (
    markdown_table,
    print_written,
    torch_threads,
    write_study_files,
)
from curvlab.experiments.grassmann import (
    DEFAULT_DIMS,
    DEFAULT_PLANTED,
    DEFAULT_RATIOS,
    DEFAULT_TRIALS,
    PAPER_CHANCE_0_2,
    QUANTITIES,
    GrassmannResult,
    chance_comparison,
    grassmann_study,
)

__all__ = [
    "CSV_NAME",
    "MARKDOWN_NAME",
    "PNG_NAME",
    "grassmann_markdown",
    "main",
    "parse_numbers",
    "plot_grassmann",
    "write_grassmann_csv",
]

CSV_NAME = "grassmann.csv"
MARKDOWN_NAME = "grassmann.md"
PNG_NAME = "grassmann.png"
FILE_NAMES = (CSV_NAME, MARKDOWN_NAME, PNG_NAME)
#: The ratio whose chance values the paper reports.
CHANCE_RATIO = 0.2


def parse_numbers(text: str, name: str, kind: type = float) -> list:
    """Parse a comma-separated list of numbers.

    Args:
        text: The option's value, e.g. ``"250, 500"``.
        name: The option's name in messages, e.g. ``"--dims"``.
        kind: ``int`` or ``float``.

    Returns:
        The numbers, in order.

    Raises:
        ValueError: If an entry is no number of that kind or the list is empty.
    """
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise ValueError(f"{name} must be a comma-separated list. Got {text!r}.")
    try:
        return [kind(entry) for entry in entries]
    except ValueError:
        raise ValueError(
            f"{name} must be a comma-separated list of {kind.__name__}s. Got {text!r}."
        ) from None


def _number(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}"


def grassmann_markdown(result: GrassmannResult) -> str:
    """Render the settings, the chance comparison and all cells as markdown.

    Args:
        result: The study's result.

    Returns:
        The markdown text.
    """
    lines = [
        f"Grassmannian metrics on pairs of k-dimensional subspaces of R^D: "
        f"D in {list(result.dims)}, k/D in {list(result.ratios)}, planted "
        f"{list(result.planted)}, {result.num_trials} trial(s) per cell, seed "
        f"{result.seed}, float64 ({result.seconds:.1f} s). Metrics are "
        "normalised distances (0: equal subspaces, 1: the largest distance; "
        "martin: 1 - (prod cos^2)^(1/k)); overlap is the mean squared cosine "
        "(chance k/D). Means over trials.",
        "",
    ]
    if CHANCE_RATIO in result.ratios:
        D = max(result.dims)
        rows = [
            [quantity, _number(paper, 5), _number(random, 5), _number(mask, 5)]
            for quantity, paper, random, mask in chance_comparison(result, CHANCE_RATIO)
        ]
        lines += [
            f"Chance values at k/D = {CHANCE_RATIO} (D = {D}, k = "
            f"{round(CHANCE_RATIO * D)}) against papers.md §1.2:",
            "",
            markdown_table(["quantity", "paper", "random pair", "random mask"], rows),
            "",
        ]
    header = ["scenario", "k/D", "D", "k", *QUANTITIES]
    rows = [
        [
            cell.label,
            f"{cell.ratio:g}",
            str(cell.D),
            str(cell.k),
            *(_number(cell.mean(q)) for q in QUANTITIES),
        ]
        for cell in result.cells
    ]
    lines += ["All cells:", "", markdown_table(header, rows)]
    if result.skipped:
        lines += ["", "Skipped: " + "; ".join(result.skipped) + "."]
    return "\n".join(lines)


def write_grassmann_csv(result: GrassmannResult, path: str | Path) -> None:
    """Write one row per cell: means and standard deviations of every quantity.

    Args:
        result: The study's result.
        path: The file to write.
    """
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                "scenario",
                "planted",
                "ratio",
                "D",
                "k",
                "trials",
                *(f"{q}_mean" for q in QUANTITIES),
                *(f"{q}_std" for q in QUANTITIES),
            ]
        )
        for cell in result.cells:
            writer.writerow(
                [
                    cell.scenario,
                    "" if cell.planted is None else repr(cell.planted),
                    repr(cell.ratio),
                    cell.D,
                    cell.k,
                    len(cell.values[QUANTITIES[0]]),
                    *(repr(cell.mean(q)) for q in QUANTITIES),
                    *(repr(cell.std(q)) for q in QUANTITIES),
                ]
            )


def plot_grassmann(result: GrassmannResult, path: str | Path) -> None:
    """Draw every quantity against ``D`` as a PNG (matplotlib's Agg backend).

    One panel per quantity; one colour and marker per scenario (``random``
    and ``mask`` coincide in law), one line style per ratio,
    error bars of one standard deviation over trials; the paper's chance values
    at ``k/D = 0.2`` as dotted grey lines.

    Args:
        result: The study's result.
        path: The PNG file to write.
    """
    columns = 3
    rows = math.ceil(len(QUANTITIES) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    labels = list(dict.fromkeys(cell.label for cell in result.cells))
    colors = {label: f"C{i}" for i, label in enumerate(labels)}
    markers = {label: "os^vDP*X"[i % 8] for i, label in enumerate(labels)}
    styles = ["-", "--", ":", "-."]
    for ax, quantity in zip(axes, QUANTITIES, strict=False):
        for r, ratio in enumerate(result.ratios):
            for label in labels:
                cells = [
                    c for c in result.cells if c.label == label and c.ratio == ratio
                ]
                if not cells:
                    continue
                ax.errorbar(
                    [c.D for c in cells],
                    [c.mean(quantity) for c in cells],
                    yerr=[c.std(quantity) for c in cells],
                    color=colors[label],
                    linestyle=styles[r % len(styles)],
                    marker=markers[label],
                    markersize=4,
                    markerfacecolor="none",
                    capsize=2,
                    label=f"{label}, k/D={ratio:g}",
                )
        if CHANCE_RATIO in result.ratios and quantity in PAPER_CHANCE_0_2:
            ax.axhline(
                PAPER_CHANCE_0_2[quantity], color="grey", linestyle=":", linewidth=1
            )
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(list(result.dims), [str(d) for d in result.dims])
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(quantity)
        ax.set_xlabel("D")
        ax.set_ylabel("similarity" if quantity == "overlap" else "normalised distance")
    for ax in axes[len(QUANTITIES) :]:
        ax.set_axis_off()
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncols=4, fontsize="small")
    figure.suptitle(
        f"Grassmannian metrics: {result.num_trials} trial(s) per point; dotted: "
        f"the paper's chance values at k/D = {CHANCE_RATIO}"
    )
    figure.savefig(path, dpi=110)


def main(
    *,
    out: str | Path,
    dims: Sequence[int] = DEFAULT_DIMS,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    planted: Sequence[float] = DEFAULT_PLANTED,
    trials: int = DEFAULT_TRIALS,
    seed: int = 0,
    threads_count: int | None = 1,
    console: Console | None = None,
    error_console: Console | None = None,
) -> int:
    """Run the Grassmannian-metrics study, print its tables and write its files.

    Args:
        out: Output folder (created if missing).
        dims: Ambient dimensions ``D``.
        ratios: Ratios ``k/D`` in ``(0, 1]``.
        planted: Planted overlaps in ``[0, 1]`` (``rotated`` and ``shared``).
        trials: Pairs per cell.
        seed: Base seed.
        threads_count: PyTorch CPU threads during the study (restored
            afterwards); ``None`` keeps the current setting.
        console: Where to print (default: standard output).
        error_console: Where to print errors (default: standard error).

    Returns:
        The exit code: 0 on success, 2 for invalid arguments or an unwritable
        folder.
    """
    console = console or Console()
    error_console = error_console or Console(stderr=True)
    if threads_count is not None and threads_count < 1:
        error_console.print(
            f"[bold red]Error:[/] --threads must be at least 1. Got {threads_count}."
        )
        return 2
    out = Path(out).expanduser()
    start = time.perf_counter()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with (
            torch_threads(threads_count),
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
                transient=True,
            ) as progress,
        ):
            task = progress.add_task("cells", total=None)

            def on_progress(completed: int, total: int) -> None:
                progress.update(task, completed=completed, total=total)

            result = grassmann_study(
                dims,
                ratios,
                planted=planted,
                num_trials=trials,
                seed=seed,
                on_progress=on_progress,
            )
        markdown = grassmann_markdown(result)
        write_study_files(
            out,
            FILE_NAMES,
            markdown,
            lambda path: write_grassmann_csv(result, path),
            lambda path: plot_grassmann(result, path),
        )
    except (ValueError, OSError) as error:
        error_console.print(f"[bold red]Error:[/] {escape(str(error))}")
        return 2
    console.print(markdown, markup=False, highlight=False, soft_wrap=True)
    print_written(console, out, FILE_NAMES, start)
    return 0

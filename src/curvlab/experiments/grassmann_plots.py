"""Tables and figure of the Grassmannian-metrics study (``curvlab grassmann``)."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

from curvlab._format import fmt, markdown_table
from curvlab.experiments._plot_files import new_figure, write_csv
from curvlab.experiments.grassmann import (
    PAPER_CHANCE_0_2,
    QUANTITIES,
    GrassmannResult,
    chance_comparison,
)

__all__ = [
    "CHANCE_RATIO",
    "grassmann_markdown",
    "plot_grassmann",
    "write_grassmann_csv",
]

#: The ratio whose chance values the paper reports.
CHANCE_RATIO = 0.2


def grassmann_markdown(result: GrassmannResult) -> str:
    """Render the settings, the chance comparison and all cells as markdown."""
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
    number = partial(fmt, decimals=True, missing="—")
    if CHANCE_RATIO in result.ratios:
        D = max(result.dims)
        rows = [
            [quantity, *(number(v, 5) for v in values)]
            for quantity, *values in chance_comparison(result, CHANCE_RATIO)
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
        [cell.label, f"{cell.ratio:g}", str(cell.D), str(cell.k)]
        + [number(cell.mean(q)) for q in QUANTITIES]
        for cell in result.cells
    ]
    lines += ["All cells:", "", markdown_table(header, rows)]
    if result.skipped:
        lines += ["", "Skipped: " + "; ".join(result.skipped) + "."]
    return "\n".join(lines)


def write_grassmann_csv(result: GrassmannResult, path: str | Path) -> None:
    """Write each cell's means and standard deviations over trials to ``path``."""
    header = ["scenario", "planted", "ratio", "D", "k", "trials"]
    header += [f"{q}_{stat}" for stat in ("mean", "std") for q in QUANTITIES]
    rows = [
        [cell.scenario, "" if cell.planted is None else repr(cell.planted)]
        + [repr(cell.ratio), cell.D, cell.k, len(cell.values[QUANTITIES[0]])]
        + [repr(stat(q)) for stat in (cell.mean, cell.std) for q in QUANTITIES]
        for cell in result.cells
    ]
    write_csv(path, header, rows)


def plot_grassmann(result: GrassmannResult, path: str | Path) -> None:
    """Draw every quantity against ``D`` into the PNG ``path``.

    One panel per quantity; one colour and marker per scenario (``random`` and
    ``mask`` coincide in law), one line style per ratio, error bars of one
    standard deviation over trials; the paper's chance values as dotted lines.
    """
    columns = 3
    rows = math.ceil(len(QUANTITIES) / columns)
    figure = new_figure(4.2 * columns, 3.2 * rows, layout="constrained")
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

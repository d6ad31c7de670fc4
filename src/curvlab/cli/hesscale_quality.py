"""``curvlab hesscale-quality``: diagonal estimates against the exact Hessian diagonal.

The work is :func:`curvlab.experiments.hesscale_quality.hesscale_quality`; this
module shows its progress, prints the normalised errors as a markdown table, and
writes into the output folder:

- ``hesscale_quality.csv``: per estimator, the normalised and the raw mean L1
  error of each layer and in total, and the range of the per-seed ratios;
- ``hesscale_quality.md``: the settings and the table;
- ``hesscale_quality.png``: the normalised total errors as bars (log scale, one
  dot per seed) beside the raw per-layer errors.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from curvlab.cli._common import (
    markdown_table,
    print_written,
    torch_threads,
    write_study_files,
)
from curvlab.experiments.hesscale_quality import (
    NORMALIZER,
    QualityResult,
    hesscale_quality,
)

__all__ = [
    "CSV_NAME",
    "MARKDOWN_NAME",
    "PNG_NAME",
    "main",
    "plot_quality",
    "quality_markdown",
    "write_quality_csv",
]

CSV_NAME = "hesscale_quality.csv"
MARKDOWN_NAME = "hesscale_quality.md"
PNG_NAME = "hesscale_quality.png"
FILE_NAMES = (CSV_NAME, MARKDOWN_NAME, PNG_NAME)


def _number(value: float) -> str:
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def quality_markdown(result: QualityResult) -> str:
    """Render the normalised errors and the settings as markdown.

    Args:
        result: The study's result.

    Returns:
        Settings, the table (one row per estimator, best first) and the ranking.
    """
    config = result.config
    header = ["estimator", *result.layers, "total", "per-seed range"]
    rows = []
    for method in result.ranking():
        ratios = [r for r in result.seed_ratios[method] if not math.isnan(r)]
        spread = f"{_number(min(ratios))}–{_number(max(ratios))}" if ratios else "—"
        rows.append(
            [
                method,
                *(_number(result.normalized[method][layer]) for layer in result.layers),
                _number(result.normalized[method]["total"]),
                spread,
            ]
        )
    unit = result.mean_errors()[NORMALIZER]["total"]
    lines = [
        f"Data: {config.get('data', '?')}. Model: {config.get('architecture', '?')}, "
        f"D = {config.get('num_params', 0):,}. Loss: {config.get('loss', '?')}. "
        f"Training: {config.get('training', '?')}. Evaluation: "
        f"{config.get('evaluation', '?')}, {len(result.seeds)} seed(s) "
        f"({', '.join(map(str, result.seeds))}), {config.get('dtype', '?')}.",
        "",
        "L1 error against the exact Hessian diagonal, summed over each layer's "
        "weight and bias, averaged over samples and seeds, divided by "
        f"{NORMALIZER}'s mean total error ({unit:.4g}). Per-seed range: the "
        f"total's ratio to {NORMALIZER}'s on each seed alone.",
        "",
        markdown_table(header, rows),
        "",
        "Ranking (lowest total error first): " + " < ".join(result.ranking()) + ".",
    ]
    return "\n".join(lines)


def write_quality_csv(result: QualityResult, path: str | Path) -> None:
    """Write the normalised and raw errors of each estimator as CSV.

    Args:
        result: The study's result.
        path: The file to write.
    """
    raw = result.mean_errors()
    columns = [*result.layers, "total"]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                "method",
                *(f"{c} normalized" for c in columns),
                *(f"{c} L1" for c in columns),
                "seed ratio min",
                "seed ratio max",
                "num_seeds",
                "num_samples",
            ]
        )
        for method in result.methods:
            ratios = result.seed_ratios[method]
            writer.writerow(
                [
                    method,
                    *(repr(result.normalized[method][c]) for c in columns),
                    *(repr(raw[method][c]) for c in columns),
                    repr(min(ratios)),
                    repr(max(ratios)),
                    len(result.seeds),
                    result.num_samples,
                ]
            )


def plot_quality(result: QualityResult, path: str | Path) -> None:
    """Draw the normalised total errors and the per-layer errors as a PNG.

    Left: one bar per estimator, the normalised total error (log scale), and
    one dot per seed (that seed's ratio). Right: mean L1 error per layer.

    Args:
        result: The study's result.
        path: The PNG file to write.
    """
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, width_ratios=(3, 2))
    methods = result.methods
    colors = [f"C{i}" for i in range(len(methods))]
    totals = [result.normalized[m]["total"] for m in methods]
    positions = range(len(methods))
    left.bar(positions, totals, color=colors, alpha=0.6)
    for x, method in enumerate(methods):
        ratios = result.seed_ratios[method]
        left.scatter(
            [x] * len(ratios), ratios, color="black", s=8, zorder=3, linewidths=0
        )
    left.axhline(1.0, color="red", alpha=0.3, linewidth=1)
    left.set_xticks(list(positions), methods, rotation=30, ha="right")
    left.set_ylabel(f"L1 error / {NORMALIZER}'s")
    if all(t > 0 and math.isfinite(t) for t in totals):
        left.set_yscale("log")
    left.set_title("Normalised total L1 error (dots: seeds)")

    raw = result.mean_errors()
    layers = list(range(1, len(result.layers) + 1))
    for method, color in zip(methods, colors, strict=True):
        values = [raw[method][layer] for layer in result.layers]
        right.plot(layers, values, marker="o", color=color, label=method)
    right.set_yscale("symlog", linthresh=1e-3)
    right.set_xticks(layers)
    right.set_xlabel("layer")
    right.set_ylabel("mean L1 error")
    right.set_title("Per layer")
    right.legend(fontsize="small")
    figure.suptitle(
        f"Diagonal Hessian estimates: {result.config.get('architecture', '')}, "
        f"{len(result.seeds)} seed(s) x {result.num_samples} samples"
    )
    figure.savefig(path, dpi=120)


def main(
    *,
    out: str | Path,
    seeds: int = 3,
    samples: int = 100,
    width: int = 64,
    epochs: int = 2,
    threads_count: int | None = 1,
    console: Console | None = None,
    error_console: Console | None = None,
) -> int:
    """Run the approximation-quality study, print its table and write its files.

    Args:
        out: Output folder (created if missing).
        seeds: Number of seeds; runs seeds ``0, ..., seeds - 1``.
        samples: Train samples measured per seed (batch size 1).
        width: Units per hidden layer of the 64-w-w-w-10 tanh MLP.
        epochs: SGD epochs before measuring (lr 1e-3, batch size 64).
        threads_count: PyTorch CPU threads during the study (restored
            afterwards); ``None`` keeps the current setting.
        console: Where to print (default: standard output).
        error_console: Where to print errors (default: standard error).

    Returns:
        The exit code: 0 on success, 2 for invalid arguments.
    """
    console = console or Console()
    error_console = error_console or Console(stderr=True)
    if (
        seeds < 1
        or samples < 1
        or width < 1
        or epochs < 0
        or (threads_count is not None and threads_count < 1)
    ):
        error_console.print(
            "[bold red]Error:[/] --seeds, --samples, --width and --threads must be "
            f"at least 1 and --epochs at least 0. Got {seeds}, {samples}, {width}, "
            f"{threads_count} and {epochs}."
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
                TimeElapsedColumn(),
                console=console,
            ) as progress,
        ):
            task = progress.add_task("samples", total=seeds * samples)

            def on_progress(seed: int, completed: int, total: int) -> None:
                # seeds run in order 0, 1, ...: ``seed`` of them are done
                progress.update(
                    task,
                    description=f"seed {seed}: samples",
                    completed=seed * total + completed,
                )

            result = hesscale_quality(
                seeds=range(seeds),
                num_samples=samples,
                width=width,
                epochs=epochs,
                on_progress=on_progress,
            )
    except (ValueError, OSError) as error:
        error_console.print(f"[bold red]Error:[/] {escape(str(error))}")
        return 2
    markdown = quality_markdown(result)
    console.print(markdown, markup=False, highlight=False, soft_wrap=True)
    write_study_files(
        out,
        FILE_NAMES,
        markdown,
        lambda path: write_quality_csv(result, path),
        lambda path: plot_quality(result, path),
    )
    print_written(console, out, FILE_NAMES, start)
    return 0

"""``curvlab hesscale-cost``: time per training step against depth.

The work is :func:`curvlab.experiments.hesscale_cost.hesscale_cost`; this module
shows its progress, prints the step times as multiples of a gradient step in a
markdown table, and writes into the output folder:

- ``hesscale_cost.csv``: one row per depth and method (and the unit), with the
  median and the fastest seconds, the multiple of a gradient step, the number
  of timed steps and why a method was skipped;
- ``hesscale_cost.md``: the settings and the table;
- ``hesscale_cost.png``: seconds per step against the parameter count (log-log)
  beside the multiples of a gradient step against depth.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
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
from curvlab.experiments.hesscale_cost import (
    DEFAULT_DEPTHS,
    UNIT,
    CostResult,
    hesscale_cost,
)

__all__ = [
    "CSV_NAME",
    "MARKDOWN_NAME",
    "PNG_NAME",
    "cost_markdown",
    "main",
    "parse_list",
    "plot_cost",
    "write_cost_csv",
]

CSV_NAME = "hesscale_cost.csv"
MARKDOWN_NAME = "hesscale_cost.md"
PNG_NAME = "hesscale_cost.png"
FILE_NAMES = (CSV_NAME, MARKDOWN_NAME, PNG_NAME)


def parse_list(text: str, label: str) -> list[str]:
    """Split a comma-separated option value into its stripped, non-empty items.

    Args:
        text: E.g. ``"1,2, 4"``.
        label: Option name for the error message.

    Returns:
        The items.

    Raises:
        ValueError: If there are none.
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{label} needs at least one comma-separated value.")
    return items


def cost_markdown(result: CostResult) -> str:
    """Render the step times and the settings as markdown.

    Args:
        result: The study's result.

    Returns:
        Settings, then a table with one row per depth: ``D``, the gradient step
        in milliseconds, and each method's median step time in gradient steps.
    """
    config = result.config
    unit = result.median_seconds(UNIT)
    multiples = {m: result.multiples(m) for m in result.methods}
    header = ["depth", "D", "gradient (ms)", *result.methods]
    rows = []
    for d, depth in enumerate(result.depths):
        cells = [str(depth), f"{result.num_params[d]:,}", f"{1e3 * unit[d]:.2f}"]
        for method in result.methods:
            value = multiples[method][d]
            cells.append("—" if value is None else f"{value:.2f}×")
        rows.append(cells)
    skipped = [
        f"{method} from depth {depth} on ({reason})"
        for method in result.methods
        for depth, reason in zip(result.depths, result.skipped[method], strict=True)
        if reason and reason != "skipped at a smaller depth"
    ]
    lines = [
        f"Model: {config.get('architecture', '?')}; {config.get('loss', '?')}; "
        f"batch size {config.get('batch_size', '?')}; {config.get('dtype', '?')} "
        f"on CPU, {config.get('threads', '?')} thread(s). Median of "
        f"{config.get('repeats', '?')} timed steps after one warm-up step, "
        "methods interleaved.",
        "",
        "Time per training step (forward, backward, diagonal, update) in gradient "
        "steps (zero grad, forward, backward); '—': skipped.",
        "",
        markdown_table(header, rows),
    ]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    return "\n".join(lines)


def write_cost_csv(result: CostResult, path: str | Path) -> None:
    """Write one row per depth and method (the unit included) as CSV.

    Args:
        result: The study's result.
        path: The file to write.
    """
    unit = result.median_seconds(UNIT)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                "depth",
                "num_params",
                "method",
                "median_seconds",
                "min_seconds",
                "gradient_steps",
                "num_timed",
                "skipped",
            ]
        )
        for name in (UNIT, *result.methods):
            medians = result.median_seconds(name)
            for d, depth in enumerate(result.depths):
                median = medians[d]
                times = result.seconds[name][d]
                writer.writerow(
                    [
                        depth,
                        result.num_params[d],
                        name,
                        "" if median is None else repr(median),
                        repr(min(times)) if times else "",
                        "" if median is None else repr(median / unit[d]),
                        len(result.seconds[name][d]),
                        "" if name == UNIT else result.skipped[name][d],
                    ]
                )


def plot_cost(result: CostResult, path: str | Path) -> None:
    """Draw seconds per step and multiples of a gradient step as a PNG.

    Args:
        result: The study's result.
        path: The PNG file to write.
    """
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    for index, name in enumerate((UNIT, *result.methods)):
        style = {"color": "black", "linestyle": "--"} if name == UNIT else {}
        color = {} if name == UNIT else {"color": f"C{index - 1}"}
        medians = result.median_seconds(name)
        points = [(n, t) for n, t in zip(result.num_params, medians, strict=True) if t]
        if points:
            left.plot(
                *zip(*points, strict=True), marker="o", label=name, **style, **color
            )
        if name == UNIT:
            continue
        multiples = [
            (depth, m)
            for depth, m in zip(result.depths, result.multiples(name), strict=True)
            if m
        ]
        if multiples:
            right.plot(*zip(*multiples, strict=True), marker="o", label=name, **color)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("number of parameters D")
    left.set_ylabel("seconds per step (median)")
    left.set_title("Time per training step")
    left.legend(fontsize="small")
    right.axhline(1.0, color="black", linestyle="--", linewidth=1)
    right.set_yscale("log")
    if len(set(result.depths)) > 1 and min(result.depths) > 0:
        right.set_xscale("log", base=2)
    right.set_xticks(list(result.depths), [str(d) for d in result.depths])
    right.set_xlabel("depth (hidden layers)")
    right.set_ylabel("gradient steps")
    right.set_title("Relative to a gradient step")
    figure.suptitle(
        f"Cost per step: width {result.config.get('width', '?')}, batch size "
        f"{result.config.get('batch_size', '?')}, "
        f"{result.config.get('threads', '?')} thread(s)"
    )
    figure.savefig(path, dpi=120)


def main(
    *,
    out: str | Path,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    width: int = 512,
    batch_size: int = 1,
    repeats: int = 30,
    methods: Sequence[str] | None = None,
    max_step_seconds: float = 10.0,
    threads_count: int | None = 1,
    console: Console | None = None,
    error_console: Console | None = None,
) -> int:
    """Run the cost study, print its table and write its files.

    Args:
        out: Output folder (created if missing).
        depths: Numbers of hidden layers.
        width: Hidden units.
        batch_size: Samples per step.
        repeats: Timed steps per method and depth.
        methods: Names from :data:`~curvlab.experiments.hesscale_cost.COST_METHODS`;
            ``None`` for all.
        max_step_seconds: Skip a method once one of its steps takes longer.
        threads_count: PyTorch CPU threads during the study (restored
            afterwards); ``None`` keeps the current setting.
        console: Where to print (default: standard output).
        error_console: Where to print errors (default: standard error).

    Returns:
        The exit code: 0 on success, 2 for invalid arguments.
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
    depths = list(depths)
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
            task = progress.add_task("timing", total=len(depths) * repeats)
            done: dict[int, int] = {}

            def on_progress(depth: int, what: str, completed: int, total: int):
                done[depth] = completed
                progress.update(
                    task,
                    description=f"depth {depth}: {what}",
                    completed=sum(done.values()),
                )

            result = hesscale_cost(
                depths=depths,
                width=width,
                batch_size=batch_size,
                repeats=repeats,
                methods=methods,
                max_step_seconds=max_step_seconds,
                on_progress=on_progress,
            )
    except (ValueError, OSError) as error:
        error_console.print(f"[bold red]Error:[/] {escape(str(error))}")
        return 2
    markdown = cost_markdown(result)
    console.print(markdown, markup=False, highlight=False, soft_wrap=True)
    write_study_files(
        out,
        FILE_NAMES,
        markdown,
        lambda path: write_cost_csv(result, path),
        lambda path: plot_cost(result, path),
    )
    print_written(console, out, FILE_NAMES, start)
    return 0

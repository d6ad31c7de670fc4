"""Tables and figures of the HesScale studies (``curvlab hesscale-*``)."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

from curvlab._format import fmt, markdown_table
from curvlab.experiments._plot_files import new_figure, write_csv
from curvlab.experiments.hesscale_cost import UNIT, CostResult
from curvlab.experiments.hesscale_quality import NORMALIZER, QualityResult

__all__ = [
    "cost_markdown",
    "plot_cost",
    "plot_quality",
    "quality_markdown",
    "write_cost_csv",
    "write_quality_csv",
]


def quality_markdown(result: QualityResult) -> str:
    """Settings, normalised errors (one row per estimator, best first), ranking."""
    config = result.config
    header = ["estimator", *result.layers, "total", "per-seed range"]
    rows = []
    number = partial(fmt, digits=3, missing="—", readable=True)
    for method in result.ranking():
        ratios = [r for r in result.seed_ratios[method] if not math.isnan(r)]
        spread = f"{number(min(ratios))}–{number(max(ratios))}" if ratios else "—"
        errors = [result.normalized[method][c] for c in (*result.layers, "total")]
        rows.append([method, *map(number, errors), spread])
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
    """Write the normalised and raw errors of each estimator to the CSV ``path``."""
    raw = result.mean_errors()
    columns = [*result.layers, "total"]
    header = ["method", *(f"{c} normalized" for c in columns)]
    header += [f"{c} L1" for c in columns]
    header += ["seed ratio min", "seed ratio max", "num_seeds", "num_samples"]
    rows = [
        [method]
        + [
            repr(table[method][c])
            for table in (result.normalized, raw)
            for c in columns
        ]
        + [repr(pick(result.seed_ratios[method])) for pick in (min, max)]
        + [len(result.seeds), result.num_samples]
        for method in result.methods
    ]
    write_csv(path, header, rows)


def plot_quality(result: QualityResult, path: str | Path) -> None:
    """Draw the normalised total errors and the per-layer errors into the PNG ``path``.

    Left: one bar per estimator, the normalised total error (log scale), and
    one dot per seed (that seed's ratio). Right: mean L1 error per layer.
    """
    figure = new_figure(11, 4.5, layout="constrained")
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


def cost_markdown(result: CostResult) -> str:
    """Settings; per depth ``D``, the gradient step (ms), each method's multiple."""
    config = result.config
    unit = result.median_seconds(UNIT)
    multiples = {m: result.multiples(m) for m in result.methods}
    header = ["depth", "D", "gradient (ms)", *result.methods]
    rows = []
    for d, depth in enumerate(result.depths):
        cells = [str(depth), f"{result.num_params[d]:,}", f"{1e3 * unit[d]:.2f}"]
        values = [multiples[method][d] for method in result.methods]
        cells += ["—" if value is None else f"{value:.2f}×" for value in values]
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
    """Write one row per depth and method (the unit included) to the CSV ``path``."""
    unit = result.median_seconds(UNIT)
    header = ["depth", "num_params", "method", "median_seconds", "min_seconds"]
    header += ["gradient_steps", "num_timed", "skipped"]
    rows = []
    for name in (UNIT, *result.methods):
        medians = result.median_seconds(name)
        for d, (depth, median) in enumerate(zip(result.depths, medians, strict=True)):
            times = result.seconds[name][d]
            ratio = None if median is None else median / unit[d]
            numbers = (median, min(times, default=None), ratio)
            rows.append(
                [depth, result.num_params[d], name]
                + ["" if x is None else repr(x) for x in numbers]
                + [len(times), "" if name == UNIT else result.skipped[name][d]]
            )
    write_csv(path, header, rows)


def _plot_timed(ax, xs, ys, **style) -> None:
    """Plot the points of the depths at which the method was timed (``y`` set)."""
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
    if points:
        ax.plot(*zip(*points, strict=True), marker="o", **style)


def plot_cost(result: CostResult, path: str | Path) -> None:
    """Draw seconds per step and multiples of a gradient step into the PNG ``path``."""
    figure = new_figure(11, 4.5, layout="constrained")
    left, right = figure.subplots(1, 2)
    for index, name in enumerate((UNIT, *result.methods)):
        style = {"color": "black", "linestyle": "--"} if name == UNIT else {}
        color = {} if name == UNIT else {"color": f"C{index - 1}"}
        seconds = result.median_seconds(name)
        _plot_timed(left, result.num_params, seconds, label=name, **style, **color)
        if name != UNIT:
            multiples = result.multiples(name)
            _plot_timed(right, result.depths, multiples, label=name, **color)
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

r"""The demo's report: figures, ``report.md`` and ``report.html`` from a run folder.

:func:`write_report` reads what the stages of :func:`curvlab.experiments.demo.demo_run`
stored in a run folder (training metrics, spectra, overlaps, the exhaustive
check, the HesScale comparison), draws the figures into ``RUN_DIR/plots/``
(:func:`~curvlab.experiments.spectrum_plots.plot_spectrum`,
:func:`~curvlab.experiments.spectrum_plots.plot_match`,
:func:`~curvlab.experiments.overlap_plots.plot_overlap`, and here
:func:`plot_exhaustive` and :func:`plot_hesscale`), and writes a report of short
sentences and tables built from the stored numbers: nothing in it is canned
except the explanations. :func:`markdown_to_html` converts the subset of
Markdown the report uses (headings, paragraphs, bullet lists, pipe tables,
images, ``code`` and ``**bold**``) into a standalone HTML page.

Numbers are printed with :func:`fmt` (4 significant digits), so a number in
the report can be checked against the stored value by formatting it the same
way.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from curvlab._format import fmt
from curvlab.experiments.exhaustive import exhaustive_stage, load_exhaustive
from curvlab.experiments.overlap import load_overlap, overlap_stage
from curvlab.experiments.overlap_plots import plot_overlap
from curvlab.experiments.spectrum import STAGE as SPECTRUM_STAGE
from curvlab.experiments.spectrum import read_spectrum
from curvlab.experiments.spectrum_plots import PLOTS, plot_match, plot_spectrum
from curvlab.runs import RunFolder
from curvlab.subspace.spectra import layer_full_distances

__all__ = [
    "HESSCALE_FILE",
    "HESSCALE_STAGE",
    "REPORT_STAGE",
    "TIMINGS_FILE",
    "Report",
    "fmt",
    "markdown_to_html",
    "plot_exhaustive",
    "plot_hesscale",
    "render_report",
    "write_report",
]

#: Stage (manifest) and file of the stored HesScale comparison.
HESSCALE_STAGE = "hesscale_quality"
HESSCALE_FILE = "hesscale_quality/result.json"
#: Stage (manifest) of the report and its figures.
REPORT_STAGE = "report"
#: Wall time per demo stage, of the call that last computed it.
TIMINGS_FILE = "demo_timings.json"

_SPLIT = "train"
_DPI = 110


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote.

    Attributes:
        markdown: ``RUN_DIR/report.md``.
        html: ``RUN_DIR/report.html``.
        figures: The PNG files the report shows.
        findings: The headline numbers, as in the report's summary.
    """

    markdown: Path
    html: Path
    figures: list[Path]
    findings: dict[str, Any]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _image(run: RunFolder, path: Path, alt: str) -> str:
    return f"![{alt}]({run.relative(path)})"


def _save(run: RunFolder, figure: Figure, name: str) -> Path:
    path = run.resolve(Path(PLOTS) / name)
    with run.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)
    return path


# ------------------------------------------------------------------ figures
def plot_exhaustive(run: RunFolder, split: str = _SPLIT) -> Path:
    """Draw the exhaustive check: eigenvalues and eigenspaces, sketch vs exact.

    Left: the ``K`` eigenvalues of largest magnitude at the last step, exact
    (line) and sketched (points). Right: the overlap of the top-``k`` sketched
    and exact eigenspaces against ``k``, one curve per step (1 = identical).

    Args:
        run: The run folder.
        split: The split of the stored check.

    Returns:
        ``RUN_DIR/plots/exhaustive_<split>.png``.

    Raises:
        FileNotFoundError: If no step of the check is stored.
    """
    rows, summaries = load_exhaustive(run, split)
    steps = sorted(summaries)
    last = summaries[steps[-1]]
    figure = Figure(figsize=(10.0, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    exact = numpy.asarray(last["eigenvalues_exact"])
    sketch = numpy.asarray(last["eigenvalues_sketch"])
    index = numpy.arange(1, len(exact) + 1)
    left.plot(index, exact, "-", color="C0", label="exact (dense eigh)")
    left.plot(index, sketch, ".", color="C1", markersize=4, label="sketch (SEIGH)")
    left.axhline(0.0, color="0.7", linewidth=0.8)
    left.set_xscale("log")
    left.set_xlabel("i (by decreasing |λ|)")
    left.set_ylabel("eigenvalue λᵢ")
    left.set_title(f"top eigenvalues at step {steps[-1]}", fontsize="medium")
    left.legend(fontsize="small")
    colors = _step_colors(steps)
    for step in steps:
        ks = [r["k"] for r in rows if r["step"] == step]
        values = [r["basis_overlap"] for r in rows if r["step"] == step]
        right.plot(ks, values, color=colors[step], label=f"step {step}")
    right.set_xscale("log")
    right.set_ylim(-0.03, 1.03)
    right.set_xlabel("k")
    right.set_ylabel("overlap of top-k eigenspaces")
    right.set_title("sketched vs exact eigenspace", fontsize="medium")
    right.legend(fontsize="small")
    settings = last["settings"]
    figure.suptitle(
        f"{last['problem']}: SEIGH with K = {settings['num_outer']}, "
        f"s = {settings['num_inner']} products vs exact ({split} subset of "
        f"{last['hessian']['num_samples']} samples)"
    )
    return _save(run, figure, f"exhaustive_{split}.png")


def _step_colors(steps: Sequence[int]) -> dict[int, Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    span = max(len(steps) - 1, 1)
    return {s: cmap(0.9 * i / span) for i, s in enumerate(steps)}


def plot_hesscale(run: RunFolder) -> Path:
    """Draw the HesScale comparison: each estimator's total error, HesScale = 1.

    Args:
        run: The run folder.

    Returns:
        ``RUN_DIR/plots/hesscale_quality.png``.

    Raises:
        FileNotFoundError: If the comparison is not stored.
    """
    data = run.read_json(HESSCALE_FILE)
    methods = data["methods"]
    totals = [data["normalized"][m]["total"] for m in methods]
    figure = Figure(figsize=(7.0, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    bars = ax.bar(methods, totals, color=[f"C{i}" for i in range(len(methods))])
    ax.bar_label(bars, labels=[fmt(t) for t in totals], fontsize="small")
    ax.set_yscale("log")
    ax.axhline(1.0, color="0.4", linestyle=":", linewidth=1)
    ax.set_ylabel("L1 error of diag(H) / HesScale's")
    ax.tick_params(axis="x", labelrotation=20)
    config = data["config"]
    ax.set_title(
        f"{config['architecture']}, {len(data['seeds'])} seed(s) x "
        f"{data['num_samples']} samples",
        fontsize="medium",
    )
    return _save(run, figure, "hesscale_quality.png")


# ------------------------------------------------------------------ sections
def _training(run: RunFolder, steps: Sequence[int]) -> tuple[str, dict[str, Any]]:
    metrics = {row["step"]: row for row in run.metrics()}
    rows = [
        (
            s,
            fmt(metrics[s]["train_loss"]),
            _percent(metrics[s].get("train_accuracy")),
            fmt(metrics[s]["test_loss"]),
            _percent(metrics[s].get("test_accuracy")),
            fmt(metrics[s].get("gradient_norm")),
        )
        for s in steps
    ]
    first, last = metrics[steps[0]], metrics[steps[-1]]
    text = (
        f"From step {steps[0]} to step {steps[-1]} the train loss went from "
        f"{fmt(first['train_loss'])} to {fmt(last['train_loss'])}"
    )
    if last.get("test_accuracy") is not None:
        text += (
            f" and the test accuracy from {_percent(first['test_accuracy'])} to "
            f"{_percent(last['test_accuracy'])}"
        )
    text += ". Loss and gradient norm are over the whole split."
    table = _table(
        ("step", "train loss", "train acc", "test loss", "test acc", "‖∇L‖"), rows
    )
    findings = {
        "train_loss": {s: metrics[s]["train_loss"] for s in steps},
        "test_accuracy": {s: metrics[s].get("test_accuracy") for s in steps},
    }
    return f"## Training\n\n{text}\n\n{table}\n", findings


def _largest(block) -> float:
    return float(max(block.top_eigenvalues.tolist()))


def _smallest(block) -> float | None:
    values = block.bottom_eigenvalues
    if values is None or not len(values):
        return None
    return float(values.min())


def _spectrum(run, steps, figures) -> tuple[str, dict[str, Any]]:
    spectra = {s: read_spectrum(run, s) for s in steps}
    fulls = {s: spectra[s].spectra["hessian"].full for s in steps}
    top = {s: _largest(fulls[s]) for s in steps}
    bottom = {s: _smallest(fulls[s]) for s in steps}
    trace = {s: fulls[s].trace for s in steps}
    dim = fulls[steps[0]].dim
    rows = []
    for s in steps:
        mean = trace[s] / dim if trace[s] is not None else None
        rows.append(
            (
                s,
                fmt(top[s]),
                fmt(bottom[s]),
                fmt(trace[s]),
                fmt(top[s] / mean) if mean else "-",
                fulls[s].method,
            )
        )
    first, last = steps[0], steps[-1]
    peak = max(steps, key=lambda s: top[s])
    lines = [
        f"At step {first} the top eigenvalue is {fmt(top[first])}; at step {last} "
        f"the top eigenvalue is {fmt(top[last])}, "
        f"{fmt(top[last] / top[first])} times the step-{first} value."
    ]
    if peak not in (first, last):
        lines.append(
            f"It is largest at step {peak} ({fmt(top[peak])}): the curvature first "
            "grows, then relaxes."
        )
    if trace[last] is not None and trace[last] > 0:
        lines.append(
            f"At step {last} the top eigenvalue is {fmt(top[last] * dim / trace[last])}"
            f" times the average eigenvalue tr H / D = {fmt(trace[last] / dim)}: a "
            "few directions carry much of the curvature while most eigenvalues "
            "sit near zero."
        )
    if bottom[last] is not None and bottom[last] < 0:
        lines.append(
            f"The most negative eigenvalue at step {last} is {fmt(bottom[last])}, "
            f"{_percent(-bottom[last] / top[last])} of the top eigenvalue's size, "
            "so the Hessian is not positive semi-definite."
        )
    settings = spectra[first].settings
    num = spectra[first].num_samples
    per_class = (
        f" ({settings.samples_per_class} per class)"
        if num != settings.samples_per_class
        else ""
    )
    intro = (
        f"The Hessian of the mean loss over {num} train samples{per_class}, "
        f"D = {dim:,}; eigenvalues by `{fulls[first].method}` decomposition."
    )
    table = _table(
        ("step", "top λ", "most negative λ", "tr H", "top λ / (tr H / D)", "method"),
        rows,
    )
    images = "\n\n".join(
        _image(run, p, alt)
        for p, alt in (
            (figures["spectrum_hessian.png"], "Hessian spectral density per step"),
            (figures["spectrum_extremes.png"], "extreme eigenvalues against step"),
        )
    )
    text = (
        "## How the Hessian's spectrum evolves\n\n"
        f"{intro}\n\n{' '.join(lines)}\n\n{table}\n\n"
        "The densities (log scale, one curve per step, one panel per layer and "
        "one for the whole network) and the extreme eigenvalues against the "
        f"step:\n\n{images}\n"
    )
    return text, {"top_eigenvalue": top, "trace": trace, "dim": dim}


def _layers(run, steps, figures) -> tuple[str, dict[str, Any]]:
    last = steps[-1]
    layerwise = read_spectrum(run, last).spectra["hessian"]
    full_top = _largest(layerwise.full)
    distances = {
        row.layer: row.wasserstein for row in layer_full_distances({last: layerwise})
    }
    names = list(layerwise.blocks)
    rows = []
    for depth, (name, block) in enumerate(layerwise.blocks.items(), start=1):
        rows.append(
            (
                f"{depth} (`{', '.join(block.param_names)}`)",
                f"{block.dim:,}",
                fmt(_largest(block)),
                fmt(block.trace),
                fmt(distances[name]),
            )
        )
    label = {name: i for i, name in enumerate(names, start=1)}
    tops = {name: _largest(b) for name, b in layerwise.blocks.items()}
    biggest = max(names, key=lambda n: tops[n])
    closest = min(names, key=lambda n: distances[n])
    farthest = max(names, key=lambda n: distances[n])
    traces = {n: b.trace for n, b in layerwise.blocks.items()}
    text = (
        "## How each layer compares with the whole\n\n"
        "Each layer's diagonal block H_l of the Hessian (its weights and bias "
        "with each other, ignoring the coupling to other layers) has a spectrum "
        "of its own; the Wasserstein-1 distance W₁ measures how far its "
        "eigenvalue distribution is from the full Hessian's.\n\n"
        f"At step {last} the largest block eigenvalue is {fmt(tops[biggest])} "
        f"(layer {label[biggest]}), {_percent(tops[biggest] / full_top)} of the "
        f"full Hessian's {fmt(full_top)} (a diagonal block's top eigenvalue can "
        f"never exceed the full one's). Layer {label[closest]}'s spectrum is "
        f"closest to the full one (W₁ = {fmt(distances[closest])}), "
        f"layer {label[farthest]}'s the farthest "
        f"(W₁ = {fmt(distances[farthest])}).\n\n"
        + _table(("layer", "D_l", "top λ", "tr H_l", "W₁ to full"), rows)
        + "\n\nDistance of each layer's spectrum to the full one against depth, "
        f"at step {last} and summed over the recorded steps (each normalised by "
        "its maximum over layers; right: the LayerHessians procedure as "
        "published):\n\n"
        + _image(run, figures["match_distros_peak.png"], "layer vs full at a step")
        + "\n\n"
        + _image(run, figures["match_distros_wasserstein.png"], "layer vs full, summed")
        + "\n"
    )
    findings = {
        "step": last,
        "block_top_eigenvalue": tops,
        "block_trace": traces,
        "closest_layer": label[closest],
        "farthest_layer": label[farthest],
    }
    return text, findings


def _verdict(row: Mapping[str, Any]) -> str:
    if row["random_max"] is not None and row["magnitude"] > row["random_max"]:
        return "more than every random mask"
    if row["random_min"] is not None and row["magnitude"] < row["random_min"]:
        return "less than every random mask"
    return "within the spread of the random masks"


def _overlap(run, steps, figures) -> tuple[str, dict[str, Any]]:
    rows, summaries = load_overlap(run, _SPLIT)
    summary_last = summaries[steps[-1]]
    K = summary_last["settings"]["num_outer"]
    dim = summary_last["num_params"]
    small = min(10, K)
    by = {(r["step"], r["k"]): r for r in rows}
    table_rows, ratio = [], {}
    for s in steps:
        at = by[(s, K)]
        ratio[s] = at["ratio"]
        table_rows.append(
            (
                s,
                fmt(summaries[s]["eigenvalues"][0]),
                fmt(by[(s, small)]["ratio"]),
                fmt(at["magnitude"]),
                fmt(at["random_mean"]),
                fmt(at["chance"]),
                fmt(at["ratio"]),
                fmt(at["best_ratio"]),
            )
        )
    last = steps[-1]
    at = by[(last, K)]
    num_random = summary_last["settings"]["num_random"]
    sentences = [
        f"At step {last} the magnitude mask of size k = {K} overlaps the top-{K} "
        f"eigenspace {fmt(at['ratio'])} times chance (overlap {fmt(at['magnitude'])}"
        f" against k/D = {fmt(at['chance'])}; {num_random} random masks: mean "
        f"{fmt(at['random_mean'])}), {_verdict(at)}."
    ]
    if small != K:
        sentences.append(
            f"For the {small} largest weights it is {fmt(by[(last, small)]['ratio'])}"
            " times chance."
        )
    low = min(steps, key=lambda s: ratio[s])
    high = max(steps, key=lambda s: ratio[s])
    sentences.append(
        f"Over training the ratio at k = {K} ranges from {fmt(ratio[low])} (step "
        f"{low}) to {fmt(ratio[high])} (step {high}); the best possible mask of "
        f"the same size reaches {fmt(at['best_ratio'])} times chance at step "
        f"{last}."
    )
    above = [s for s in steps if ratio[s] > 1]
    sentences.append(
        "So the largest weights sit in the top curvature directions more than "
        f"chance at {len(above)} of {len(steps)} recorded steps"
        + (f" ({', '.join(map(str, above))})." if above else ".")
    )
    method = summary_last["settings"]["method"]
    hessian = summary_last["hessian"]
    text = (
        "## Do the largest weights sit in the top curvature directions?\n\n"
        f"Take the k weights of largest magnitude (the magnitude mask S_k) and the "
        f"top-k eigenvectors Q of the Hessian (by |λ|; here {method}, on "
        f"{hessian['num_samples']} train samples, a larger subset than the "
        "spectra's, so λ₁ differs from the top λ above). The overlap "
        "‖Q[S_k, :k]‖²_F / k is the fraction of the top-k eigenspace that "
        "lives on those weights; a random mask gets k/D on average (chance), "
        f"with D = {dim:,}.\n\n"
        + " ".join(sentences)
        + "\n\n"
        + _table(
            (
                "step",
                "λ₁ (largest in size)",
                f"ratio k={small}",
                f"magnitude k={K}",
                "random mean",
                "chance k/D",
                "ratio",
                "best mask ratio",
            ),
            table_rows,
        )
        + "\n\nOverlap against the mask size, against the step, and over chance:\n\n"
        + "\n\n".join(
            _image(run, figures[name], name.removesuffix(".png").replace("_", " "))
            for name in (
                f"overlap_{_SPLIT}_vs_k.png",
                f"overlap_{_SPLIT}_vs_step.png",
                f"overlap_{_SPLIT}_ratio.png",
            )
        )
        + "\n"
    )
    return text, {"k": K, "overlap_ratio": ratio, "chance": at["chance"]}


def _exhaustive(run, steps, figures) -> tuple[str, dict[str, Any]]:
    _, summaries = load_exhaustive(run, _SPLIT)
    rows = []
    for s in steps:
        summary = summaries[s]
        errors = summary["eigenvalue_errors"]
        rows.append(
            (
                s,
                fmt(summary["eigenvalues_exact"][0]),
                fmt(summary["eigenvalues_sketch"][0]),
                fmt(errors.get("max_rel_top_3", errors.get("max_rel_top_1"))),
                fmt(summary["basis_overlap"]["at_num_outer"]),
                fmt(summary["principal_angles_degrees"]["median"]),
                fmt(summary["magnitude_overlap"]["exact"]),
                fmt(summary["magnitude_overlap"]["sketch"]),
                fmt(summary["a_posteriori"]["estimate"]),
                fmt(summary["a_posteriori"]["exact"]),
            )
        )
    last = summaries[steps[-1]]
    settings = last["settings"]
    K, s_inner = settings["num_outer"], settings["num_inner"]
    lam_exact, lam_sketch = last["eigenvalues_exact"][0], last["eigenvalues_sketch"][0]
    mag = last["magnitude_overlap"]
    post = last["a_posteriori"]
    same_side = (mag["exact"] > mag["chance"]) == (mag["sketch"] > mag["chance"])
    text = (
        "## Does the sketch agree with the exact eigendecomposition?\n\n"
        f"The sketched eigendecomposition (SEIGH, {s_inner} Hessian-vector products "
        f"for K = {K} eigenpairs) against a dense eigh of the same Hessian "
        f"(on {last['hessian']['num_samples']} train samples, built from all "
        f"D = {last['num_params']:,} Hessian columns).\n\n"
        f"At step {steps[-1]} the sketch finds the top eigenvalue "
        f"{fmt(lam_sketch)} against {fmt(lam_exact)} exactly (relative error "
        f"{fmt(abs(lam_sketch - lam_exact) / abs(lam_exact))}). Its top-{K} "
        f"eigenspace overlaps the exact one by "
        f"{fmt(last['basis_overlap']['at_num_outer'])} (1 = identical; median "
        f"principal angle {fmt(last['principal_angles_degrees']['median'])}°). "
        f"The magnitude-mask overlap at k = {K} is {fmt(mag['sketch'])} from the "
        f"sketch and {fmt(mag['exact'])} exactly (chance {fmt(mag['chance'])}), so "
        "the sketch "
        + ("reaches the same verdict" if same_side else "reaches another verdict")
        + " about chance. Its a-posteriori estimate of the error ‖H − Ĥ‖_F is "
        f"{fmt(post['estimate'])} against {fmt(post['exact'])} exactly (the best "
        f"rank-{K} approximation has {fmt(post['best_rank_k_error'])}).\n\n"
        + _table(
            (
                "step",
                "λ₁ exact",
                "λ₁ sketch",
                "max rel. error λ₁..₃",
                f"eigenspace overlap k={K}",
                "median angle (°)",
                "magnitude ov. exact",
                "magnitude ov. sketch",
                "error estimate",
                "error exact",
            ),
            rows,
        )
        + "\n\n"
        + _image(run, figures[f"exhaustive_{_SPLIT}.png"], "sketch against exact")
        + "\n"
    )
    findings = {
        "lambda_1_exact": {s: summaries[s]["eigenvalues_exact"][0] for s in steps},
        "lambda_1_sketch": {s: summaries[s]["eigenvalues_sketch"][0] for s in steps},
        "basis_overlap": {
            s: summaries[s]["basis_overlap"]["at_num_outer"] for s in steps
        },
    }
    return text, findings


def _hesscale(run, figures) -> tuple[str, dict[str, Any]]:
    data = run.read_json(HESSCALE_FILE)
    normalized = data["normalized"]
    layers = data["layers"]
    ranking = data["ranking"]
    rows = [
        (m, fmt(normalized[m]["total"]), *(fmt(normalized[m][la]) for la in layers))
        for m in ranking
    ]
    config = data["config"]
    others = [m for m in ("Hutchinson(1)", "GGN-MC(1)", "g²") if m in normalized]
    comparisons = ", ".join(f"{m} {fmt(normalized[m]['total'])}" for m in others)
    text = (
        "## HesScale: how good are cheap diagonal estimates?\n\n"
        f"The L1 error of each estimate of the Hessian diagonal against the exact "
        f"one, on the same architecture ({config['architecture']}, "
        f"{config['num_params']:,} parameters, {config['training']}), for "
        f"{data['num_samples']} single train samples on each of "
        f"{len(data['seeds'])} seed(s), divided by HesScale's total error.\n\n"
        f"From best to worst: {', '.join(ranking)}. With HesScale's error as 1, "
        f"{comparisons}; the all-zeros estimate scores "
        f"{fmt(normalized['zero']['total'])}.\n\n"
        + _table(("estimator", "total", *layers), rows)
        + "\n\n"
        + _image(run, figures["hesscale_quality.png"], "HesScale comparison")
        + "\n"
    )
    return text, {
        "ranking": ranking,
        "total": {m: normalized[m]["total"] for m in ranking},
    }


# ------------------------------------------------------------------ report
def render_report(
    run: RunFolder,
    figures: Mapping[str, Path],
    *,
    timings: Mapping[str, float] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Build the report's Markdown from the stored results.

    Args:
        run: The run folder, with every demo stage stored.
        figures: PNG file name (``"spectrum_hessian.png"``, ...) -> its path.
        timings: Wall time per stage, for the timing table.

    Returns:
        The Markdown text and the headline numbers (``findings``).
    """
    config = run.config
    steps = run.done_steps(SPECTRUM_STAGE)
    sections, findings = [], {"steps": steps}
    for name, (text, found) in (
        ("training", _training(run, steps)),
        ("spectrum", _spectrum(run, steps, figures)),
        ("layers", _layers(run, steps, figures)),
        ("overlap", _overlap(run, steps, figures)),
        ("exhaustive", _exhaustive(run, steps, figures)),
        ("hesscale", _hesscale(run, figures)),
    ):
        sections.append(text)
        findings[name] = found
    head = (
        f"# curvlab demo: {config.problem}\n\n"
        f"`{config.problem}` (D = {findings['spectrum']['dim']:,} parameters) "
        f"trained with plain SGD (learning rate {config.lr:g}, batch size "
        f"{config.batch_size}) for {config.steps} steps in {config.dtype}, seed "
        f"{config.seed}; the curvature is measured at steps "
        f"{', '.join(map(str, steps))}. Every number below is read back from this "
        "run folder; running the demo again on it skips the finished stages.\n"
    )
    last = steps[-1]
    spectrum, overlap = findings["spectrum"], findings["overlap"]
    key = [
        f"- **Spectrum:** at step {steps[0]} the top eigenvalue is "
        f"{fmt(spectrum['top_eigenvalue'][steps[0]])}; at step {last} it is "
        f"{fmt(spectrum['top_eigenvalue'][last])}.",
        f"- **Layers:** at step {last} layer {findings['layers']['closest_layer']}'s "
        "spectrum is closest to the whole network's, layer "
        f"{findings['layers']['farthest_layer']}'s the farthest.",
        f"- **Magnitude vs curvature:** at step {last} the magnitude mask of size "
        f"{overlap['k']} overlaps the top-{overlap['k']} eigenspace "
        f"{fmt(overlap['overlap_ratio'][last])} times chance.",
        f"- **Sketch vs exact:** at step {last} the sketched top eigenvalue is "
        f"{fmt(findings['exhaustive']['lambda_1_sketch'][last])}, the exact "
        f"{fmt(findings['exhaustive']['lambda_1_exact'][last])}.",
        f"- **HesScale:** best diagonal estimator "
        f"{findings['hesscale']['ranking'][0]}.",
    ]
    parts = [head, "## Summary\n\n" + "\n".join(key) + "\n", *sections]
    if timings:
        parts.append(
            "## Wall time\n\nSeconds of the call that computed each stage:\n\n"
            + _table(
                ("stage", "seconds"), [(k, f"{v:.1f}") for k, v in timings.items()]
            )
            + "\n"
        )
    parts.append(
        "## Files\n\n"
        "- `metrics.csv`: loss, accuracy and gradient norm per recorded step\n"
        "- `spectrum/step_*.json`: full and layer spectra (all eigenvalues)\n"
        f"- `{overlap_stage(_SPLIT)}/summary.csv`, `{overlap_stage(_SPLIT)}/all.csv`"
        ": mask overlaps per step and k\n"
        f"- `{exhaustive_stage(_SPLIT)}/summary.csv`: sketch against exact\n"
        f"- `{HESSCALE_FILE}`: the HesScale comparison\n"
        f"- `{PLOTS}/`: the figures\n"
    )
    return "\n".join(parts), _jsonable(findings)


def _jsonable(value: Any) -> Any:
    """Turn int dict keys into strings so the findings survive a JSON round trip."""
    return json.loads(json.dumps(value))


def write_report(
    run: RunFolder,
    *,
    timings: Mapping[str, float] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Report:
    """Draw the figures and write ``report.md`` and ``report.html``.

    Args:
        run: The run folder, with every demo stage stored.
        timings: Wall time per stage, for the report's timing table.
        settings: Unused by the text; kept for the caller's bookkeeping.

    Returns:
        The files written and the headline numbers.

    Raises:
        MissingStepError: If spectra are missing.
        FileNotFoundError: If a stage's results are missing.
    """
    del settings
    paths = [
        *plot_spectrum(run, operators=["hessian"]),
        *plot_match(run),
        *plot_overlap(run),
        plot_exhaustive(run),
        plot_hesscale(run),
    ]
    figures = {p.name: p for p in paths if p.suffix == ".png"}
    text, findings = render_report(run, figures, timings=timings)
    markdown = run.write_text("report.md", text)
    title = f"curvlab demo: {run.config.problem}"
    page = run.write_text("report.html", markdown_to_html(text, title=title))
    linked = [run.resolve(m) for m in _IMAGE.findall(text)]
    return Report(markdown, page, linked, findings)


# ------------------------------------------------------------------ HTML
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")
_IMAGE_LINE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def _inline(text: str) -> str:
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            escaped = html.escape(part)
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped))
    return "".join(out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(text: str, *, title: str = "report") -> str:
    r"""Convert the Markdown subset of the report into a standalone HTML page.

    Supports ``#``-headings, paragraphs, ``- `` bullet lists, pipe tables (a
    header row, a ``|---|`` row, body rows), images alone on a line
    (``![alt](src)``), ``code`` and ``**bold**``. Everything else is escaped
    text.

    Args:
        text: The Markdown.
        title: The page title.

    Returns:
        The HTML page.

    Example:
        >>> page = markdown_to_html("# T\n\n| a |\n|---|\n| 1 |\n")
        >>> "<h1>T</h1>" in page, "<td>1</td>" in page
        (True, True)
    """
    blocks = re.split(r"\n\s*\n", text.strip())
    body = []
    for block in blocks:
        lines = block.strip().splitlines()
        if not lines:
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", lines[0])
        if heading and len(lines) == 1:
            level = len(heading.group(1))
            body.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif len(lines) == 1 and _IMAGE_LINE.match(lines[0]):
            alt, src = _IMAGE_LINE.match(lines[0]).groups()
            body.append(
                f'<p><img src="{html.escape(src)}" alt="{html.escape(alt)}"></p>'
            )
        elif (
            len(lines) >= 2
            and lines[0].startswith("|")
            and re.match(r"^\|(\s*:?-+:?\s*\|)+$", lines[1].strip())
        ):
            head = "".join(f"<th>{_inline(c)}</th>" for c in _cells(lines[0]))
            rows = [
                "<tr>"
                + "".join(f"<td>{_inline(c)}</td>" for c in _cells(line))
                + "</tr>"
                for line in lines[2:]
            ]
            body.append(
                f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
                + "\n".join(rows)
                + "\n</tbody>\n</table>"
            )
        elif all(line.startswith("- ") for line in lines):
            items = "".join(f"<li>{_inline(line[2:])}</li>\n" for line in lines)
            body.append(f"<ul>\n{items}</ul>")
        else:
            body.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;"
        "padding:0 1em;line-height:1.45}"
        "table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
        "img{max-width:100%}code{background:#f3f3f3;padding:0 .2em}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{style}</style>\n</head>\n"
        "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )

r"""The demo's report: figures, ``report.md`` and ``report.html`` from the results.

:func:`write_report` renders what the stages of
:func:`curvlab.experiments.demo.demo_run` returned (:class:`DemoResults`), as it
is handed them: the figures in ``RUN_DIR/plots/``, then short sentences and
tables built from the numbers (only the explanations are canned), as Markdown
and as a standalone HTML page (:func:`~curvlab._format.markdown_to_html`).
Numbers are printed with :func:`~curvlab._format.fmt` (4 significant digits), so
each can be checked against the stored value by formatting it the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
from matplotlib import colormaps

from curvlab._format import fmt, markdown_table, markdown_to_html
from curvlab.experiments._plot_files import PLOTS, new_figure, save_plot
from curvlab.experiments.exhaustive import exhaustive_stage
from curvlab.experiments.overlap import overlap_stage
from curvlab.experiments.overlap_plots import plot_overlap
from curvlab.experiments.spectrum import SpectrumStep
from curvlab.experiments.spectrum_plots import plot_match, plot_spectrum
from curvlab.runs import RunFolder
from curvlab.runs.stage import StageRunResult
from curvlab.subspace.spectra import BlockSpectrum, layer_full_distances

__all__ = [
    "HESSCALE_FILE",
    "HESSCALE_STAGE",
    "REPORT_STAGE",
    "TIMINGS_FILE",
    "DemoResults",
    "Report",
    "StepTables",
    "fmt",
    "markdown_to_html",
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
_FILES = f"""## Files

- `metrics.csv`: loss, accuracy and gradient norm per recorded step
- `spectrum/step_*.json`: full and layer spectra (all eigenvalues)
- `{overlap_stage(_SPLIT)}/summary.csv`, `{overlap_stage(_SPLIT)}/all.csv`: \
mask overlaps per step and k
- `{exhaustive_stage(_SPLIT)}/summary.csv`: sketch against exact
- `{HESSCALE_FILE}`: the HesScale comparison
- `{PLOTS}/`: the figures
"""


@dataclass(frozen=True)
class StepTables:
    """A table stage's results: its rows (steps ascending) and summaries by step."""

    rows: list[dict[str, Any]]
    summaries: dict[int, dict[str, Any]]

    @classmethod
    def of(cls, outcome: StageRunResult, load: Callable[[], tuple]) -> StepTables:
        """The steps a run_stage call computed as it returned them, others by load()."""
        stored = load()[0] if outcome.skipped else []
        rows = [
            row
            for step in outcome.summaries
            for row in (
                outcome.results[step].rows
                if step in outcome.results
                else [r for r in stored if r["step"] == step]
            )
        ]
        return cls(rows, dict(outcome.summaries))


@dataclass(frozen=True)
class DemoResults:
    """What the report renders: each demo stage's results at the recorded steps.

    Attributes:
        metrics: Step -> its training record (losses, accuracies, gradient norm).
        spectra: Step -> its spectra (with the layers' blocks).
        overlap: The mask/eigenspace overlap on the train split.
        exhaustive: The sketch-vs-exact check on the train split.
        hesscale: The HesScale comparison, as :data:`HESSCALE_FILE` holds it.
    """

    metrics: dict[int, dict[str, Any]]
    spectra: dict[int, SpectrumStep]
    overlap: StepTables
    exhaustive: StepTables
    hesscale: dict[str, Any]


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote, with the report's headline numbers."""

    markdown: Path
    html: Path
    figures: list[Path]
    findings: dict[str, Any]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _step_table(headers: Sequence[str], steps: Iterable[int], cells: Callable) -> str:
    """One row per step: the step, then ``cells(step)`` (numbers through fmt)."""
    rows = [
        (str(s), *(c if isinstance(c, str) else fmt(c) for c in cells(s)))
        for s in steps
    ]
    return markdown_table(("step", *headers), rows, aligned=False)


def _section(title: str, *paragraphs: str) -> str:
    return f"## {title}\n\n" + "\n\n".join(paragraphs) + "\n"


def _images(figures: Mapping[str, str], *shown: tuple[str, str]) -> str:
    return "\n\n".join(f"![{alt}]({figures[name]})" for name, alt in shown)


# ------------------------------------------------------------------ figures
def _plot_exhaustive(run: RunFolder, check: StepTables) -> Path:
    """Top eigenvalues, exact and sketched; overlap of the top-k eigenspaces."""
    steps = sorted(check.summaries)
    last = check.summaries[steps[-1]]
    figure = new_figure(10.0, 3.8, layout="constrained")
    left, right = figure.subplots(1, 2)
    exact = numpy.asarray(last["eigenvalues_exact"])
    index = numpy.arange(1, len(exact) + 1)
    left.plot(index, exact, "-", color="C0", label="exact (dense eigh)")
    sketch = numpy.asarray(last["eigenvalues_sketch"])
    left.plot(index, sketch, ".", color="C1", markersize=4, label="sketch (SEIGH)")
    left.axhline(0.0, color="0.7", linewidth=0.8)
    left.set(xscale="log", xlabel="i (by decreasing |λ|)", ylabel="eigenvalue λᵢ")
    left.set_title(f"top eigenvalues at step {steps[-1]}", fontsize="medium")
    cmap, span = colormaps["viridis"], max(len(steps) - 1, 1)
    for i, step in enumerate(steps):
        rows = [r for r in check.rows if r["step"] == step]
        ks, values = [r["k"] for r in rows], [r["basis_overlap"] for r in rows]
        right.plot(ks, values, color=cmap(0.9 * i / span), label=f"step {step}")
    right.set(xscale="log", ylim=(-0.03, 1.03), xlabel="k")
    right.set(ylabel="overlap of top-k eigenspaces")
    right.set_title("sketched vs exact eigenspace", fontsize="medium")
    for ax in (left, right):
        ax.legend(fontsize="small")
    settings = last["settings"]
    figure.suptitle(
        f"{last['problem']}: SEIGH with K = {settings['num_outer']}, "
        f"s = {settings['num_inner']} products vs exact ({_SPLIT} subset of "
        f"{last['hessian']['num_samples']} samples)"
    )
    return save_plot(run, figure, f"exhaustive_{_SPLIT}.png")


def _plot_hesscale(run: RunFolder, hesscale: Mapping[str, Any]) -> Path:
    """Each estimator's total error of the Hessian diagonal, HesScale's = 1."""
    methods = hesscale["methods"]
    totals = [hesscale["normalized"][m]["total"] for m in methods]
    ax = new_figure(7.0, 3.6, layout="constrained").subplots()
    bars = ax.bar(methods, totals, color=[f"C{i}" for i in range(len(methods))])
    ax.bar_label(bars, labels=[fmt(t) for t in totals], fontsize="small")
    ax.axhline(1.0, color="0.4", linestyle=":", linewidth=1)
    ax.set(yscale="log", ylabel="L1 error of diag(H) / HesScale's")
    ax.tick_params(axis="x", labelrotation=20)
    ax.set_title(
        f"{hesscale['config']['architecture']}, {len(hesscale['seeds'])} seed(s) x "
        f"{hesscale['num_samples']} samples",
        fontsize="medium",
    )
    return save_plot(run, ax.figure, "hesscale_quality.png")


# ------------------------------------------------------------------ sections
def _training(metrics: Mapping[int, Mapping[str, Any]], steps: Sequence[int]):
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
    table = _step_table(
        ("train loss", "train acc", "test loss", "test acc", "‖∇L‖"),
        steps,
        lambda s: (
            *(metrics[s]["train_loss"], _percent(metrics[s].get("train_accuracy"))),
            *(metrics[s]["test_loss"], _percent(metrics[s].get("test_accuracy"))),
            metrics[s].get("gradient_norm"),
        ),
    )
    text += ". Loss and gradient norm are over the whole split."
    return _section("Training", text, table), {
        "train_loss": {s: metrics[s]["train_loss"] for s in steps},
        "test_accuracy": {s: metrics[s].get("test_accuracy") for s in steps},
    }


def _largest(block: BlockSpectrum) -> float:
    return float(max(block.top_eigenvalues.tolist()))


def _smallest(block: BlockSpectrum) -> float | None:
    values = block.bottom_eigenvalues
    return None if values is None or not len(values) else float(values.min())


def _spectrum(spectra: Mapping[int, SpectrumStep], figures: Mapping[str, str]):
    steps = list(spectra)
    fulls = {s: spectra[s].spectra["hessian"].full for s in steps}
    top = {s: _largest(fulls[s]) for s in steps}
    bottom = {s: _smallest(fulls[s]) for s in steps}
    trace = {s: fulls[s].trace for s in steps}
    first, last, dim = steps[0], steps[-1], fulls[steps[0]].dim
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
    num = spectra[first].num_samples
    per_class = spectra[first].settings.samples_per_class
    text = _section(
        "How the Hessian's spectrum evolves",
        f"The Hessian of the mean loss over {num} train samples"
        + (f" ({per_class} per class)" if num != per_class else "")
        + f", D = {dim:,}; eigenvalues by `{fulls[first].method}` decomposition.",
        " ".join(lines),
        _step_table(
            ("top λ", "most negative λ", "tr H", "top λ / (tr H / D)", "method"),
            steps,
            lambda s: (
                (top[s], bottom[s], trace[s])
                + (top[s] / (trace[s] / dim) if trace[s] else None, fulls[s].method)
            ),
        ),
        "The densities (log scale, one curve per step, one panel per layer and "
        "one for the whole network) and the extreme eigenvalues against the step:",
        _images(
            figures,
            ("spectrum_hessian.png", "Hessian spectral density per step"),
            ("spectrum_extremes.png", "extreme eigenvalues against step"),
        ),
    )
    return text, {"top_eigenvalue": top, "trace": trace, "dim": dim}


def _layers(spectra: Mapping[int, SpectrumStep], figures: Mapping[str, str]):
    last = list(spectra)[-1]
    layerwise = spectra[last].spectra["hessian"]
    full_top, blocks = _largest(layerwise.full), layerwise.blocks
    distance = {r.layer: r.wasserstein for r in layer_full_distances({last: layerwise})}
    label = {name: i for i, name in enumerate(blocks, start=1)}
    tops = {name: _largest(b) for name, b in blocks.items()}
    biggest = max(blocks, key=lambda n: tops[n])
    closest = min(blocks, key=lambda n: distance[n])
    farthest = max(blocks, key=lambda n: distance[n])
    text = _section(
        "How each layer compares with the whole",
        "Each layer's diagonal block H_l of the Hessian (its weights and bias "
        "with each other, ignoring the coupling to other layers) has a spectrum "
        "of its own; the Wasserstein-1 distance W₁ measures how far its "
        "eigenvalue distribution is from the full Hessian's.",
        f"At step {last} the largest block eigenvalue is {fmt(tops[biggest])} "
        f"(layer {label[biggest]}), {_percent(tops[biggest] / full_top)} of the "
        f"full Hessian's {fmt(full_top)} (a diagonal block's top eigenvalue can "
        f"never exceed the full one's). Layer {label[closest]}'s spectrum is "
        f"closest to the full one (W₁ = {fmt(distance[closest])}), "
        f"layer {label[farthest]}'s the farthest (W₁ = {fmt(distance[farthest])}).",
        markdown_table(
            ("layer", "D_l", "top λ", "tr H_l", "W₁ to full"),
            [
                (f"{label[n]} (`{', '.join(b.param_names)}`)", f"{b.dim:,}")
                + tuple(map(fmt, (tops[n], b.trace, distance[n])))
                for n, b in blocks.items()
            ],
            aligned=False,
        ),
        "Distance of each layer's spectrum to the full one against depth, "
        f"at step {last} and summed over the recorded steps (each normalised by "
        "its maximum over layers; right: the LayerHessians procedure as "
        "published):",
        _images(
            figures,
            ("match_distros_peak.png", "layer vs full at a step"),
            ("match_distros_wasserstein.png", "layer vs full, summed"),
        ),
    )
    return text, {
        "step": last,
        "block_top_eigenvalue": tops,
        "block_trace": {n: b.trace for n, b in blocks.items()},
        "closest_layer": label[closest],
        "farthest_layer": label[farthest],
    }


def _verdict(row: Mapping[str, Any]) -> str:
    if row["random_max"] is not None and row["magnitude"] > row["random_max"]:
        return "more than every random mask"
    if row["random_min"] is not None and row["magnitude"] < row["random_min"]:
        return "less than every random mask"
    return "within the spread of the random masks"


def _overlap(overlap: StepTables, figures: Mapping[str, str]):
    summaries, steps = overlap.summaries, list(overlap.summaries)
    last, settings = steps[-1], overlap.summaries[steps[-1]]["settings"]
    K, small = settings["num_outer"], min(10, settings["num_outer"])
    by = {(r["step"], r["k"]): r for r in overlap.rows}
    ratio, at = {s: by[(s, K)]["ratio"] for s in steps}, by[(last, K)]
    low, high = min(steps, key=ratio.get), max(steps, key=ratio.get)
    above = [s for s in steps if ratio[s] > 1]
    sentences = [
        f"At step {last} the magnitude mask of size k = {K} overlaps the top-{K} "
        f"eigenspace {fmt(at['ratio'])} times chance (overlap {fmt(at['magnitude'])}"
        f" against k/D = {fmt(at['chance'])}; {settings['num_random']} random "
        f"masks: mean {fmt(at['random_mean'])}), {_verdict(at)}.",
        f"For the {small} largest weights it is {fmt(by[(last, small)]['ratio'])}"
        " times chance.",
        f"Over training the ratio at k = {K} ranges from {fmt(ratio[low])} (step "
        f"{low}) to {fmt(ratio[high])} (step {high}); the best possible mask of "
        f"the same size reaches {fmt(at['best_ratio'])} times chance at step "
        f"{last}.",
        "So the largest weights sit in the top curvature directions more than "
        f"chance at {len(above)} of {len(steps)} recorded steps"
        + (f" ({', '.join(map(str, above))})." if above else "."),
    ]
    columns = ("magnitude", "random_mean", "chance", "ratio", "best_ratio")
    text = _section(
        "Do the largest weights sit in the top curvature directions?",
        "Take the k weights of largest magnitude (the magnitude mask S_k) and the "
        f"top-k eigenvectors Q of the Hessian (by |λ|; here {settings['method']}, "
        f"on {summaries[last]['hessian']['num_samples']} train samples, a larger "
        "subset than the spectra's, so λ₁ differs from the top λ above). The "
        "overlap ‖Q[S_k, :k]‖²_F / k is the fraction of the top-k eigenspace that "
        "lives on those weights; a random mask gets k/D on average (chance), "
        f"with D = {summaries[last]['num_params']:,}.",
        " ".join(sentences if small != K else sentences[:1] + sentences[2:]),
        _step_table(
            ("λ₁ (largest in size)", f"ratio k={small}", f"magnitude k={K}")
            + ("random mean", "chance k/D", "ratio", "best mask ratio"),
            steps,
            lambda s: (
                (summaries[s]["eigenvalues"][0], by[(s, small)]["ratio"])
                + tuple(by[(s, K)][c] for c in columns)
            ),
        ),
        "Overlap against the mask size, against the step, and over chance:",
        _images(
            figures,
            *(
                (f"overlap_{_SPLIT}_{n}.png", f"overlap {_SPLIT} {n.replace('_', ' ')}")
                for n in ("vs_k", "vs_step", "ratio")
            ),
        ),
    )
    return text, {"k": K, "overlap_ratio": ratio, "chance": at["chance"]}


def _exhaustive_cells(summary: Mapping[str, Any]) -> tuple:
    """λ₁ exact and sketched, their error, overlaps, angle, error estimates."""
    errors = summary["eigenvalue_errors"]
    return (
        summary["eigenvalues_exact"][0],
        summary["eigenvalues_sketch"][0],
        errors.get("max_rel_top_3", errors.get("max_rel_top_1")),
        summary["basis_overlap"]["at_num_outer"],
        summary["principal_angles_degrees"]["median"],
        *(summary["magnitude_overlap"][c] for c in ("exact", "sketch")),
        *(summary["a_posteriori"][c] for c in ("estimate", "exact")),
    )


def _exhaustive(check: StepTables, figures: Mapping[str, str]):
    summaries, steps = check.summaries, list(check.summaries)
    last = summaries[steps[-1]]
    cells = {s: _exhaustive_cells(summaries[s]) for s in steps}
    K, s_inner = last["settings"]["num_outer"], last["settings"]["num_inner"]
    lam_exact, lam_sketch = last["eigenvalues_exact"][0], last["eigenvalues_sketch"][0]
    mag, post = last["magnitude_overlap"], last["a_posteriori"]
    same = (mag["exact"] > mag["chance"]) == (mag["sketch"] > mag["chance"])
    text = _section(
        "Does the sketch agree with the exact eigendecomposition?",
        f"The sketched eigendecomposition (SEIGH, {s_inner} Hessian-vector products "
        f"for K = {K} eigenpairs) against a dense eigh of the same Hessian "
        f"(on {last['hessian']['num_samples']} train samples, built from all "
        f"D = {last['num_params']:,} Hessian columns).",
        f"At step {steps[-1]} the sketch finds the top eigenvalue "
        f"{fmt(lam_sketch)} against {fmt(lam_exact)} exactly (relative error "
        f"{fmt(abs(lam_sketch - lam_exact) / abs(lam_exact))}). Its top-{K} "
        f"eigenspace overlaps the exact one by "
        f"{fmt(last['basis_overlap']['at_num_outer'])} (1 = identical; median "
        f"principal angle {fmt(last['principal_angles_degrees']['median'])}°). "
        f"The magnitude-mask overlap at k = {K} is {fmt(mag['sketch'])} from the "
        f"sketch and {fmt(mag['exact'])} exactly (chance {fmt(mag['chance'])}), so "
        f"the sketch reaches {'the same' if same else 'another'} verdict about "
        "chance. Its a-posteriori estimate of the error ‖H − Ĥ‖_F is "
        f"{fmt(post['estimate'])} against {fmt(post['exact'])} exactly (the best "
        f"rank-{K} approximation has {fmt(post['best_rank_k_error'])}).",
        _step_table(
            ("λ₁ exact", "λ₁ sketch", "max rel. error λ₁..₃")
            + (f"eigenspace overlap k={K}", "median angle (°)", "magnitude ov. exact")
            + ("magnitude ov. sketch", "error estimate", "error exact"),
            steps,
            cells.get,
        ),
        _images(figures, (f"exhaustive_{_SPLIT}.png", "sketch against exact")),
    )
    keys = {"lambda_1_exact": 0, "lambda_1_sketch": 1, "basis_overlap": 3}
    return text, {key: {s: cells[s][i] for s in steps} for key, i in keys.items()}


def _hesscale(hesscale: Mapping[str, Any], figures: Mapping[str, str]):
    normalized, layers = hesscale["normalized"], hesscale["layers"]
    ranking, config = hesscale["ranking"], hesscale["config"]
    others = [m for m in ("Hutchinson(1)", "GGN-MC(1)", "g²") if m in normalized]
    text = _section(
        "HesScale: how good are cheap diagonal estimates?",
        f"The L1 error of each estimate of the Hessian diagonal against the exact "
        f"one, on the same architecture ({config['architecture']}, "
        f"{config['num_params']:,} parameters, {config['training']}), for "
        f"{hesscale['num_samples']} single train samples on each of "
        f"{len(hesscale['seeds'])} seed(s), divided by HesScale's total error.",
        f"From best to worst: {', '.join(ranking)}. With HesScale's error as 1, "
        + ", ".join(f"{m} {fmt(normalized[m]['total'])}" for m in others)
        + f"; the all-zeros estimate scores {fmt(normalized['zero']['total'])}.",
        markdown_table(
            ("estimator", "total", *layers),
            [
                (m, *(fmt(normalized[m][c]) for c in ("total", *layers)))
                for m in ranking
            ],
            aligned=False,
        ),
        _images(figures, ("hesscale_quality.png", "HesScale comparison")),
    )
    return text, {
        "ranking": ranking,
        "total": {m: normalized[m]["total"] for m in ranking},
    }


# ------------------------------------------------------------------ report
def _head(run: RunFolder, steps: Sequence[int], findings: Mapping[str, Any]) -> str:
    """The title, what was trained and measured, and the summary's key numbers."""
    config, first, last = run.config, steps[0], steps[-1]
    top, layers = findings["spectrum"]["top_eigenvalue"], findings["layers"]
    overlap, exhaustive = findings["overlap"], findings["exhaustive"]
    key = [
        f"**Spectrum:** at step {first} the top eigenvalue is {fmt(top[first])}; "
        f"at step {last} it is {fmt(top[last])}.",
        f"**Layers:** at step {last} layer {layers['closest_layer']}'s spectrum is "
        f"closest to the whole network's, layer {layers['farthest_layer']}'s the "
        "farthest.",
        f"**Magnitude vs curvature:** at step {last} the magnitude mask of size "
        f"{overlap['k']} overlaps the top-{overlap['k']} eigenspace "
        f"{fmt(overlap['overlap_ratio'][last])} times chance.",
        f"**Sketch vs exact:** at step {last} the sketched top eigenvalue is "
        f"{fmt(exhaustive['lambda_1_sketch'][last])}, the exact "
        f"{fmt(exhaustive['lambda_1_exact'][last])}.",
        f"**HesScale:** best diagonal estimator {findings['hesscale']['ranking'][0]}.",
    ]
    return (
        f"# curvlab demo: {config.problem}\n\n"
        f"`{config.problem}` (D = {findings['spectrum']['dim']:,} parameters) "
        f"trained with plain SGD (learning rate {config.lr:g}, batch size "
        f"{config.batch_size}) for {config.steps} steps in {config.dtype}, seed "
        f"{config.seed}; the curvature is measured at steps "
        f"{', '.join(map(str, steps))}. Every number below is read back from this "
        "run folder; running the demo again on it skips the finished stages.\n\n"
        + _section("Summary", "\n".join(f"- {line}" for line in key))
    )


def write_report(
    run: RunFolder, results: DemoResults, *, timings: Mapping[str, float] | None = None
) -> Report:
    """Draw the figures and write ``report.md`` and ``report.html`` of ``run``.

    ``timings`` (seconds per stage) adds a timing table. Returns the files
    written, the figures and the headline numbers.
    """
    paths = [
        *plot_spectrum(run, results.spectra, operators=["hessian"]),
        *plot_match(run, results.spectra),
        *plot_overlap(
            run, {"train": (results.overlap.rows, results.overlap.summaries)}
        ),
        _plot_exhaustive(run, results.exhaustive),
        _plot_hesscale(run, results.hesscale),
    ]
    figures = {p.name: run.relative(p) for p in paths if p.suffix == ".png"}
    steps = list(results.spectra)
    parts = {
        "training": _training(results.metrics, steps),
        "spectrum": _spectrum(results.spectra, figures),
        "layers": _layers(results.spectra, figures),
        "overlap": _overlap(results.overlap, figures),
        "exhaustive": _exhaustive(results.exhaustive, figures),
        "hesscale": _hesscale(results.hesscale, figures),
    }
    findings: dict[str, Any] = {"steps": steps}
    findings |= {name: found for name, (_, found) in parts.items()}
    sections = [section for section, _ in parts.values()]
    if timings:
        rows = [(stage, f"{seconds:.1f}") for stage, seconds in timings.items()]
        table = markdown_table(("stage", "seconds"), rows, aligned=False)
        intro = "Seconds of the call that computed each stage:"
        sections.append(_section("Wall time", intro, table))
    text = "\n".join([_head(run, steps, findings), *sections, _FILES])
    markdown = run.write_text("report.md", text)
    title = f"curvlab demo: {run.config.problem}"
    page = run.write_text("report.html", markdown_to_html(text, title=title))
    linked = [run.resolve(path) for path in _IMAGE.findall(text)]
    # JSON round trip: the step keys become strings, as in the stored findings
    return Report(markdown, page, linked, json.loads(json.dumps(findings)))


_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")

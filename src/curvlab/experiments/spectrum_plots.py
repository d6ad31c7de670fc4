r"""Plots of the spectra: densities over training and layer-vs-full distances.

Draws what :func:`curvlab.experiments.spectrum.spectrum_run` returned, or reads
back what it stored (:func:`load_spectra`), into PNG files (matplotlib's Agg
backend, no display needed) in ``RUN_DIR/plots/``, each written atomically:

- :func:`plot_spectrum`: ``spectrum_<operator>.png``, one panel per layer block and
  one for the full operator, each the log-scale density against the eigenvalue
  with one curve per stored step (LayerHessians'
  ``plot_training_eigenspectrum.py``); and ``spectrum_extremes.png``, the
  extreme eigenvalues of the full operators against the step (points; lines
  through the largest magnitude and the most negative one).
- :func:`plot_match`: the distance between each layer's spectrum and the full one
  against depth (LayerHessians' ``match_distros.py``), normalised by its maximum
  over layers as in the paper: ``match_distros_peak.png`` at one step and
  ``match_distros_wasserstein.png`` summed over all stored steps. Each figure
  shows the Wasserstein-1 distance between the spectra (on the eigenvalues, and
  on the smoothed densities) next to the published matching procedure
  (:func:`~curvlab.subspace.spectra.layerhessians_match`, quirk included), with
  the table of all distances in ``match_distances.csv``.

For another operator than the Hessian the file names get a suffix
(``match_distros_peak_ggn.png``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy
from matplotlib import cm, colors, ticker
from matplotlib.figure import Figure

from curvlab.experiments._plot_files import PLOTS, new_figure, save_plot
from curvlab.experiments.spectrum import OPERATORS, STAGE, SpectrumStep, read_spectrum
from curvlab.runs.folder import MissingStepError, RunFolder
from curvlab.subspace.spectra import layer_full_distances

__all__ = ["PLOTS", "load_spectra", "match_rows", "plot_match", "plot_spectrum"]

_LOG_FLOOR = 1e-7  # densities below this fraction of a panel's maximum are clipped

#: The two panels of a matching figure: title -> (column, line style, label)s.
_MATCH_PANELS = {
    "Wasserstein-1 between spectra": (
        ("wasserstein", "-", "eigenvalues"),
        ("density_wasserstein", "--", "densities"),
    ),
    "LayerHessians matching (as published)": (
        ("layerhessians", "-", "match_distros.py"),
    ),
}


def load_spectra(run: RunFolder, steps: Sequence[int] | None = None) -> dict:
    """Read the stored spectra of a run.

    Args:
        run: The run folder.
        steps: Steps to read; ``None`` for all done steps.

    Returns:
        Step -> :class:`~curvlab.experiments.spectrum.SpectrumStep`, by step.

    Raises:
        MissingStepError: If no step is stored, or a requested one is not.
    """
    done = run.done_steps(STAGE)
    if not done:
        raise MissingStepError(
            f"No spectra stored in {str(run.path)!r}. Run `curvlab spectrum --run "
            f"{run.path}` first."
        )
    return {s: read_spectrum(run, s) for s in (done if steps is None else steps)}


def _title(run: RunFolder) -> str:
    c = run.config
    return f"{c.problem} ({c.optimizer}, lr {c.lr:g}, seed {c.seed})"


def plot_spectrum(
    run: RunFolder,
    spectra: Mapping[int, SpectrumStep] | None = None,
    *,
    steps: Sequence[int] | None = None,
    operators: Sequence[str] | None = None,
) -> list[Path]:
    """Draw the densities over training and the extreme eigenvalues.

    Args:
        run: The run folder.
        spectra: Step -> spectra, as :func:`~curvlab.experiments.spectrum.spectrum_run`
            computed them; ``None`` reads the stored ones (:func:`load_spectra`).
        steps: Steps to read when ``spectra`` is ``None``; ``None`` for all stored.
        operators: Subset of ``("hessian", "ggn", "residual")``; ``None`` for all
            stored.

    Returns:
        The PNG files written (module docstring).

    Raises:
        MissingStepError: If nothing is stored.
        ValueError: For an operator that is not stored.
    """
    spectra = load_spectra(run, steps) if spectra is None else spectra
    stored = [op for op in OPERATORS if op in next(iter(spectra.values())).spectra]
    operators = stored if operators is None else list(operators)
    unknown = [op for op in operators if op not in stored]
    if unknown:
        raise ValueError(
            f"Operators {unknown} are not stored (stored: {stored}); compute them "
            "with `curvlab spectrum --split-ggn`."
        )
    files = [f for op in operators if (f := _plot_densities(run, spectra, op))]
    return [*files, _plot_extremes(run, spectra, operators)]


def _panel(stored: SpectrumStep, operator: str, name: str):
    layerwise = stored.spectra[operator]
    return layerwise.full if name == "full" else layerwise.blocks.get(name)


def _plot_densities(run, spectra: dict[int, SpectrumStep], operator: str):
    steps = sorted(spectra)
    first = spectra[steps[0]]
    names = ["full", *first.spectra[operator].blocks]
    names = [name for name in names if _panel(first, operator, name).has_measure]
    if not names:
        return None
    # layers numbered 1..L in depth order as in the report, module name beside
    layers = enumerate([name for name in names if name != "full"], start=1)
    labels = {"full": "full"} | {n: f"layer {i} (module {n})" for i, n in layers}
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    width, height = 3.6 * columns + 1.2, 2.9 * rows + 0.5
    figure = new_figure(width, height)
    # a fixed layout: constrained layout costs seconds on log axes
    figure.subplots_adjust(left=0.9 / width, right=1 - 1.3 / width, wspace=0.35)
    figure.subplots_adjust(bottom=0.55 / height, top=1 - 0.6 / height, hspace=0.55)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    low, high = steps[0], steps[-1]
    norm = colors.Normalize(vmin=low, vmax=high if high > low else low + 1)
    for ax, name in zip(axes, names, strict=False):
        curves = [(step, _panel(spectra[step], operator, name)) for step in steps]
        curves = [(step, s) for step, s in curves if s is not None and s.has_measure]
        peak = max(float(s.density.max()) for _, s in curves)
        floor = peak * _LOG_FLOOR
        for step, spectrum in curves:
            density = numpy.maximum(spectrum.density.numpy(), floor)
            color = cm.viridis(norm(step))
            ax.semilogy(spectrum.grid.numpy(), density, color=color, linewidth=0.9)
        ax.set_ylim(floor, peak * 3)
        ax.minorticks_off()
        ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
        first = curves[0][1]
        title = f"{labels[name]} (D={first.dim}, {first.method})"
        ax.set_title(title, fontsize="medium")
        ax.set(xlabel="eigenvalue", ylabel="density")
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    mappable = cm.ScalarMappable(norm=norm, cmap=cm.viridis)
    box = (1 - 0.95 / width, 0.55 / height, 0.15 / width, 1 - 1.15 / height)
    figure.colorbar(mappable, cax=figure.add_axes(box)).set_label("training step")
    figure.suptitle(
        f"{_title(run)}: {operator} spectral density per layer and full, "
        f"{len(steps)} step(s)"
    )
    return save_plot(run, figure, f"spectrum_{operator}.png")


def _plot_extremes(run, spectra: dict[int, SpectrumStep], operators: list[str]):
    steps = sorted(spectra)
    figure = new_figure(4.5 * len(operators), 3.4, layout="constrained")
    axes = figure.subplots(1, len(operators), squeeze=False).ravel()
    for ax, operator in zip(axes, operators, strict=True):
        fulls = [spectra[s].spectra[operator].full for s in steps]
        for key, color, marker, label in (
            ("top_eigenvalues", "C0", "o", "largest |λ|"),
            ("bottom_eigenvalues", "C3", "v", "most negative"),
        ):
            values = [getattr(f, key) for f in fulls]
            if any(v is None or not len(v) for v in values):
                continue
            xs = [s for s, v in zip(steps, values, strict=True) for _ in v]
            ys = [float(x) for v in values for x in v]
            ax.scatter(xs, ys, s=14, color=color, marker=marker, label=label)
            ax.plot(steps, [float(v[0]) for v in values], color=color, linewidth=0.8)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_title(f"{operator}: extreme eigenvalues (full)", fontsize="medium")
        ax.set(xlabel="training step", ylabel="eigenvalue")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    figure.suptitle(_title(run))
    return save_plot(run, figure, "spectrum_extremes.png")


def match_rows(
    spectra: dict[int, SpectrumStep], operator: str = "hessian"
) -> list[dict]:
    """Distances between each layer's spectrum and the full one, per step.

    Args:
        spectra: Stored spectra by step (:func:`load_spectra`).
        operator: ``"hessian"``, ``"ggn"`` or ``"residual"``.

    Returns:
        One row per step and layer: the fields of
        :class:`~curvlab.subspace.spectra.LayerFullDistance`, from
        :func:`~curvlab.subspace.spectra.layer_full_distances`.

    Raises:
        ValueError: If the operator or the layer blocks are not stored, or a
            spectrum has no measure (``method="lanczos"``).
    """
    for step in sorted(spectra):
        if operator not in spectra[step].spectra:
            raise ValueError(
                f"Operator {operator!r} is not stored for step {step}; compute it "
                "with `curvlab spectrum --split-ggn`."
            )
        if not spectra[step].spectra[operator].blocks:
            raise ValueError(
                f"No layer spectra stored for step {step}; compute them with "
                "`curvlab spectrum --layers`."
            )
    by_step = {step: stored.spectra[operator] for step, stored in spectra.items()}
    return [row._asdict() for row in layer_full_distances(by_step)]


def _match_figure(layers, values: dict[str, list[float]], title: str) -> Figure:
    """Each distance normalised by its maximum over layers, against depth."""
    figure = new_figure(10.0, 3.8, layout="constrained")
    depth = numpy.arange(len(layers)) / max(len(layers) - 1, 1)
    panels = zip(figure.subplots(1, 2), _MATCH_PANELS.items(), strict=True)
    for ax, (heading, curves) in panels:
        for i, (key, style, label) in enumerate(curves):
            array = numpy.asarray(values[key], dtype=float)
            peak = float(array.max())
            normed = array / peak if peak > 0 else array
            label = f"{label} (max {peak:.3g})"
            ax.plot(depth, normed, style, marker="o", color=f"C{i}", label=label)
        ax.set_xticks(depth, layers, rotation=45 if len(layers) > 6 else 0)
        ax.set(xlabel="layer (depth 1 ... L)", ylabel="distance / max over layers")
        ax.set_ylim(-0.03, 1.08)
        ax.set_title(heading, fontsize="medium")
        ax.legend(fontsize="small")
    figure.suptitle(title)
    return figure


def plot_match(
    run: RunFolder,
    spectra: Mapping[int, SpectrumStep] | None = None,
    *,
    step: int | None = None,
    operator: str = "hessian",
) -> list[Path]:
    """Draw the layer-vs-full distances against depth, at a step and over training.

    Args:
        run: The run folder.
        spectra: Step -> spectra, as :func:`plot_spectrum` takes them.
        step: The step of the "peak" figure (the paper hand-picks one epoch per
            model); ``None`` for the last stored step.
        operator: ``"hessian"``, ``"ggn"`` or ``"residual"``.

    Returns:
        The two PNG files and ``match_distances.csv`` (module docstring).

    Raises:
        MissingStepError: If nothing is stored or ``step`` is not.
        ValueError: If layer spectra or the operator are not stored.
    """
    spectra = load_spectra(run) if spectra is None else spectra
    step = max(spectra) if step is None else step
    if step not in spectra:
        raise MissingStepError(
            f"No spectrum stored for step {step}; stored steps: {sorted(spectra)}."
        )
    rows = match_rows(spectra, operator)
    suffix = "" if operator == "hessian" else f"_{operator}"
    table = run.write_table(Path(PLOTS) / f"match_distances{suffix}.csv", rows)
    layers = list(dict.fromkeys(row["layer"] for row in rows))
    keys = ("wasserstein", "density_wasserstein", "layerhessians")
    at_step = {k: [r[k] for r in rows if r["step"] == step] for k in keys}
    summed = {
        k: [sum(r[k] for r in rows if r["layer"] == layer) for layer in layers]
        for k in keys
    }
    title = f"{_title(run)}: layer vs full {operator} spectrum"
    files = []
    for kind, values, heading in (
        ("peak", at_step, f"{title} at step {step}"),
        ("wasserstein", summed, f"{title}, summed over {len(spectra)} step(s)"),
    ):
        figure = _match_figure(layers, values, heading)
        files.append(save_plot(run, figure, f"match_distros_{kind}{suffix}.png"))
    return [*files, table]

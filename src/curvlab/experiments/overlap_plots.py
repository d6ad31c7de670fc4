r"""Figures of the stored mask/eigenspace overlaps of a run (the paper's figures).

:func:`plot_overlap` reads what :func:`curvlab.experiments.overlap.overlap_run`
stored (every finished step of ``overlap_train`` and ``overlap_test``) and
draws, per split, into ``RUN_DIR/plots/`` (each PNG written atomically):

- ``overlap_<split>_vs_k.png``: the overlap
  :math:`\operatorname{ov}(k) = \|Q_{S_k, :k}\|_F^2 / k` against the mask size
  ``k``, one curve per step (colour: step), for the magnitude mask (left) and
  the best mask (right, the largest overlap any mask of size ``k`` reaches),
  with the chance level :math:`k/D` and the mean of the random masks;
- ``overlap_<split>_vs_step.png``: the overlap against the training step at a
  few ``k`` (the paper's 10, 50, 100 and the largest ``K``), magnitude mask
  (solid), best mask (dashed) and chance (dotted);
- ``overlap_<split>_ratio.png``: the magnitude-mask overlap over chance,
  :math:`\operatorname{ov}(k) / (k/D)`, against ``k`` per step, on a log
  scale, with the random masks' ratio for reference (1 is chance).

References:
    - Fernandez, Schneider, Mahsereci & Hennig (2025). Connecting parameter
      magnitudes and Hessian eigenspaces at scale using sketched methods.
      TMLR; arXiv 2504.14701 (Figures 1 and 4-6: overlap against k and step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure

from curvlab.experiments._plot_files import new_figure, save_plot
from curvlab.experiments.eigenbasis import SPLITS
from curvlab.experiments.overlap import load_overlap, overlap_stage
from curvlab.runs import RunFolder

__all__ = ["plot_overlap"]

_K_LABEL = "k (mask size = eigenspace dimension)"
_OVERLAP_LABEL = r"overlap $\|Q_{S,:k}\|_F^2 / k$"
_RANDOM = {"color": "0.6", "lw": 0.8}


def _by_step(rows: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, list]]:
    """Columns per step: ``{step: {column: [values by k]}}``."""
    out: dict[int, dict[str, list]] = {}
    for row in rows:
        columns = out.setdefault(int(row["step"]), {})
        for key, value in row.items():
            cell = math.nan if value is None else float(value)
            columns.setdefault(key, []).append(cell)
    return out


def _step_norm(steps: Sequence[int]) -> Normalize:
    low, high = min(steps), max(steps)
    return Normalize(vmin=low, vmax=high if high > low else low + 1)


def _colorbar(figure: Figure, axes, steps: Sequence[int]) -> None:
    """A colour bar of the training step (the colours of :func:`plot_overlap`)."""
    base = colormaps["viridis"]
    cmap = ListedColormap([base(0.9 * i / 255) for i in range(256)])
    mappable = ScalarMappable(norm=_step_norm(steps), cmap=cmap)
    figure.colorbar(mappable, ax=axes, pad=0.02).set_label("training step")


def _plot_vs_k(data, steps, colors) -> Figure:
    figure = new_figure(12, 4.8, layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    for step in steps:
        columns = data[step]
        ks = columns["k"]
        left.plot(ks, columns["magnitude"], color=colors[step], lw=1.4)
        right.plot(ks, columns["best"], color=colors[step], lw=1.4)
        left.plot(ks, columns["random_mean"], alpha=0.6, **_RANDOM)
    last = data[steps[-1]]
    for axes in (left, right):
        axes.plot(last["k"], last["chance"], "k--", lw=1.2, label="chance k/D")
        axes.set_xlabel(_K_LABEL)
        axes.grid(alpha=0.3)
    left.plot([], [], label="random masks (mean)", **_RANDOM)
    left.plot([], [], color=colors[steps[-1]], lw=1.4, label="magnitude mask")
    right.plot([], [], color=colors[steps[-1]], lw=1.4, label="best mask")
    left.set_ylabel(_OVERLAP_LABEL)
    left.set_title("magnitude mask (k largest |θ|)")
    right.set_title("best mask (k largest row norms of Q[:, :k])")
    left.legend(loc="upper left", fontsize=8)
    right.legend(loc="upper left", fontsize=8)
    left.set_ylim(bottom=0)
    _colorbar(figure, [left, right], steps)
    return figure


def _plot_vs_step(data, steps, colors) -> Figure:
    num_outer = int(max(max(data[step]["k"]) for step in steps))
    ks = [k for k in (10, 50, 100) if k < num_outer]
    if len(ks) < 2:
        ks = sorted({max(1, round(num_outer * f)) for f in (0.1, 0.5)} - {num_outer})
    ks.append(num_outer)
    cmap = colormaps["tab10"]
    figure = new_figure(8, 5.4, layout="constrained")
    axes = figure.subplots()
    lines = {"magnitude": ("-o", {"ms": 4}), "best": ("--", {"lw": 1.0})}
    lines["chance"] = (":", {"lw": 1.2})
    for i, k in enumerate(ks):
        for column, (style, kind) in lines.items():
            values = [  # nan where a step was measured with a smaller K
                data[s][column][data[s]["k"].index(float(k))]
                if float(k) in data[s]["k"]
                else math.nan
                for s in steps
            ]
            label = f"k={k} {column}"
            axes.plot(steps, values, style, color=cmap(i % 10), label=label, **kind)
    axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel(_OVERLAP_LABEL)
    axes.grid(alpha=0.3, which="both")
    figure.legend(fontsize=7, ncol=len(ks), loc="outside lower center")
    return figure


def _plot_ratio(data, steps, colors) -> Figure:
    figure = new_figure(8, 4.8, layout="constrained")
    axes = figure.subplots()
    for step in steps:
        columns = data[step]
        ks = columns["k"]
        pairs = zip(columns["random_mean"], columns["chance"], strict=True)
        random = [r / c for r, c in pairs]
        axes.plot(ks, columns["ratio"], color=colors[step], lw=1.4)
        axes.plot(ks, random, alpha=0.6, **_RANDOM)
    axes.axhline(1.0, color="k", ls="--", lw=1.2, label="chance (ratio 1)")
    axes.plot([], [], label="random masks (mean)", **_RANDOM)
    axes.plot([], [], color=colors[steps[-1]], lw=1.4, label="magnitude mask")
    axes.set_yscale("log")
    axes.set_xlabel(_K_LABEL)
    axes.set_ylabel("overlap / chance  =  ov(k) / (k/D)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8, loc="upper right")
    _colorbar(figure, axes, steps)
    return figure


#: The figures of a split: file name suffix and drawing function.
_FIGURES = {"vs_k": _plot_vs_k, "vs_step": _plot_vs_step, "ratio": _plot_ratio}


def plot_overlap(
    run: RunFolder | str | Path,
    tables: Mapping[str, tuple[Sequence[Mapping], Mapping[int, Mapping]]] | None = None,
) -> list[Path]:
    """Draw the three overlap figures (module docstring) of every measured split.

    ``curvlab plot overlap --run RUN_DIR`` calls this with the stored results;
    the demo's report hands over what the stage returned.

    Args:
        run: The run folder.
        tables: Split -> its ``(rows, summaries)`` as :func:`load_overlap`
            returns them; ``None`` reads every stored split.

    Returns:
        The PNG files written, in ``RUN_DIR/plots/``.

    Raises:
        FileNotFoundError: If the folder is no run folder or holds no overlap
            results (run ``curvlab overlap --run RUN_DIR`` first).
    """
    run = run if isinstance(run, RunFolder) else RunFolder.open(run)
    paths: list[Path] = []
    if tables is None:
        done = [s for s in SPLITS if run.done_steps(overlap_stage(s))]
        tables = {split: load_overlap(run, split) for split in done}
    for split, (rows, summaries) in tables.items():
        data = _by_step(rows)
        steps = sorted(data)
        cmap, norm = colormaps["viridis"], _step_norm(steps)
        colors = {s: cmap(0.9 * norm(s)) for s in steps}
        first = summaries[steps[0]]
        settings = first["settings"]
        exact = settings["method"] == "exact"
        how = "exact eigh" if exact else f"SEIGH, {settings['num_inner']} products"
        title = (
            f"{first['problem']} (D={first['num_params']}): Hessian on "
            f"{first['hessian']['num_samples']} {split} samples, top "
            f"{settings['num_outer']} eigenpairs by |λ| ({how})"
        )
        for name, draw in _FIGURES.items():
            figure = draw(data, steps, colors)
            figure.suptitle(title, fontsize=10)
            paths.append(save_plot(run, figure, f"overlap_{split}_{name}.png", dpi=120))
    if not paths:
        raise FileNotFoundError(
            f"No overlap results in {str(run.path)!r}. Run `curvlab overlap --run "
            f"{run.path}` first."
        )
    return paths

"""The optimization study's figure: learning curves of each method's best lr."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from curvlab.experiments._plot_files import new_figure
from curvlab.runs import RunFolder

__all__ = ["plot_curves"]

_PANELS = (
    ("step", "train_loss", "training loss (whole train split)"),
    ("step", "test_accuracy", "test accuracy"),
    ("seconds", "train_loss", "training loss (whole train split)"),
    ("seconds", "test_accuracy", "test accuracy"),
)


def plot_curves(
    folder: RunFolder,
    curves: Sequence[Mapping[str, Any]],
    settings: Any,
    *,
    labels: Mapping[str, str],
) -> Path:
    """Draw training loss and test accuracy against steps and training time.

    One line per method at its best learning rate: the mean over seeds, with a
    band of one standard error either side. Written atomically to
    ``report/optimizers.png`` in the study folder.

    Args:
        folder: The study folder.
        curves: Rows of :attr:`OptimizerStudy.curves
            <curvlab.experiments.optimizers.OptimizerStudy.curves>`.
        settings: The study's resolved settings (problem, steps, seeds).
        labels: Display name per method.

    Returns:
        The PNG's path.
    """
    figure = new_figure(11, 7.5)
    axes = figure.subplots(2, 2)
    methods = list(dict.fromkeys(row["method"] for row in curves))
    for axis, (x_key, y_key, ylabel) in zip(axes.flat, _PANELS, strict=True):
        for method in methods:
            rows = [r for r in curves if r["method"] == method]
            x = [r[x_key] for r in rows]
            y = [r[y_key] for r in rows]
            error = [r[f"{y_key}_se"] or 0.0 for r in rows]
            lr = rows[0]["lr"]
            (line,) = axis.plot(x, y, label=f"{labels[method]} (lr {lr:g})")
            axis.fill_between(
                x,
                [a - b for a, b in zip(y, error, strict=True)],
                [a + b for a, b in zip(y, error, strict=True)],
                color=line.get_color(),
                alpha=0.25,
                linewidth=0,
            )
        if y_key == "train_loss":
            axis.set_yscale("log")
        else:  # leave out the initial guess level, show where the curves end up
            later = [r[y_key] for r in curves if r["step"] > 0 and r[y_key] is not None]
            if later:
                axis.set_ylim(max(0.0, min(later) - 0.02), 1.0)
        xlabel = "step" if x_key == "step" else "training time (s, mean over seeds)"
        axis.set(xlabel=xlabel, ylabel=ylabel)
        axis.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    figure.suptitle(
        f"{settings.problem}: best learning rate per method, mean ± standard error "
        f"over {settings.num_seeds} seed(s), batch {settings.batch_size}"
    )
    figure.tight_layout()
    path = folder.resolve("report/optimizers.png")
    with folder.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path

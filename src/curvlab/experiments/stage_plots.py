"""Figures that any table stage can draw from its combined table ``all.csv``."""

from __future__ import annotations

from pathlib import Path

from curvlab.runs import RunFolder

__all__ = ["plot_over_steps"]


def plot_over_steps(
    run: RunFolder,
    stage: str,
    *,
    group: str,
    value: str,
    error: str | None = None,
    ylabel: str | None = None,
) -> Path:
    """Draw a stage's ``value`` column against the step, one line per ``group``.

    Reads ``RUN_DIR/<stage>/all.csv`` and writes ``RUN_DIR/plots/<stage>.png``
    atomically.

    Args:
        run: The run folder.
        stage: A :class:`~curvlab.runs.stage.TableStage`'s name.
        group: Column whose values name the lines (e.g. ``"operator"``).
        value: Column on the vertical axis.
        error: Column of error bars (``None``: none; empty cells: 0).
        ylabel: Label of the vertical axis (default ``value``).

    Returns:
        The path of the PNG.
    """
    import matplotlib.pyplot as plt

    rows = run.read_table(run.path_for(stage, None, ".csv"))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for name in dict.fromkeys(row[group] for row in rows):
        mine = [row for row in rows if row[group] == name]
        bars = None if error is None else [row[error] or 0 for row in mine]
        x, y = [row["step"] for row in mine], [row[value] for row in mine]
        axis.errorbar(x, y, bars, label=str(name), marker="o", capsize=3)
    axis.set(xlabel="step", ylabel=ylabel or value, title=run.config.problem)
    axis.legend()
    path = run.resolve(f"plots/{stage}.png")
    with run.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path

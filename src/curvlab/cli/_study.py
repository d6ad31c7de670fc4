"""What the study commands (``grassmann``, ``hesscale-*``) share.

Their comma-separated list options (:func:`parse_numbers`, :func:`parse_lists`)
and :func:`run_study_events`: :func:`~curvlab.cli._common.run_study` with the
study's :class:`~curvlab.runs.stage.StageEvent` progress drawn on its bar.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from curvlab.cli._common import option_error, run_study
from curvlab.runs.stage import StageEvent

__all__ = ["parse_lists", "parse_numbers", "run_study_events"]


def parse_numbers(text: str, name: str, kind: type = float) -> list:
    """Parse a comma-separated list of numbers (or of names, with ``kind=str``).

    Args:
        text: The option's value, e.g. ``"250, 500"``.
        name: The option's name in messages, e.g. ``"--dims"``.
        kind: ``int``, ``float`` or ``str``.

    Returns:
        The entries, in order.

    Raises:
        ValueError: If an entry is no value of that kind or the list is empty.
    """
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise ValueError(f"{name} must be a comma-separated list. Got {text!r}.")
    try:
        return [kind(entry) for entry in entries]
    except ValueError:
        raise ValueError(
            f"{name} must be a comma-separated list of {kind.__name__}s. Got {text!r}."
        ) from None


def parse_lists(*options: tuple[str | None, str, type]) -> list:
    """Parse ``(text, name, kind)`` list options; ``None`` stays ``None``.

    Raises:
        typer.Exit: With code 2 (after printing the error) for a bad value.
    """
    try:
        return [None if o[0] is None else parse_numbers(*o) for o in options]
    except ValueError as error:
        raise typer.Exit(option_error(error)) from None


def run_study_events(
    out: str | Path,
    stem: str,
    threads: int | None,
    call: Callable[[Callable[[StageEvent], None]], Any],
    files: tuple[Callable, Callable, Callable],
    *,
    label: str,
    transient: bool = False,
) -> int:
    """Run a study under :func:`~curvlab.cli._common.run_study`, showing its events.

    Args:
        out: Output folder (created if missing).
        stem: The files are ``<stem>.csv``, ``<stem>.md`` and ``<stem>.png``.
        threads: PyTorch CPU threads during the study (``None``: keep).
        call: Runs the study, given the ``on_progress`` keyword.
        files: ``(markdown, write_csv, plot)`` of the study's ``*_plots`` module.
        label: The bar's description until a ``"phase"`` event names another.
        transient: Remove the bar when the study is done.

    Returns:
        The exit code of :func:`~curvlab.cli._common.run_study`.
    """

    def study(progress):
        task = progress.add_task(label, total=None)

        def show(event: StageEvent) -> None:
            phase = event.values["phase"] if event.kind == "phase" else None
            progress.update(
                task, completed=event.index, total=event.total, description=phase
            )

        return call(on_progress=show)

    names = (f"{stem}.csv", f"{stem}.md", f"{stem}.png")
    return run_study(out, names, threads, study, files, transient=transient)

"""What the study commands (``grassmann``, ``hesscale-*``) share.

Their comma-separated list options (:func:`parse_numbers`, :func:`parse_lists`)
and their body, :func:`run_study`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from curvlab.cli._common import (
    check_threads,
    error_printer,
    option_error,
    progress_bar,
    torch_threads,
)
from curvlab.runs.stage import StageEvent

__all__ = ["parse_lists", "parse_numbers", "run_study"]


def parse_numbers(text: str, name: str, kind: type = float) -> list:
    """Parse a comma-separated list of numbers (or of names, with ``kind=str``).

    ``text`` is the value of option ``name`` (in messages), e.g. ``"250, 500"``
    of ``--dims``; ``kind`` is ``int``, ``float`` or ``str``.

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


def run_study(
    out: str | Path,
    stem: str,
    threads: int | None,
    call: Callable[..., Any],
    files: tuple[Callable, Callable, Callable],
    *,
    label: str,
    transient: bool = False,
) -> int:
    """Run a study with a progress bar, write its files and print its markdown.

    Runs ``call(on_progress=...)``, whose :class:`~curvlab.runs.stage.StageEvent`
    objects move the bar (a ``"phase"`` event names what it does; ``label``
    until then), writes ``<stem>.csv``, ``<stem>.md`` and ``<stem>.png`` into
    ``out`` (created if missing) with ``files``, the ``(markdown, write_csv,
    plot)`` of the study's ``*_plots`` module, then prints the markdown, which
    files were written where, and how long it all took. ``threads``: PyTorch
    CPU threads meanwhile (``None``: keep); ``transient`` removes the bar.

    Returns:
        The exit code: 0 on success, 2 for invalid arguments or an unwritable
        folder.
    """
    console, fail = Console(), error_printer(Console(stderr=True))
    to_markdown, write_csv, plot = files
    names = (f"{stem}.csv", f"{stem}.md", f"{stem}.png")
    out = Path(out).expanduser()
    start = time.perf_counter()
    try:
        check_threads(threads)
        out.mkdir(parents=True, exist_ok=True)
        with (
            torch_threads(threads),
            progress_bar(console, transient=transient) as progress,
        ):
            task = progress.add_task(label, total=None)

            def show(event: StageEvent) -> None:
                phase = event.values["phase"] if event.kind == "phase" else None
                progress.update(
                    task, completed=event.index, total=event.total, description=phase
                )

            result = call(on_progress=show)
        markdown = to_markdown(result)
        write_csv(result, out / names[0])
        (out / names[1]).write_text(markdown + "\n")
        plot(result, out / names[2])
    except (ValueError, OSError) as error:
        return fail(str(error))
    plain = {"markup": False, "highlight": False, "soft_wrap": True}
    console.print(markdown, **plain)
    seconds = time.perf_counter() - start
    written = f"Wrote {names[0]}, {names[1]} and {names[2]} to {out}"
    console.print(f"{written} in {seconds:.1f} s.", **plain)
    return 0

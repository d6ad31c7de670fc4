"""Pieces shared by the ``curvlab`` commands.

Typer option types used by several commands (``--run``, ``--device``,
``--data-dir``, ``--threads``, ...), the Rich progress bar, the error printer,
a context manager for the PyTorch CPU threads, and :func:`run_steps`, which
runs a per-step experiment with a progress bar and turns its errors into exit
codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from curvlab.runs import ConfigError

__all__ = [
    "DataDirOption",
    "DeviceOption",
    "ForceStepsOption",
    "MaxColsOption",
    "RunDtypeOption",
    "RunOption",
    "ThreadsOption",
    "check_device",
    "check_threads",
    "error_printer",
    "exit_on_run_errors",
    "markdown_table",
    "print_written",
    "print_skipped",
    "progress_bar",
    "run_stage_command",
    "run_steps",
    "torch_threads",
    "write_study_files",
]

RunOption = Annotated[
    Path, typer.Option("--run", help="Run folder written by `curvlab train`.")
]
DeviceOption = Annotated[str, typer.Option(help="Device: cpu, cuda or cuda:<index>.")]
DataDirOption = Annotated[
    Path | None,
    typer.Option(help="Folder with the data files of file-based problems."),
]
ThreadsOption = Annotated[int | None, typer.Option(min=1, help="PyTorch CPU threads.")]
RunDtypeOption = Annotated[
    str | None,
    typer.Option(help="float32 or float64 for the products. [the run's]"),
]
MaxColsOption = Annotated[
    int, typer.Option(min=1, help="Hessian columns per pass over the data.")
]
ForceStepsOption = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Recompute the requested finished steps, also with other "
        "settings (options not given keep their stored values).",
    ),
]

Fail = Callable[..., int]


def error_printer(error_console: Console) -> Fail:
    """A ``fail(message, code=2)`` that prints the error and returns ``code``."""

    def fail(message: str, code: int = 2) -> int:
        error_console.print(f"[bold red]Error:[/] {escape(message)}")
        return code

    return fail


@contextmanager
def exit_on_run_errors(error_console: Console | None = None) -> Iterator[None]:
    """Turn run-folder errors that escape a command into one line and an exit code.

    The one place where the commands' uncaught run-folder errors end:

    - a disk or permission error (``ENOSPC``, ``EDQUOT``, ``EACCES``, ``EPERM``,
      ``EROFS``, also inside HDF5 or torch errors): one line naming the path
      and the cause, exit code 1
      (:func:`curvlab.runs.errors.disk_error_message`);
    - :class:`~curvlab.runs.errors.RunLockedError` (another process writes the
      same stage of the folder): its message, naming that process, exit 2;
    - :class:`~curvlab.runs.errors.RunIntegrityError` (a damaged file): its
      message, naming the file, the step and what to do, exit 2.

    Other exceptions pass through unchanged.

    Args:
        error_console: Where to print (default: standard error).

    Yields:
        Nothing; run the command inside.

    Raises:
        typer.Exit: With code 1 or 2 for the errors above.
    """
    from curvlab.runs.errors import (
        RunIntegrityError,
        RunLockedError,
        disk_error_message,
    )

    fail = error_printer(error_console or Console(stderr=True, soft_wrap=True))
    try:
        yield
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except RunLockedError as error:
        raise typer.Exit(fail(str(error), 2)) from None
    except Exception as error:
        message = disk_error_message(error)
        if message is not None:
            raise typer.Exit(fail(message, 1)) from None
        if isinstance(error, RunIntegrityError):
            raise typer.Exit(fail(str(error), 2)) from None
        raise


def check_device(device: str) -> torch.device:
    """The device, or :class:`ConfigError` if CUDA was asked for but is missing."""
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Device {device!r} was asked for; CUDA is unavailable.")
    return resolved


def check_threads(threads: int | None) -> None:
    """Raise :class:`ConfigError` unless ``threads`` is ``None`` or positive."""
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1. Got {threads}.")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` PyTorch CPU threads (``None``: keep), restored afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def progress_bar(console: Console, *, remaining: bool = False) -> Progress:
    """The commands' progress bar; ``remaining`` adds the time-remaining column."""
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    if remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console)


def print_skipped(
    progress: Progress, skipped: Any, label: str = "Already done"
) -> None:
    """Print the steps that were skipped, if any."""
    if skipped:
        progress.console.print(f"{label}: steps {list(skipped)}.")


def run_steps(
    name: str,
    call: Callable[[Callable[[Any], None]], Any],
    step_line: Callable[[int, dict[str, Any]], str],
    console: Console,
    fail: Fail,
    errors: tuple[type[BaseException], ...],
) -> Any:
    """Run a per-step experiment with a progress bar; map errors to exit codes.

    Args:
        name: The progress bar's first description.
        call: Runs the experiment, given the ``on_progress`` callback; its
            events have ``kind`` ``"start"``, ``"phase"``, ``"step"`` or
            ``"done"``.
        step_line: The line printed after a step, from its step and summary.
        console: Where to print.
        fail: Prints an error and returns its exit code.
        errors: Exceptions reported with exit code 2.

    Returns:
        What ``call`` returned, or an ``int`` exit code: 1 for a NaN/Inf
        product, 2 for ``errors``, 130 when interrupted.
    """
    state: dict[str, Any] = {"step": None}
    with progress_bar(console) as progress:
        task = progress.add_task(name, total=None)

        def on_progress(event: Any) -> None:
            state["step"] = event.step
            if event.kind == "start":
                progress.update(task, total=event.total, completed=0)
                print_skipped(progress, event.values["skipped"])
            elif event.kind == "phase":
                progress.update(
                    task, description=f"step {event.step}: {event.values['phase']}"
                )
            elif event.kind == "step":
                line = step_line(event.step, event.values)
                progress.update(task, completed=event.index)
                progress.console.print(line)
            elif event.kind == "done":
                progress.update(task, description="done", completed=event.total)

        try:
            return call(on_progress)
        except KeyboardInterrupt:
            progress.stop()
            console.print(
                f"[yellow]Interrupted at step {state['step']}.[/] Finished steps are "
                "stored; run the same command again to resume."
            )
            return 130
        except FloatingPointError as error:
            return fail(str(error), 1)
        except errors as error:
            return fail(str(error))


def run_stage_command(
    name: str,
    stage_run: Callable[..., Any],
    step_line: Callable[[int, dict[str, Any]], str],
    render: Callable[[Any, Any], str],
    *,
    run: str | Path,
    steps: str | None,
    settings: Any,
    force: bool,
    device: str,
    data_dir: str | Path | None,
    threads: int | None,
    max_cols: int | None,
    console: Console | None,
    error_console: Console | None,
) -> int:
    """Open a run folder, run one per-step stage on it and print its results.

    The body shared by ``curvlab overlap`` and ``curvlab exhaustive``: check the
    folder, device and threads, call ``stage_run(folder, settings, steps, force=,
    device=, data_dir=, max_cols=, on_progress=)`` under :func:`run_steps`, say when
    nothing was left to do, then print what ``render(folder, result)`` returns
    after drawing its tables.

    Returns:
        The exit code of :func:`run_steps` (0 on success).
    """
    from curvlab.experiments.overlap import OverlapSettingsError
    from curvlab.runs import MissingStepError, RunFolder

    console = console or Console()
    fail = error_printer(error_console or Console(stderr=True))
    try:
        folder = RunFolder.open(run)
        resolved = check_device(device)
        check_threads(threads)
    except (FileNotFoundError, ConfigError, RuntimeError) as error:
        return fail(str(error))
    errors = (
        OverlapSettingsError,
        MissingStepError,
        ConfigError,
        ValueError,
        TypeError,
        FileNotFoundError,
    )
    with torch_threads(threads):
        result = run_steps(
            name,
            lambda on_progress: stage_run(
                folder,
                settings,
                steps,
                force=force,
                device=resolved,
                data_dir=data_dir,
                max_cols=max_cols,
                on_progress=on_progress,
            ),
            step_line,
            console,
            fail,
            errors,
        )
    if isinstance(result, int):
        return result
    if not result.computed:
        console.print("Nothing to do: every requested step is done.")
    tail = render(folder, result)
    console.print(f"{tail} Done in {result.seconds:.1f} s.")
    return 0


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Format a markdown table, the first column left-aligned, the rest right.

    Args:
        header: Column titles.
        rows: Cells, as strings.

    Returns:
        The table, one line per row.
    """
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_study_files(
    out: Path,
    names: tuple[str, str, str],
    markdown: str,
    write_csv: Callable[[Path], Any],
    plot: Callable[[Path], Any],
) -> None:
    """Write a study's CSV table, markdown and PNG figure into ``out``.

    Args:
        out: The output folder.
        names: File names of the CSV, the markdown and the PNG.
        markdown: The markdown text.
        write_csv: Writes the CSV to the path it is given.
        plot: Draws the PNG to the path it is given.
    """
    csv_name, markdown_name, png_name = names
    write_csv(out / csv_name)
    (out / markdown_name).write_text(markdown + "\n")
    plot(out / png_name)


def print_written(
    console: Console, out: Path, names: tuple[str, str, str], start: float
) -> None:
    """Say which study files were written where, and how long it all took.

    Args:
        console: Where to print.
        out: The output folder.
        names: File names of the CSV, the markdown and the PNG.
        start: ``time.perf_counter()`` when the command started.
    """
    csv_name, markdown_name, png_name = names
    console.print(
        f"Wrote {csv_name}, {markdown_name} and {png_name} to {out} "
        f"in {time.perf_counter() - start:.1f} s.",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )

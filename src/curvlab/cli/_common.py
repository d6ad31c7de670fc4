"""Pieces shared by the ``curvlab`` commands.

Typer option types used by several commands (``--run``, ``--device``,
``--data-dir``, ``--threads``, ...), the one device check
(:func:`check_device`), the one number formatter (:func:`fmt`, from
:mod:`curvlab._format`), the Rich progress bar, the error printer, a context
manager for the PyTorch CPU threads, the one interrupt handler
(:func:`run_guarded`: Ctrl-C becomes exit code 130 and a line saying where the
command stood), and the bodies that commands share: :func:`run_steps` and
:func:`run_stage_command` for per-step stages, :func:`run_study` for studies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
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
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from curvlab._format import fmt, markdown_table
from curvlab.runs import ConfigError

__all__ = [
    "RESUME",
    "DType",
    "DataDirOption",
    "DeviceOption",
    "ForceStepsOption",
    "MaxColsOption",
    "RunDtypeOption",
    "RunOption",
    "SamplesPerClassOption",
    "SeedOption",
    "StepsOption",
    "StudyOutOption",
    "StudyThreadsOption",
    "ThreadsOption",
    "check_device",
    "check_threads",
    "error_printer",
    "exit_on_run_errors",
    "fmt",
    "markdown_table",
    "option_error",
    "print_skipped",
    "progress_bar",
    "run_guarded",
    "run_stage_command",
    "run_steps",
    "run_study",
    "show_stage_event",
    "summary_line",
    "torch_threads",
]


class DType(str, Enum):
    """Floating dtypes the commands accept."""

    float32 = "float32"
    float64 = "float64"


RunOption = Annotated[
    Path, typer.Option("--run", help="Run folder written by `curvlab train`.")
]
StepsOption = Annotated[
    str | None,
    typer.Option(
        help="Recorded steps, e.g. 0,100 or 0:1000:100 (stop included). [all]"
    ),
]
SamplesPerClassOption = Annotated[
    int | None,
    typer.Option(min=1, help="Samples per class of the train subset. [50]"),
]
SeedOption = Annotated[
    int | None, typer.Option(min=0, help="Seed of the probes. [the run's]")
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
StudyOutOption = Annotated[
    Path, typer.Option(help="Folder for the CSV, markdown and PNG files.")
]
StudyThreadsOption = Annotated[int, typer.Option(min=1, help="PyTorch CPU threads.")]
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


def option_error(error: Exception) -> int:
    """Print a bad option value as ``Error: ...`` on standard error; return 2."""
    typer.echo(f"Error: {error}", err=True)
    return 2


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
    """Parse a device string and make sure it can be used.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.

    Returns:
        The device.

    Raises:
        ConfigError: If the string is no device or CUDA is asked for but missing.
    """
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"Unknown device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"Device {device!r} was asked for, but CUDA is not available to this "
            f"PyTorch ({torch.__version__})."
        )
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


def progress_bar(
    console: Console, *, remaining: bool = False, transient: bool = False
) -> Progress:
    """The commands' progress bar; ``remaining`` adds the time-remaining column.

    Args:
        console: Where to draw it.
        remaining: Add the estimated time remaining.
        transient: Remove the bar when it stops.

    Returns:
        The bar (a context manager).
    """
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    if remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, transient=transient)


def print_skipped(
    progress: Progress, skipped: Any, label: str = "Already done"
) -> None:
    """Print the steps that were skipped, if any."""
    if skipped:
        progress.console.print(f"{label}: steps {list(skipped)}.")


#: What every command says after Ctrl-C: running it again resumes.
RESUME = "Finished steps are stored; run the same command again to resume."


def run_guarded(
    call: Callable[[], Any],
    progress: Progress,
    fail: Fail,
    errors: tuple[type[BaseException], ...],
    where: Callable[[], str],
) -> Any:
    """Run ``call()`` under a progress bar; Ctrl-C and errors become exit codes.

    The one interrupt handler of the commands: on Ctrl-C it stops the bar and
    prints ``Interrupted <where()>.`` and :data:`RESUME`.

    Args:
        call: The work.
        progress: Its progress bar.
        fail: Prints an error and returns its exit code.
        errors: Exceptions reported with exit code 2.
        where: Where the work stood when interrupted, e.g. ``"at step 6"``.

    Returns:
        What ``call`` returned, or an ``int`` exit code: 1 for a NaN/Inf
        (:class:`FloatingPointError`), 2 for ``errors``, 130 when interrupted.
    """
    try:
        return call()
    except KeyboardInterrupt:
        progress.stop()
        progress.console.print(f"[yellow]Interrupted {where()}.[/] {RESUME}")
        return 130
    except FloatingPointError as error:
        return fail(str(error), 1)
    except errors as error:
        return fail(str(error))


def show_stage_event(
    step_line: Callable[[int, dict[str, Any]], str],
) -> Callable[[Progress, TaskID, Any], None]:
    """Draw a stage's :class:`~curvlab.runs.stage.StageEvent` on a progress bar.

    Args:
        step_line: The line printed after a step, from its step and summary.

    Returns:
        ``show(progress, task, event)``: ``"start"`` sets the total and prints
        the skipped steps, ``"phase"`` names what the step is doing, ``"step"``
        prints ``step_line``, ``"done"`` completes the bar, and a stage's own
        kinds (units of work inside a step) advance it.
    """

    def show(progress: Progress, task: TaskID, event: Any) -> None:
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
        else:  # a unit of work inside a step (a stage's own kind)
            details = " ".join(
                str(event.values[key])
                for key in ("operator", "block")
                if key in event.values
            )
            progress.update(
                task,
                completed=event.index,
                description=f"step {event.step}: {details or event.kind}",
            )

    return show


def run_steps(
    name: str,
    call: Callable[[Callable[[Any], None]], Any],
    step_line: Callable[[int, dict[str, Any]], str] | None,
    console: Console,
    fail: Fail,
    errors: tuple[type[BaseException], ...],
    *,
    show: Callable[[Progress, TaskID, Any], None] | None = None,
    total: int | None = None,
    where: Callable[[int | None], str] | None = None,
) -> Any:
    """Run a per-step experiment with a progress bar; map errors to exit codes.

    Args:
        name: The progress bar's first description.
        call: Runs the experiment, given the ``on_progress`` callback; its
            events are :class:`~curvlab.runs.stage.StageEvent` objects
            (``"start"``, ``"phase"``, ``"step"``, ``"done"``, and a stage's own
            kinds for units of work inside a step).
        step_line: The line printed after a step, from its step and summary
            (for the default ``show``).
        console: Where to print.
        fail: Prints an error and returns its exit code.
        errors: Exceptions reported with exit code 2.
        show: Draws an event on the bar (default: :func:`show_stage_event`).
        total: The bar's total before the first event.
        where: Where the run stood when interrupted, from the step of the last
            event (default: ``"at step S"``).

    Returns:
        What ``call`` returned, or an ``int`` exit code: 1 for a NaN/Inf
        product, 2 for ``errors``, 130 when interrupted (:func:`run_guarded`).
    """
    state: dict[str, Any] = {"step": None}
    show = show or show_stage_event(step_line or summary_line)
    where = where or (lambda step: f"at step {step}")
    with progress_bar(console, remaining=True) as progress:
        task = progress.add_task(name, total=total)

        def on_progress(event: Any) -> None:
            state["step"] = event.step
            show(progress, task, event)

        return run_guarded(
            lambda: call(on_progress),
            progress,
            fail,
            errors,
            lambda: where(state["step"]),
        )


def summary_line(step: int, summary: Mapping[str, Any]) -> str:
    """The line printed after a step: its scalar results, numbers to 4 digits.

    Args:
        step: The step.
        summary: The step's summary; ``settings`` and nested values are left out.

    Returns:
        ``"step S: name value, ..."``.
    """
    items = [
        f"{name} {fmt(value)}"
        for name, value in summary.items()
        if name not in ("step", "settings") and not isinstance(value, dict | list)
    ]
    return f"step {step}: " + ", ".join(items)


def run_stage_command(
    name: str,
    make_stage: Callable[[Any, Any], Any],
    *,
    run: str | Path,
    steps: str | None,
    force: bool,
    device: str,
    data_dir: str | Path | None,
    threads: int | None,
    step_line: Callable[[int, dict[str, Any]], str] = summary_line,
    render: Callable[[Any, Any], str] | None = None,
    build: bool = True,
    console: Console | None = None,
    error_console: Console | None = None,
) -> int:
    """Open a run folder, run one stage on it and print its results.

    The body of every per-step stage command (``name`` is the progress bar's
    first description): check the folder, device and threads, build the run's
    problem on the device (``problem`` is ``None`` when ``build`` is false),
    build the stage with ``make_stage(folder, problem)`` (which resolves its
    settings once), run it with :func:`~curvlab.runs.stage.run_stage` under
    :func:`run_steps` (progress bar, Ctrl-C, exit codes), say when nothing was
    left to do, then print what ``render(folder, result)`` returns (after
    drawing its tables or figures).

    Returns:
        The exit code of :func:`run_steps` (0 on success).
    """
    from curvlab.runs import MissingStepError, RunFolder
    from curvlab.runs.stage import SettingsConflictError, run_stage

    console = console or Console()
    fail = error_printer(error_console or Console(stderr=True))
    try:
        folder = RunFolder.open(run)
        resolved = check_device(device)
        check_threads(threads)
    except (FileNotFoundError, ConfigError, RuntimeError) as error:
        return fail(str(error))
    errors = (
        SettingsConflictError,
        MissingStepError,
        ConfigError,
        ValueError,
        TypeError,
        FileNotFoundError,
    )

    def call(on_progress: Callable[[Any], None]) -> Any:
        problem = folder.problem(device=resolved, data_dir=data_dir) if build else None
        stage = make_stage(folder, problem)
        return run_stage(
            stage,
            steps,
            force=force,
            device=resolved,
            data_dir=data_dir,
            on_progress=on_progress,
        )

    with torch_threads(threads):
        result = run_steps(name, call, step_line, console, fail, errors)
    if isinstance(result, int):
        return result
    if not result.computed:
        console.print("Nothing to do: every requested step is done.")
    tail = render(folder, result) if render else ""
    tail = tail or f"Tables in {escape(str(folder.path / result.stage))}."
    console.print(f"{tail} Done in {result.seconds:.1f} s.")
    return 0


def run_study(
    out: str | Path,
    names: tuple[str, str, str],
    threads: int | None,
    study: Callable[[Progress], Any],
    files: tuple[
        Callable[[Any], str], Callable[[Any, Path], Any], Callable[[Any, Path], Any]
    ],
    console: Console | None = None,
    error_console: Console | None = None,
    *,
    transient: bool = False,
) -> int:
    """Run a study with a progress bar, write its files and print its markdown.

    The body of the study commands (``grassmann``, ``hesscale-quality``,
    ``hesscale-cost``): check ``threads``, create ``out``, run
    ``study(progress)`` with ``threads`` PyTorch CPU threads, write the result's
    CSV table, markdown and PNG figure into ``out``, then print the markdown,
    which files were written where, and how long it all took.

    Args:
        out: Output folder (created if missing).
        names: File names of the CSV, the markdown and the PNG.
        threads: PyTorch CPU threads (restored afterwards); ``None`` keeps them.
        study: Runs the study, given the progress bar; returns its result.
        files: ``(markdown, write_csv, plot)``: the result's markdown text, and
            functions that write its CSV and draw its PNG, called with the
            result and the file's path (the study's ``*_plots`` module).
        console: Where to print (default: standard output).
        error_console: Where to print errors (default: standard error).
        transient: Remove the progress bar when the study is done.

    Returns:
        The exit code: 0 on success, 2 for invalid arguments or an unwritable
        folder.
    """
    console = console or Console()
    fail = error_printer(error_console or Console(stderr=True))
    to_markdown, write_csv, plot = files
    csv_name, markdown_name, png_name = names
    out = Path(out).expanduser()
    start = time.perf_counter()
    try:
        check_threads(threads)
        out.mkdir(parents=True, exist_ok=True)
        with (
            torch_threads(threads),
            progress_bar(console, transient=transient) as progress,
        ):
            result = study(progress)
        markdown = to_markdown(result)
        write_csv(result, out / csv_name)
        (out / markdown_name).write_text(markdown + "\n")
        plot(result, out / png_name)
    except (ValueError, OSError) as error:
        return fail(str(error))
    console.print(markdown, markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"Wrote {csv_name}, {markdown_name} and {png_name} to {out} "
        f"in {time.perf_counter() - start:.1f} s.",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0

"""Glue shared by the ``curvlab`` commands (their options: :mod:`curvlab.cli._options`).

Checks, the progress bar, the one interrupt handler (:func:`run_guarded`) and
the body of the per-step stage commands (:func:`run_stage_command`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
import typer
from rich import box
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
from rich.table import Table

from curvlab._format import fmt
from curvlab.cli._options import Machine
from curvlab.runs import ConfigError, MissingStepError, RunFolder, parse_steps
from curvlab.runs.errors import RunIntegrityError, RunLockedError, disk_error_message
from curvlab.runs.stage import SettingsConflictError, run_stage

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

    A disk or permission error (``ENOSPC``, ``EDQUOT``, ``EACCES``, ``EPERM``,
    ``EROFS``, also inside HDF5 or torch errors) names the path and the cause
    (:func:`curvlab.runs.errors.disk_error_message`) and exits with 1;
    :class:`~curvlab.runs.errors.RunLockedError` (another process writes the
    stage) and :class:`~curvlab.runs.errors.RunIntegrityError` (a damaged file)
    print their message and exit with 2. Other exceptions pass through.

    Raises:
        typer.Exit: With code 1 or 2 for the errors above.
    """
    fail = error_printer(error_console or Console(stderr=True, soft_wrap=True))
    try:
        yield
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as error:
        locked = isinstance(error, RunLockedError)
        message = None if locked else disk_error_message(error)
        if message is not None:
            raise typer.Exit(fail(message, 1)) from None
        if locked or isinstance(error, RunIntegrityError):
            raise typer.Exit(fail(str(error), 2)) from None
        raise


def check_device(device: str) -> torch.device:
    """Parse ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"`` and check it can be used.

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
    """The commands' progress bar; ``remaining`` adds the time-remaining column."""
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    columns += [MofNCompleteColumn(), TimeElapsedColumn()]
    columns += [TimeRemainingColumn()] if remaining else []
    return Progress(*columns, console=console, transient=transient)


def run_guarded(
    call: Callable[[], Any],
    progress: Progress,
    fail: Fail,
    errors: tuple[type[BaseException], ...],
    where: Callable[[], str],
) -> Any:
    """Run ``call()`` under a progress bar; Ctrl-C and errors become exit codes.

    The one interrupt handler of the commands: on Ctrl-C it stops the bar and
    prints ``Interrupted <where()>.`` (e.g. ``"at step 6"``) and how to resume.
    ``fail`` prints an error and returns its exit code.

    Returns:
        What ``call`` returned, or an ``int`` exit code: 1 for a NaN/Inf
        (:class:`FloatingPointError`), 2 for ``errors``, 130 when interrupted.
    """
    try:
        return call()
    except KeyboardInterrupt:
        progress.stop()
        progress.console.print(
            f"[yellow]Interrupted {where()}.[/] Finished steps are stored; run the "
            "same command again to resume."
        )
        return 130
    except FloatingPointError as error:
        return fail(str(error), 1)
    except errors as error:
        return fail(str(error))


def _show_stage_event(
    step_line: Callable[[int, dict[str, Any]], str],
    progress: Progress,
    task: TaskID,
    event: Any,
) -> None:
    """Draw a stage's :class:`~curvlab.runs.stage.StageEvent` on a progress bar.

    ``"start"`` sets the total and prints the skipped steps, ``"phase"`` names
    what the step is doing, ``"step"`` prints ``step_line(step, summary)``,
    ``"done"`` completes the bar, and a stage's own kinds (units of work inside
    a step) advance it.
    """
    if event.kind == "start":
        progress.update(task, total=event.total, completed=0)
        if skipped := list(event.values["skipped"]):
            progress.console.print(f"Already done: steps {skipped}.")
    elif event.kind == "phase":
        progress.update(task, description=f"step {event.step}: {event.values['phase']}")
    elif event.kind == "step":
        line = step_line(event.step, event.values)
        progress.update(task, completed=event.index)
        progress.console.print(line)
    elif event.kind == "done":
        progress.update(task, description="done", completed=event.total)
    else:  # a unit of work inside a step (a stage's own kind)
        keys = [key for key in ("operator", "block") if key in event.values]
        details = " ".join(str(event.values[key]) for key in keys) or event.kind
        description = f"step {event.step}: {details}"
        progress.update(task, completed=event.index, description=description)


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

    ``call(on_progress)`` runs the experiment, which reports its
    :class:`~curvlab.runs.stage.StageEvent` objects to ``on_progress``; ``show``
    draws them on the bar (named ``name``, of ``total`` units at first; default
    ``_show_stage_event`` with ``step_line``), and ``where(step)`` says where
    the run stood when interrupted (default ``"at step S"``).

    Returns:
        What ``call`` returned, or an ``int`` exit code: 1 for a NaN/Inf
        product, 2 for ``errors``, 130 when interrupted (:func:`run_guarded`).
    """
    state: dict[str, Any] = {"step": None}
    show = show or partial(_show_stage_event, step_line or summary_line)
    where = where or (lambda step: f"at step {step}")
    with progress_bar(console, remaining=True) as progress:
        task = progress.add_task(name, total=total)

        def on_progress(event: Any) -> None:
            state["step"] = event.step
            show(progress, task, event)

        def stood() -> str:
            return where(state["step"])

        return run_guarded(lambda: call(on_progress), progress, fail, errors, stood)


def summary_line(step: int, summary: Mapping[str, Any]) -> str:
    """``"step S: name value, ..."``: a summary's scalars, numbers to 4 digits."""
    items = [
        f"{name} {fmt(value)}"
        for name, value in summary.items()
        if name not in ("step", "settings") and not isinstance(value, dict | list)
    ]
    return f"step {step}: " + ", ".join(items)


def print_table(
    console: Console, title: str, caption: str, headers: Iterable[str], rows: Iterable
) -> None:
    """Print a table of right-aligned columns, as every command draws them."""
    table = Table(box=box.SIMPLE_HEAD, title=title, caption=caption)
    for header in headers:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def run_stage_command(
    name: str,
    make_stage: Callable[[Any, Any], Any],
    run: str | Path,
    steps: str | None,
    force: bool,
    machine: Machine,
    *,
    step_line: Callable[[int, dict[str, Any]], str] | str = summary_line,
    render: Callable[[Any, Any, Console], str | None] | None = None,
    figure: Mapping[str, str] | None = None,
    header: Callable[[Any], str] | None = None,
    build: bool = True,
) -> int:
    """Open a run folder, run one stage on it and print its results.

    The body of every per-step stage command: check the folder, steps, device
    and threads, print ``header(folder)``, build the run's problem (unless not
    ``build``: ``None``) and the stage, ``make_stage(folder, problem)``, run it
    under :func:`run_steps` (``name`` is the bar's first description;
    ``step_line`` is a function of a finished step and its summary, or a
    template such as ``"λ1 {eigenvalues[0]:.4g}"`` for ``str.format(**summary)``),
    then draw the results with ``render(folder, result, console)``, whose text
    ends the output, or :func:`~curvlab.experiments.stage_plots.plot_over_steps`
    with the options ``figure``.

    Returns:
        The exit code of :func:`run_steps` (0 on success).
    """
    console = Console()
    fail = error_printer(Console(stderr=True))
    try:
        folder = RunFolder.open(run)
        if steps is not None:
            parse_steps(steps)
        device = check_device(machine.device)
        check_threads(machine.threads)
    except (FileNotFoundError, ConfigError, RuntimeError) as error:
        return fail(str(error))
    errors = (SettingsConflictError, MissingStepError, ConfigError, ValueError)
    errors += (TypeError, FileNotFoundError, ImportError)
    data_dir = machine.data_dir

    def call(on_progress: Callable[[Any], None]) -> Any:
        problem = folder.problem(device=device, data_dir=data_dir) if build else None
        options = {"force": force, "device": device, "data_dir": data_dir}
        return run_stage(
            make_stage(folder, problem), steps, **options, on_progress=on_progress
        )

    if isinstance(step_line, str):
        template = step_line

        def step_line(step: int, summary: dict[str, Any]) -> str:
            return f"step {step}: {template.format(**summary)}"

    with torch_threads(machine.threads):
        if header:
            console.print(header(folder))
        result = run_steps(name, call, step_line, console, fail, errors)
    if isinstance(result, int):
        return result
    if not result.computed:
        console.print("Nothing to do: every requested step is done.")
    if figure:
        from curvlab.experiments.stage_plots import plot_over_steps

        tail = f"Figure: {plot_over_steps(folder, name, **figure)}."
    else:
        tail = render(folder, result, console) if render else ""
    tail = tail or f"Tables in {escape(str(folder.path / result.stage))}."
    console.print(f"{tail} Done in {result.seconds:.1f} s.")
    return 0

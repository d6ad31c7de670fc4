"""Pieces shared by the ``curvlab`` commands.

Typer option types used by several commands (``--run``, ``--device``,
``--data-dir``, ``--threads``, ...), the Rich progress bar, the error printer,
a context manager for the PyTorch CPU threads, and :func:`run_steps`, which
runs a per-step experiment with a progress bar and turns its errors into exit
codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    "SamplesPerClassOption",
    "SeedOption",
    "StepsOption",
    "ThreadsOption",
    "check_device",
    "check_threads",
    "error_printer",
    "fmt",
    "markdown_table",
    "print_written",
    "print_skipped",
    "progress_bar",
    "run_stage_command",
    "run_steps",
    "summary_line",
    "torch_threads",
    "write_study_files",
]

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
ForceStepsOption = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Recompute the requested finished steps, also with other "
        "settings (options not given keep their stored values).",
    ),
]

Fail = Callable[..., int]


def fmt(value: float | None, digits: int = 4) -> str:
    """A number in a table or a line: ``digits`` significant digits, ``-`` if absent.

    Args:
        value: The number, or ``None``.
        digits: Significant digits.

    Returns:
        The text.

    Example:
        >>> fmt(3.14159), fmt(None), fmt(2.5e-7, 3)
        ('3.142', '-', '2.5e-07')
    """
    return "-" if value is None else f"{value:.{digits}g}"


def error_printer(error_console: Console) -> Fail:
    """A ``fail(message, code=2)`` that prints the error and returns ``code``."""

    def fail(message: str, code: int = 2) -> int:
        error_console.print(f"[bold red]Error:[/] {escape(message)}")
        return code

    return fail


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
            events are :class:`~curvlab.runs.stage.StageEvent` objects
            (``"start"``, ``"phase"``, ``"step"``, ``"done"``, and a stage's own
            kinds for units of work inside a step).
        step_line: The line printed after a step, from its step and summary.
        console: Where to print.
        fail: Prints an error and returns its exit code.
        errors: Exceptions reported with exit code 2.

    Returns:
        What ``call`` returned, or an ``int`` exit code: 1 for a NaN/Inf
        product, 2 for ``errors``, 130 when interrupted.
    """
    state: dict[str, Any] = {"step": None}
    with progress_bar(console, remaining=True) as progress:
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

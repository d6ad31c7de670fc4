"""The one framework every resumable per-step experiment runs on.

A *stage* computes something at recorded training steps of a run folder and
stores it there (``overlap_train``, ``exhaustive_train``, ``spectrum``,
``trace``, ...). Every stage has the same life cycle, written once here:

1. **Settings, resolved once.** What decides a stage's numbers is a flat dict of
   JSON values. A requested value wins over the value the stage's finished steps
   were computed with, which wins over the default (:func:`pick_setting`,
   :func:`stored_settings`). When a finished step was computed with other
   settings, :func:`run_stage` raises :class:`SettingsConflictError`, which names
   every conflicting setting, its stored and requested values, and how to
   override (``force=True``, ``--force`` on the command line).
2. **One step at a time.** :meth:`Stage.compute` returns a typed result for one
   step; :meth:`Stage.write` stores it atomically (:meth:`RunFolder.write_json`,
   :meth:`RunFolder.write_table`) and returns the files and the manifest info.
3. **The runner** (:func:`run_stage`) selects the steps (:func:`select_steps`),
   skips finished ones, records the call in ``invocations/``, computes, writes,
   marks done in the manifest, lets the stage refresh its combined tables
   (:meth:`Stage.finish`), and reports progress through one event type
   (:class:`StageEvent`). An interruption (Ctrl-C, an error) is written into the
   invocation record and re-raised; finished steps stay finished, so running
   the same call again resumes. The command line turns Ctrl-C into exit code 130
   (:func:`curvlab.cli._common.run_steps`).

A stage subclass declares its name, the command that runs it, its resolved
settings and the per-step work; nothing else. ``curvlab trace``
(:mod:`curvlab.experiments.trace`) is the smallest complete example, and
``docs/architecture.md`` walks through it.

**Grids of independent units.** A study that trains many runs (``curvlab
optimizers``: one training run per method, learning rate and seed) has no
recorded steps to walk; its units of work are named runs. :class:`GridStage`
and :func:`run_grid` give it the same life cycle with units in place of steps:
settings resolved once by the stage, :class:`SettingsConflictError` for a
finished unit computed with other settings, the call recorded in the study
folder's ``invocations/``, one atomic manifest entry per stored unit
(``manifest/<stage>/<unit>.json``, listing its files and their sizes),
:class:`StageEvent` progress (kind ``"unit"`` for a stored unit), and an
interrupted call resumable. Units are independent, so :func:`run_grid` computes
them on a Dask client when one is given (``client.submit`` per unit, results
stored by this process as they arrive) and one after the other otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from curvlab.runs.config import parse_steps
from curvlab.runs.environment import machine_info, package_versions, utc_now
from curvlab.runs.folder import MissingStepError, RunFolder, _check_stage

__all__ = [
    "GridRunResult",
    "GridStage",
    "SettingsConflictError",
    "Stage",
    "StageEvent",
    "StageRunResult",
    "StepProgress",
    "StepTable",
    "TableStage",
    "UnitProgress",
    "check_settings",
    "pick_setting",
    "read_table_stage",
    "resolve_settings",
    "run_grid",
    "run_stage",
    "select_steps",
    "settings_differences",
    "stored_settings",
]


class SettingsConflictError(ValueError):
    """Finished steps of a stage were computed with other settings.

    Attributes:
        differences: ``(setting, stored, requested)`` for each differing setting.
    """

    def __init__(self, message: str, differences: list[tuple[str, Any, Any]]):
        super().__init__(message)
        self.differences = differences


@dataclass(frozen=True)
class StageEvent:
    """Progress of :func:`run_stage`, passed to its callback.

    Attributes:
        kind: ``"start"`` (``values``: ``todo`` and ``skipped`` steps,
            ``settings``), ``"phase"`` (``values["phase"]``: what the step is
            doing now, named by the stage), ``"step"`` (a step is stored;
            ``values`` is its summary), ``"done"`` (``values["seconds"]``), or
            a kind a stage names for a unit of work inside a step (``spectrum``
            reports ``"spectrum"`` for every spectrum it finishes). A grid
            stage (:func:`run_grid`) reports ``"unit"`` for each stored unit.
        step: The step concerned (``None`` for ``"start"``/``"done"``).
        index: Units of work finished by this call so far: steps, unless the
            stage counts finer units (:meth:`Stage.num_units`).
        total: Units of work this call does.
        values: Details, see ``kind``.
    """

    kind: str
    step: int | None
    index: int
    total: int
    values: Mapping[str, Any] = field(default_factory=dict)


Key = TypeVar("Key", int, str)


@dataclass(frozen=True)
class _CallResult(Generic[Key]):
    """What one call of a runner did, by step or unit (attributes below)."""

    stage: str
    settings: Any
    computed: tuple[Key, ...]
    skipped: tuple[Key, ...]
    results: dict[Key, Any]
    summaries: dict[Key, dict[str, Any]]
    seconds: float


@dataclass(frozen=True)
class StageRunResult(_CallResult[int]):
    """What one call of :func:`run_stage` did.

    Attributes:
        stage: The stage name.
        settings: The stage's resolved settings object.
        computed: Steps computed and stored by this call.
        skipped: Requested steps that were already finished.
        results: The typed results of the computed steps, by step.
        summaries: The summary of every finished requested step, by step (read
            back from the run folder for the skipped ones).
        seconds: Wall time.
        unfinished: Steps whose work this call advanced without finishing
            (:meth:`Stage.write` returned ``None``); not marked done.
    """

    unfinished: tuple[int, ...] = ()


# ------------------------------------------------------------------ settings
def stored_settings(run: RunFolder, stage: str) -> dict[str, Any]:
    """The ``settings`` in the manifest of a stage's last finished step, or ``{}``."""
    done = run.done_steps(stage)
    if not done:
        return {}
    entry = run.entry(stage, done[-1]) or {}
    return dict(entry.get("info", {}).get("settings") or {})


def pick_setting(
    name: str, requested: Any, stored: Mapping[str, Any], default: Any
) -> Any:
    """The requested value (``None``: not given), else the stored one, else the default.

    ``stored`` holds the settings of the stage's finished steps
    (:func:`stored_settings`), by name.

    Example:
        >>> pick_setting("k", None, {"k": 5}, 10), pick_setting("k", 3, {"k": 5}, 10)
        (5, 3)
    """
    if requested is not None:
        return requested
    if stored.get(name) is not None:
        return stored[name]
    return default


def resolve_settings(
    requested: Any, stored: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``{setting: value}`` of every setting of ``defaults``, by :func:`pick_setting`.

    ``requested`` has one attribute per setting (``None``: not given).

    Example:
        >>> from types import SimpleNamespace
        >>> resolve_settings(SimpleNamespace(a=None, b=2), {"a": 1}, {"a": 0, "b": 0})
        {'a': 1, 'b': 2}
    """
    return {
        name: pick_setting(name, getattr(requested, name), stored, default)
        for name, default in defaults.items()
    }


def settings_differences(
    stored: Mapping[str, Any], wanted: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``(setting, stored, wanted)`` per differing setting, in ``wanted``'s order."""
    return [
        (name, stored.get(name), value)
        for name, value in wanted.items()
        if stored.get(name) != value
    ]


def check_settings(
    stored: Mapping[str, Any], wanted: Mapping[str, Any], what: str, remedy: str
) -> None:
    """Refuse finished work that was computed with other settings.

    Args:
        stored: Settings the work was computed with.
        wanted: Settings of this call.
        what: The message's start, e.g. ``"Step 4 of trace in '/run' was
            computed"``.
        remedy: How to override, e.g. ``"measure again with --force"``.

    Raises:
        SettingsConflictError: Naming each differing setting with its stored
            and requested value, if any differs.
    """
    differences = settings_differences(stored, wanted)
    if differences:
        listed = ", ".join(f"{n}: {a!r} -> {b!r}" for n, a, b in differences)
        raise SettingsConflictError(
            f"{what} with other settings (stored -> requested: {listed}). Request "
            f"the stored values, or {remedy}.",
            differences,
        )


def select_steps(run: RunFolder, steps: str | Iterable[int] | None) -> list[int]:
    """Pick recorded steps.

    Args:
        run: The run folder.
        steps: ``None`` for every recorded step, or a step list
            (:func:`~curvlab.runs.parse_steps` syntax: ``"0,100:1000:100"``).

    Returns:
        The steps, sorted and distinct.

    Raises:
        MissingStepError: If a step is not recorded, or the run has none.
        ConfigError: If ``steps`` is malformed.
    """
    recorded = run.recorded_steps()
    if not recorded:
        raise MissingStepError(
            f"The run in {str(run.path)!r} has no recorded steps. Train it first "
            "(`curvlab train --out RUN_DIR ...`)."
        )
    if steps is None:
        return recorded
    chosen = list(parse_steps(steps))
    missing = [s for s in chosen if s not in recorded]
    if missing:
        raise MissingStepError(
            f"Steps {missing} are not recorded in {str(run.path)!r}. Recorded "
            f"steps: {recorded}."
        )
    return chosen


# ------------------------------------------------------------------ stages
class StepProgress:
    """What a stage's :meth:`Stage.compute` reports while it works on a step.

    Args:
        notify: The callback of :func:`run_stage`.
        step: The step being computed.
        counter: ``{"done": units so far, "total": units}``, shared over steps.
    """

    def __init__(
        self, notify: Callable[[StageEvent], None], step: int, counter: dict[str, int]
    ):
        self._notify = notify
        self._step = step
        self._counter = counter

    def phase(self, name: str) -> None:
        """Report that a phase of the step starts (a short name: ``"hessian"``)."""
        self._emit("phase", {"phase": name})

    def advance(self, kind: str, count: int = 1, **values: Any) -> None:
        """Report ``count`` finished units of work as an event of ``kind``.

        For stages that count units; ``values`` are the event's details.
        """
        self._counter["done"] += count
        self._emit(kind, values)

    def _emit(self, kind: str, values: Mapping[str, Any]) -> None:
        done, total = self._counter["done"], self._counter["total"]
        self._notify(StageEvent(kind, self._step, done, total, values))


class Stage:
    """One resumable per-step experiment on a run folder.

    A subclass sets :attr:`name` (the stage's folder and manifest name),
    :attr:`command` (recorded in ``invocations/``), :attr:`settings` (the
    resolved settings object) and :attr:`stored` (the JSON dict of the settings
    that decide the numbers, compared with finished steps), and implements
    :meth:`compute`, :meth:`write` and :meth:`read_summary`.

    Attributes:
        run: The run folder.
    """

    name: str
    command: str
    settings: Any
    stored: dict[str, Any]

    def __init__(self, run: RunFolder):
        self.run = run

    def compute(self, step: int, progress: StepProgress) -> Any:
        """Compute one step (nothing is stored).

        Args:
            step: A recorded step.
            progress: Call ``progress.phase(name)`` whenever a new phase starts
                (and ``progress.advance(kind, **values)`` after each unit, for a
                stage that counts units, :meth:`num_units`).

        Returns:
            The step's typed result; it must have a ``summary`` dict.
        """
        raise NotImplementedError

    def num_units(self, todo: Sequence[int]) -> int | None:
        """Units of work of the steps to do (never empty); ``None``: count steps."""
        return None

    def write(self, step: int, result: Any) -> tuple[list[Path], dict[str, Any]] | None:
        """Store one step's result atomically.

        Args:
            step: The step.
            result: What :meth:`compute` returned.

        Returns:
            The files written and the info kept in the manifest entry (it must
            include ``"settings": self.stored``), or ``None`` when the step is
            not finished yet (e.g. only some of its measurements were asked
            for): then it is not marked done.
        """
        raise NotImplementedError

    def read_summary(self, step: int) -> dict[str, Any]:
        """A finished step's summary, as :meth:`compute`'s result holds it."""
        raise NotImplementedError

    def finish(self, computed: Sequence[int]) -> None:
        """Refresh what is gathered over steps (combined tables); default none."""


@dataclass(frozen=True)
class StepTable:
    """A table stage's result for one step, when it needs nothing more.

    Attributes:
        rows: The step's table, one dict per row.
        summary: The step's JSON summary (with ``"step"`` and ``"settings"``).
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]


class TableStage(Stage):
    """A stage that stores a table (CSV) and a summary (JSON) per step.

    Besides the per-step files ``<stage>/step_XXXXXXXX.csv`` and ``.json`` it
    keeps ``<stage>/all.csv`` (the rows of every finished step) and
    ``<stage>/summary.csv`` (one row per finished step, :meth:`summary_row`).
    A step's result must have ``rows`` (list of dicts) and ``summary``, as
    :class:`StepTable` has.

    Attributes:
        columns: Columns of the per-step tables.
    """

    columns: Sequence[str]

    def summary_row(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """A step's ``summary.csv`` row (with ``"step"``); default: no ``settings``."""
        return {key: value for key, value in summary.items() if key != "settings"}

    def write(self, step: int, result: Any) -> tuple[list[Path], dict[str, Any]]:
        """Write the step's CSV and JSON; the manifest keeps the summary row.

        Returns:
            The two files and ``{"settings", **summary_row without step}``.
        """
        run = self.run
        csv_path = run.write_table(
            run.path_for(self.name, step, ".csv"), result.rows, columns=self.columns
        )
        json_path = run.write_json(
            run.path_for(self.name, step, ".json"), result.summary
        )
        row = self.summary_row(result.summary)
        row.pop("step")
        return [csv_path, json_path], {"settings": self.stored, **row}

    def read_summary(self, step: int) -> dict[str, Any]:
        """The finished step's JSON summary."""
        return self.run.read_json(self.run.path_for(self.name, step, ".json"))

    def finish(self, computed: Sequence[int]) -> None:
        """Rewrite ``all.csv`` and ``summary.csv`` from every finished step."""
        run, rows, scalars = self.run, [], []
        for step in run.done_steps(self.name):
            rows.extend(run.read_table(run.path_for(self.name, step, ".csv")))
            scalars.append(self.summary_row(self.read_summary(step)))
        run.write_table(
            run.path_for(self.name, None, ".csv"), rows, columns=self.columns
        )
        run.write_table(run.path / self.name / "summary.csv", scalars)


def read_table_stage(
    run: RunFolder, stage: str, what: str, command: str
) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """The rows of every finished step of a :class:`TableStage`, and the summaries.

    Returns:
        The rows (steps ascending) and the summaries by step.

    Raises:
        FileNotFoundError: If no step is finished; the message names ``what``
            the stage holds (``"overlap results"``) and the ``command`` that
            computes it.
    """
    steps = run.done_steps(stage)
    if not steps:
        raise FileNotFoundError(
            f"No {what} in {str(run.path)!r}. Run `{command}` first."
        )
    rows, summaries = [], {}
    for step in steps:
        rows.extend(run.read_table(run.path_for(stage, step, ".csv")))
        summaries[step] = run.read_json(run.path_for(stage, step, ".json"))
    return rows, summaries


# ------------------------------------------------------------------ runner
@contextmanager
def _recorded(invocation: Any, computed: list) -> Iterator[None]:
    """Write an interrupted or failed call into its invocation record; re-raise."""
    try:
        yield
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        invocation.finish(
            status, computed=computed, error=f"{type(error).__name__}: {error}"
        )
        raise


def _outcome(
    stage: Any,
    computed: list,
    skipped: list,
    results: dict,
    begin: float,
    invocation: Any,
    notify: Callable[[StageEvent], None],
    counts: tuple[int, int],
) -> dict[str, Any]:
    """Record a finished call (invocation, ``"done"`` event); its result's fields."""
    seconds = time.perf_counter() - begin
    invocation.finish("finished", computed=computed, skipped=skipped)
    notify(StageEvent("done", None, *counts, {"seconds": seconds}))
    return {
        "stage": stage.name,
        "settings": stage.settings,
        "computed": tuple(computed),
        "skipped": tuple(skipped),
        "results": results,
        "seconds": seconds,
    }


def _check_finished(
    run: RunFolder, stage: Stage, chosen: list[int], force: bool
) -> tuple[list[int], list[int]]:
    """Split the chosen steps into those to compute and those already done."""
    todo, skipped = [], []
    for step in chosen:
        if force or not run.is_done(stage.name, step, verify=True):
            todo.append(step)
            continue
        have = (run.entry(stage.name, step) or {}).get("info", {}).get("settings")
        check_settings(
            have or {},
            stage.stored,
            f"Step {step} of {stage.name} in {str(run.path)!r} was computed",
            "pass force=True (--force) to recompute the finished steps",
        )
        skipped.append(step)
    return todo, skipped


def run_stage(
    stage: Stage,
    steps: str | Iterable[int] | None = None,
    *,
    force: bool = False,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    on_progress: Callable[[StageEvent], None] | None = None,
) -> StageRunResult:
    """Compute and store a stage at recorded steps, skipping finished ones.

    For each step to do: :meth:`Stage.compute`, the manifest entry removed (a
    forced recomputation must not look finished halfway), :meth:`Stage.write`
    (atomic files), the entry written with the files' sizes and the stage's
    info, :meth:`Stage.finish`. The call is recorded in ``invocations/`` with
    its outcome (``finished``, ``failed`` or ``interrupted``).

    Args:
        stage: The stage, with its resolved settings.
        steps: Steps (default: every recorded one), a list or a string such as
            ``"0,100:1000:100"``.
        force: Recompute requested finished steps, also those computed with
            other settings.
        device: Recorded in the invocation.
        data_dir: Recorded in the invocation.
        on_progress: Called with a :class:`StageEvent` at the start, at each
            phase of a step, after each stored step and at the end.

    Returns:
        The steps computed and skipped, the typed results of the computed ones
        and every requested step's summary.

    Raises:
        SettingsConflictError: If finished steps were computed with other
            settings and ``force`` is false.
        MissingStepError: If a requested step is not recorded.
    """
    run = stage.run
    notify = on_progress or (lambda event: None)
    begin = time.perf_counter()
    chosen = select_steps(run, steps)
    todo, skipped = _check_finished(run, stage, chosen, force)
    invocation = run.start_invocation(
        stage.command,
        request={"settings": stage.stored, "steps": chosen, "force": force},
        device=str(device),
        data_dir=None if data_dir is None else str(data_dir),
        versions=package_versions(),
        machine=machine_info(str(device)),
    )
    computed: list[int] = []
    unfinished: list[int] = []
    results: dict[int, Any] = {}
    summaries: dict[int, dict[str, Any]] = {}
    units = stage.num_units(todo) if todo else None
    counter = {"done": 0, "total": len(todo) if units is None else units}
    start = {"todo": todo, "skipped": skipped, "settings": stage.stored}
    notify(StageEvent("start", None, 0, counter["total"], start))
    with _recorded(invocation, computed):
        for step in todo:
            result = stage.compute(step, StepProgress(notify, step, counter))
            run.unmark(stage.name, step)
            written = stage.write(step, result)
            results[step] = result
            if written is None:  # partial work, kept for a later call to finish
                unfinished.append(step)
                continue
            run.mark_done(stage.name, step, files=written[0], info=written[1])
            computed.append(step)
            stage.finish(computed)
            summaries[step] = result.summary
            if units is None:
                counter["done"] += 1
            done, total = counter["done"], counter["total"]
            notify(StageEvent("step", step, done, total, result.summary))
    for step in skipped:
        summaries[step] = stage.read_summary(step)
    if not todo and skipped:
        stage.finish(computed)
    counts = (counter["done"], counter["total"])
    outcome = _outcome(
        stage, computed, skipped, results, begin, invocation, notify, counts
    )
    summaries = {s: summaries[s] for s in chosen if s in summaries}
    return StageRunResult(**outcome, summaries=summaries, unfinished=tuple(unfinished))


# ------------------------------------------------------------------ grids
class UnitProgress:
    """What a :class:`GridStage`'s :meth:`~GridStage.compute` reports in-process.

    On a Dask worker :meth:`GridStage.compute` gets ``None`` instead: nothing
    reaches the caller before the unit's result.

    Args:
        notify: The callback of :func:`run_grid`.
        unit: The unit being computed.
        counter: ``{"done": units so far, "total": units}``.
    """

    def __init__(
        self, notify: Callable[[StageEvent], None], unit: str, counter: dict[str, int]
    ):
        self._notify = notify
        self._unit = unit
        self._counter = counter

    def phase(self, name: str, step: int | None = None) -> None:
        """Report what the unit is doing (``"adam lr 0.001 seed 0"``) at which step."""
        done, total = self._counter["done"], self._counter["total"]
        values = {"phase": name, "unit": self._unit}
        self._notify(StageEvent("phase", step, done, total, values))


class GridStage:
    """A resumable study over independent units of work, in a study folder.

    A unit is named by a key that is also a file name (letters, digits, ``_``,
    ``.``, ``-``), e.g. ``"adam_lr0.001_seed0"``. A subclass sets :attr:`name`,
    :attr:`command`, :attr:`settings` (the resolved settings object) and
    :attr:`stored` (their JSON dict), and implements :meth:`units`,
    :meth:`compute`, :meth:`write` and :meth:`read_summary`. The stage object is
    sent to Dask workers with each unit, so it must pickle: keep paths and
    settings in it, never models or open files.

    Args:
        folder: The study folder (created if missing). It is written through
            :class:`~curvlab.runs.RunFolder`'s file methods (atomic writes,
            invocation records) but holds no training run itself.

    Attributes:
        folder: The study folder as a :class:`~curvlab.runs.RunFolder` (its
            ``config`` does not exist).
    """

    name: str
    command: str
    settings: Any
    stored: dict[str, Any]

    def __init__(self, folder: str | Path):
        path = Path(folder).expanduser()
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{str(path)!r} exists and is not a folder.")
        self.folder = RunFolder(path)

    def units(self) -> list[str]:
        """The keys of this call's units, in order."""
        raise NotImplementedError

    def unit_settings(self, unit: str) -> dict[str, Any]:
        """The settings that decide a unit's numbers (default :attr:`stored`)."""
        return self.stored

    def prepare(self, todo: Sequence[str]) -> None:
        """Called with the units to compute (maybe none), before the first."""

    def compute(self, unit: str, progress: UnitProgress | None, force: bool) -> Any:
        """Compute one unit (in this process or on a Dask worker).

        Args:
            unit: The unit.
            progress: Report phases with it; ``None`` on a Dask worker.
            force: Recompute from scratch: ignore partial work of the unit.

        Returns:
            The unit's typed result (picklable); it must have a ``summary`` dict.
        """
        raise NotImplementedError

    def write(self, unit: str, result: Any) -> tuple[list[Path], dict[str, Any]]:
        """Store a unit's result atomically, in this process (:meth:`Stage.write`).

        The info kept in the manifest entry must include ``"settings":
        self.unit_settings(unit)``.
        """
        raise NotImplementedError

    def read_summary(self, unit: str) -> dict[str, Any]:
        """Read a stored unit's summary back, as :meth:`compute`'s result holds it."""
        raise NotImplementedError

    # manifest of the units
    def entry_path(self, unit: str) -> Path:
        """A unit's manifest entry file, ``<folder>/manifest/<stage>/<unit>.json``."""
        _check_stage(unit)
        return self.folder.path / "manifest" / self.name / f"{unit}.json"

    def entry(self, unit: str) -> dict[str, Any] | None:
        """A unit's manifest entry, or ``None`` (files not checked).

        The entry is ``{"unit", "files": [{"path", "bytes"}], "info", "completed"}``.
        """
        path = self.entry_path(unit)
        return self.folder.read_json(path) if path.is_file() else None

    def is_done(self, unit: str) -> bool:
        """Whether a unit is stored: it has an entry, its files have their sizes."""
        entry = self.entry(unit)
        if entry is None:
            return False
        for file in entry["files"]:
            path = self.folder.path / file["path"]
            if not path.is_file() or path.stat().st_size != file["bytes"]:
                return False
        return True

    def mark_done(
        self, unit: str, files: Sequence[Path], info: Mapping[str, Any]
    ) -> None:
        """Write a unit's manifest entry, after its files were written atomically."""
        listed = [
            {"path": self.folder.relative(f), "bytes": Path(f).stat().st_size}
            for f in files
        ]
        entry = {"unit": unit, "files": listed, "info": dict(info)}
        self.folder.write_json(self.entry_path(unit), {**entry, "completed": utc_now()})


@dataclass(frozen=True)
class GridRunResult(_CallResult[str]):
    """What one call of :func:`run_grid` did.

    Attributes:
        stage: The stage name.
        settings: The stage's resolved settings object.
        computed: Units computed and stored by this call, in the order they
            finished.
        skipped: Units that were already stored.
        results: The typed results of the computed units, by unit.
        summaries: The summary of every unit of the call, in
            :meth:`GridStage.units` order (read back for the skipped ones).
        seconds: Wall time.
    """


def _split_units(
    stage: GridStage, units: list[str], force: bool
) -> tuple[list[str], list[str]]:
    todo, skipped = [], []
    for unit in units:
        if force or not stage.is_done(unit):
            todo.append(unit)
            continue
        have = (stage.entry(unit) or {}).get("info", {}).get("settings")
        check_settings(
            have or {},
            stage.unit_settings(unit),
            f"{unit} of {stage.name} in {str(stage.folder.path)!r} was computed",
            "pass force=True (--force) to recompute the finished units",
        )
        skipped.append(unit)
    return todo, skipped


def _check_client(client: Any) -> None:
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if not workers:
        raise ValueError("The Dask client has no workers.")
    busy = sorted({w.get("nthreads", 1) for w in workers} - {1})
    if busy:
        raise ValueError(
            "Every Dask worker must run one unit at a time (threads_per_worker=1): "
            "a unit may seed PyTorch's global random generator. Got workers with "
            f"{busy} threads."
        )


def _unit_results(
    stage: GridStage,
    todo: list[str],
    force: bool,
    client: Any,
    notify: Callable[[StageEvent], None],
    counter: dict[str, int],
) -> Iterable[tuple[str, Any]]:
    """Yield ``(unit, result)`` as units finish, here or on the Dask client."""
    if client is None:
        for unit in todo:
            yield unit, stage.compute(unit, UnitProgress(notify, unit, counter), force)
        return
    from distributed import as_completed

    futures = {
        client.submit(stage.compute, unit, None, force, pure=False): unit
        for unit in todo
    }
    try:
        for future in as_completed(list(futures)):
            yield futures[future], future.result()
    finally:
        client.cancel(list(futures))  # interrupted: leave nothing queued


def run_grid(
    stage: GridStage,
    *,
    force: bool = False,
    client: Any = None,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    on_progress: Callable[[StageEvent], None] | None = None,
) -> GridRunResult:
    """Compute and store the units of a grid stage, skipping stored ones.

    After the settings check the call is recorded in the study folder's
    ``invocations/`` (with its outcome at the end: ``finished``, ``failed`` or
    ``interrupted``) and :meth:`GridStage.prepare` runs. Each unit computed
    (here, or on a worker of ``client``) is then stored by this process:
    manifest entry removed, :meth:`GridStage.write` (atomic files), entry
    written. An exception (Ctrl-C, a failing unit) stops the call, cancels the
    queued units and is re-raised; the stored units stay stored.

    Args:
        stage: The grid stage, with its resolved settings.
        force: Recompute stored units too, also those computed with other
            settings.
        client: A ``distributed.Client`` whose workers each run one task at a
            time; ``None`` computes the units one after the other here.
        device: Recorded in the invocation.
        data_dir: Recorded in the invocation.
        on_progress: Called with a :class:`StageEvent`: ``"start"``
            (``values``: ``todo``, ``skipped``, ``settings``), ``"phase"`` (from
            a unit computed in this process; ``values``: ``phase``, ``unit``),
            ``"unit"`` (a unit is stored; ``values`` is its summary with
            ``"unit"``; ``index`` counts stored units) and ``"done"``.

    Returns:
        The units computed and skipped, the typed results of the computed ones
        and every unit's summary.

    Raises:
        SettingsConflictError: If stored units were computed with other
            settings and ``force`` is false.
        ValueError: If a Dask worker runs more than one thread.
    """
    notify = on_progress or (lambda event: None)
    begin = time.perf_counter()
    units = list(stage.units())
    todo, skipped = _split_units(stage, units, force)
    if client is not None and todo:
        _check_client(client)
    invocation = stage.folder.start_invocation(
        stage.command,
        request={"settings": stage.stored, "units": units, "force": force},
        device=str(device),
        data_dir=None if data_dir is None else str(data_dir),
        parallel="in-process" if client is None else "dask",
        versions=package_versions(),
        machine=machine_info(str(device)),
    )
    computed: list[str] = []
    results: dict[str, Any] = {}
    counter = {"done": 0, "total": len(todo)}
    start = {"todo": todo, "skipped": skipped, "settings": stage.stored}
    with _recorded(invocation, computed):
        stage.prepare(todo)
        notify(StageEvent("start", None, 0, len(todo), start))
        for unit, result in _unit_results(stage, todo, force, client, notify, counter):
            stage.entry_path(unit).unlink(missing_ok=True)
            files, info = stage.write(unit, result)
            stage.mark_done(unit, files, info)
            computed.append(unit)
            results[unit] = result
            counter["done"] += 1
            values = {"unit": unit, **result.summary}
            notify(StageEvent("unit", None, counter["done"], len(todo), values))
    summaries = {
        unit: results[unit].summary if unit in results else stage.read_summary(unit)
        for unit in units
    }
    counts = (len(todo), len(todo))
    outcome = _outcome(
        stage, computed, skipped, results, begin, invocation, notify, counts
    )
    return GridRunResult(**outcome, summaries=summaries)

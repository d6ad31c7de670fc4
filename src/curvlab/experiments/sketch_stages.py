r"""SEIGH beyond one machine, as two stages of a run: measure, then solve.

The paper's pipeline for models too large for one process (Fernandez,
Schneider, Mahsereci & Hennig 2025, §4 and the ``11a``/``12a`` scripts of their
repository): at a recorded step, the Hessian of the mean loss over the
class-balanced subset of the overlap
(:func:`~curvlab.experiments.eigenbasis.hessian_at_step`) is measured against
the test matrices of a SEIGH plan into a crash-safe :mod:`curvlab.store` (in
this process, or on a Dask cluster: a laptop, a scheduler address, SLURM), and
the store is then solved out of core (:func:`curvlab.store.solve`: streamed
CholeskyQR2, core problem, eigenvectors on disk, a-posteriori error from the
stored probes). ``curvlab overlap --method distributed`` computes the
magnitude-mask overlap from the solved store block by block.

Stored in the run folder::

    sketch_train/step_00000100/      the measurement store of the train split's
                                     Hessian (store.json, sketch/, probes/) and
                                     its solve (solve/result.json,
                                     solve/eigenvectors/); sketch_test/ likewise

Stage ``sketch_<split>`` is done at a step once every measurement is stored (a
call with some ``indices`` only advances it); stage ``sketch_solve_<split>``
once the solve is written. Both resume: measuring again takes exactly the
missing (or damaged) measurements, and the settings of a finished step are kept
unless ``--force``.
With the same plan and seed the result equals the in-memory
:func:`~curvlab.linalg.sketched_eigh` (tested on a 2-worker ``LocalCluster``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from curvlab import store as measurement_store
from curvlab._checks import check_choice
from curvlab.experiments.eigenbasis import (
    DEFAULT_MAX_COLS,
    SPLITS,
    Eigenbasis,
    certificate_record,
    hessian_at_step,
    resolve_eigenbasis_settings,
)
from curvlab.linalg import sketch_plan
from curvlab.runs import MissingStepError, RunFolder
from curvlab.runs.folder import step_key
from curvlab.runs.stage import (
    SettingsConflictError,
    Stage,
    StepProgress,
    pick_setting,
    settings_differences,
    stored_settings,
)

__all__ = [
    "MeasureStage",
    "SketchSettings",
    "SolveStage",
    "StepHessian",
    "measure_stage",
    "sketch_folder",
    "solve_stage",
    "stored_eigenbasis",
]


def measure_stage(split: str = "train") -> str:
    """The measurement stage of a split: ``sketch_<split>``.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        The stage name.

    Raises:
        ValueError: For another split.
    """
    return f"sketch_{check_choice('split', split, SPLITS)}"


def solve_stage(split: str = "train") -> str:
    """The solve stage of a split: ``sketch_solve_<split>``.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        The stage name.

    Raises:
        ValueError: For another split.
    """
    return f"sketch_solve_{check_choice('split', split, SPLITS)}"


def sketch_folder(run: RunFolder, step: int, split: str = "train") -> Path:
    """The folder of a step's measurement store: ``RUN/sketch_<split>/step_XXXXXXXX``.

    Args:
        run: The run folder.
        step: The step.
        split: The Hessian's split.

    Returns:
        The path (it may not exist yet).
    """
    return run.path / measure_stage(split) / step_key(step)


@dataclass(frozen=True)
class SketchSettings:
    """What a distributed sketch measures; ``None`` means "not given".

    Attributes:
        split: ``"train"`` (default) or ``"test"``: the Hessian's split.
        num_outer: ``K`` (default 5% of ``D``, at most 1000).
        num_inner: ``s`` Hessian-vector products, ``K <= s <= D`` (``min(2K, D)``).
        samples_per_class: Hessian samples per class (50).
        test_matrix: ``"ssrft"`` (default), ``"gaussian"`` or ``"rademacher"``.
        num_probes: Gaussian probes of the a-posteriori error (30).
        seed: Seed of the test matrices and probes (the run's).
        dtype: ``"float32"`` or ``"float64"`` (the run's).
    """

    split: str | None = None
    num_outer: int | None = None
    num_inner: int | None = None
    samples_per_class: int | None = None
    test_matrix: str | None = None
    num_probes: int | None = None
    seed: int | None = None
    dtype: str | None = None

    def stored(self) -> dict[str, Any]:
        """The settings as kept in the manifest (all of them decide the numbers)."""
        return dataclasses.asdict(self)


def resolve_sketch_settings(
    run: RunFolder, requested: SketchSettings | None, num_params: int
) -> SketchSettings:
    """Requested, else stored (stage ``sketch``), else default settings, checked.

    Args:
        run: The run folder.
        requested: The settings asked for.
        num_params: ``D``.

    Returns:
        Every field set.

    Raises:
        ValueError: If a value is out of range.
        TypeError: If a value has the wrong type.
    """
    requested = requested or SketchSettings()
    split = check_choice("split", requested.split or "train", SPLITS)
    stored = stored_settings(run, measure_stage(split))

    def pick(name: str, default: Any) -> Any:
        return pick_setting(name, getattr(requested, name), stored, default)

    shared = resolve_eigenbasis_settings(
        pick, num_params, run, sketch=True, max_num_outer=num_params - 1
    )
    return SketchSettings(split=split, **shared)


@dataclass(frozen=True)
class StepHessian:
    """Builds the Hessian of a recorded step; picklable, for Dask workers.

    :func:`curvlab.store.measure` calls it once per worker process (a worker
    plugin), so every worker loads the run's problem and the step's parameters
    itself; nothing large travels over the network.

    Attributes:
        run: Path of the run folder (seen by the workers).
        step: The recorded step.
        settings: Resolved :class:`SketchSettings`.
        device: ``"cpu"``, ``"cuda"`` (a worker of a ``LocalCluster`` takes the
            device of its number) or ``"cuda:<i>"``.
        data_dir: Data folder of file-based problems.
        max_cols: Hessian columns per pass over the data.
    """

    run: str
    step: int
    settings: SketchSettings
    device: str = "cpu"
    data_dir: str | None = None
    max_cols: int | None = DEFAULT_MAX_COLS

    def __call__(self):
        """Build the operator on this process's device.

        Returns:
            The :class:`~curvlab.operators.HessianOperator`.
        """
        device = self.device
        if device == "cuda" and torch.cuda.device_count() > 1:
            with_number = _worker_number()
            if with_number is not None:
                device = f"cuda:{with_number % torch.cuda.device_count()}"
        run = RunFolder.open(self.run)
        problem = run.problem(device=device, data_dir=self.data_dir)
        op, _, _ = hessian_at_step(
            run,
            self.step,
            problem,
            self.settings.split,
            self.settings.samples_per_class,
            dtype=self.settings.dtype,
            max_cols=self.max_cols,
        )
        return op


def _worker_number() -> int | None:
    """The number of this Dask worker (``3``, or ``SLURMCluster-0-3``), if any."""
    try:
        from distributed import get_worker

        return int(str(get_worker().name).rsplit("-", 1)[-1])
    except (ImportError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class StepMeasurement:
    """What :class:`MeasureStage` did at one step.

    Attributes:
        store: The measurement store.
        measured: Sketch measurements taken by this call.
        missing: Sketch measurements still missing.
        probes_missing: Probes still missing.
        summary: JSON-ready summary.
    """

    store: Any
    measured: list[int]
    missing: list[int]
    probes_missing: list[int]
    summary: dict[str, Any]


class MeasureStage(Stage):
    """Measure the SEIGH sketch of recorded steps into their stores.

    Args:
        run: The run folder.
        settings: What to measure; resolved once here.
        num_params: ``D`` of the run's problem.
        client: A ``distributed.Client``, or ``None`` for this process.
        indices: Sketch indices to measure (default: all, and the probes).
        device: Device of the products on the workers.
        data_dir: Data folder of file-based problems.
        max_cols: Hessian columns per pass over the data.
        block_size: Measurements per Dask task (default: the store's choice).
    """

    command = "measure"

    def __init__(
        self,
        run: RunFolder,
        settings: SketchSettings | None,
        num_params: int,
        *,
        client=None,
        indices: Iterable[int] | None = None,
        device: str = "cpu",
        data_dir: str | Path | None = None,
        max_cols: int | None = DEFAULT_MAX_COLS,
        block_size: int | None = None,
    ):
        super().__init__(run)
        self.settings = resolve_sketch_settings(run, settings, num_params)
        self.stored = self.settings.stored()
        self.name = measure_stage(self.settings.split)
        self.num_params = num_params
        self.client = client
        self.indices = None if indices is None else sorted(set(indices))
        self.device = str(device)
        self.data_dir = None if data_dir is None else str(data_dir)
        self.max_cols = max_cols
        self.block_size = block_size

    def num_units(self, todo) -> int:
        """Measurements (sketch columns and probes) of the steps to do."""
        return (self.settings.num_inner + self.settings.num_probes) * len(todo)

    def plan(self):
        """The SEIGH plan of these settings.

        Returns:
            A :class:`~curvlab.linalg.SketchPlan` for ``(D, D)``.
        """
        s = self.settings
        dtype = getattr(torch, s.dtype)
        shape = ((self.num_params, self.num_params), dtype, torch.device("cpu"))
        return sketch_plan(
            shape, s.num_outer, s.num_inner, test_matrix=s.test_matrix, seed=s.seed
        )

    def compute(self, step: int, progress: StepProgress) -> StepMeasurement:
        """Create (or reopen) the step's store and take its missing measurements."""
        progress.phase("measure")
        start = time.perf_counter()
        store = measurement_store.create(
            sketch_folder(self.run, step, self.settings.split),
            self.plan(),
            num_probes=self.settings.num_probes,
        )
        held = store.status()
        progress.advance("measurement", len(held.done) + len(held.probes_done))
        factory = StepHessian(
            str(self.run.path),
            step,
            self.settings,
            self.device,
            self.data_dir,
            self.max_cols,
        )
        outcome = measurement_store.measure(
            store,
            factory,
            client=self.client,
            indices=self.indices,
            block_size=self.block_size,
            progress=lambda n: progress.advance("measurement", n),
        )
        summary = {
            "step": step,
            "settings": self.stored,
            "num_params": self.num_params,
            "measured": len(outcome.measured),
            "missing": len(outcome.missing),
            "probes_missing": len(outcome.probes_missing),
            "rejected": [str(problem.file) for problem in outcome.rejected],
            "seconds": time.perf_counter() - start,
        }
        return StepMeasurement(
            store, outcome.measured, outcome.missing, outcome.probes_missing, summary
        )

    def write(self, step: int, result: StepMeasurement):
        """Mark the step done once every measurement and probe is stored."""
        if result.missing or result.probes_missing:
            return None
        manifest = result.store.path / "store.json"
        return [manifest], {k: v for k, v in result.summary.items() if k != "step"}

    def read_summary(self, step: int) -> dict[str, Any]:
        """The summary kept in the step's manifest entry."""
        info = dict((self.run.entry(self.name, step) or {}).get("info", {}))
        return {"step": step, **info}


@dataclass(frozen=True)
class StepSolve:
    """What :class:`SolveStage` computed at one step.

    Attributes:
        result: The :class:`~curvlab.store.StoredSketchedEigh`.
        summary: JSON-ready summary.
    """

    result: Any
    summary: dict[str, Any]


class SolveStage(Stage):
    """Solve the measured stores of recorded steps out of core.

    Args:
        run: The run folder.
        split: The Hessian's split whose sketches are solved.
        client: A ``distributed.Client`` for the passes over row blocks (the
            workers must see the run folder), or ``None``.
    """

    command = "solve"

    def __init__(self, run: RunFolder, split: str = "train", *, client=None):
        super().__init__(run)
        self.name = solve_stage(split)
        self.split = split
        self.stored = stored_settings(run, measure_stage(split))
        self.settings = SketchSettings(**self.stored) if self.stored else None
        self.client = client

    def compute(self, step: int, progress: StepProgress) -> StepSolve:
        """Solve the step's store; refuses one that is not completely measured.

        Raises:
            MissingStepError: If the step's sketch is not completely measured.
        """
        if not self.run.is_done(measure_stage(self.split), step):
            raise MissingStepError(
                f"The {self.split} sketch of step {step} in {str(self.run.path)!r} "
                f"is not completely measured. Run `curvlab measure --run "
                f"{self.run.path} --step {step} --split {self.split}` first."
            )
        progress.phase("solve")
        store = measurement_store.open(sketch_folder(self.run, step, self.split))
        result = measurement_store.solve(store, client=self.client, progress=False)
        stages = {k: stop - start for k, (start, stop) in result.stages.items()}
        error = result.a_posteriori
        summary = {
            "step": step,
            "settings": self.stored,
            "eigenvalues": result.eigenvalues.double().tolist(),
            "relative_error": None if error is None else error.relative_error,
            "seconds": stages,
        }
        return StepSolve(result, summary)

    def write(self, step: int, result: StepSolve):
        """The solve's ``result.json`` is its last file written: list it."""
        path = result.result.path / "result.json"
        return [path], {k: v for k, v in result.summary.items() if k != "step"}

    def read_summary(self, step: int) -> dict[str, Any]:
        """The summary kept in the step's manifest entry."""
        info = dict((self.run.entry(self.name, step) or {}).get("info", {}))
        return {"step": step, **info}


def stored_eigenbasis(run: RunFolder, step: int, settings: Any) -> Eigenbasis:
    """The eigenbasis of a step's solved store, its eigenvectors left on disk.

    Args:
        run: The run folder.
        step: A step whose stage ``sketch_solve`` is done.
        settings: Settings with the sketch fields (``split``, ``num_outer``,
            ``num_inner``, ``samples_per_class``, ``test_matrix``,
            ``num_probes``, ``seed``, ``dtype``); they must be the store's.

    Returns:
        ``method="distributed"``; ``eigenvectors`` is the
        :class:`~curvlab.store.StoredEigenvectors` (``.shape``, ``.read``,
        block by block), the a-posteriori record from the stored probes.

    Raises:
        MissingStepError: If the step's store is not solved.
        SettingsConflictError: If the store was measured with other settings.
    """
    split = settings.split
    if not run.is_done(solve_stage(split), step):
        raise MissingStepError(
            f"Step {step} of {str(run.path)!r} has no solved {split} sketch. Run "
            f"`curvlab measure --run {run.path} --step {step} --split {split}` and "
            f"`curvlab solve --run {run.path} --step {step} --split {split}` (or "
            "`curvlab overlap --distributed`)."
        )
    entry = run.entry(measure_stage(split), step) or {}
    have = entry.get("info", {}).get("settings", {})
    wanted = {name: getattr(settings, name) for name in SketchSettings().stored()}
    differences = settings_differences(have, wanted)
    if differences:
        listed = ", ".join(f"{n}: {a!r} -> {b!r}" for n, a, b in differences)
        raise SettingsConflictError(
            f"The sketch of step {step} was measured with other settings (stored "
            f"-> requested: {listed}). Request the stored values, or measure "
            "again with --force.",
            differences,
        )
    start = time.perf_counter()
    result = measurement_store.load_result(sketch_folder(run, step, split) / "solve")
    cert = result.a_posteriori
    return Eigenbasis(
        method="distributed",
        eigenvalues=result.eigenvalues,
        eigenvectors=result.eigenvectors,
        a_posteriori=certificate_record(cert),
        num_matvecs={
            "eigendecomposition": result.plan.num_inner,
            "a_posteriori": cert.num_probes,
        },
        seconds={"load_store": time.perf_counter() - start},
    )

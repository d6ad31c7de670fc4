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
magnitude-mask overlap from the solved store block by block: the overlap finds
its eigenbasis by method here (:func:`find_eigenbasis`), and its mask overlaps
from eigenvectors in memory or on disk (:func:`mask_overlap_curve`).

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

import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from curvlab import store as measurement_store
from curvlab.experiments.eigenbasis import (
    DEFAULT_MAX_COLS,
    Eigenbasis,
    EigenbasisSettings,
    certified_eigenbasis,
    exact_eigenbasis,
    hessian_at_step,
    resolve_eigenbasis_settings,
    sketch_of,
    split_stage,
)
from curvlab.linalg import sketch_plan
from curvlab.runs import MissingStepError, RunFolder
from curvlab.runs.folder import step_key
from curvlab.runs.stage import Stage, StepProgress, check_settings, stored_settings
from curvlab.subspace import OverlapCurve, overlap_curve

__all__ = [
    "MeasureStage",
    "SketchSettings",
    "SolveStage",
    "StepHessian",
    "find_eigenbasis",
    "mask_overlap_curve",
    "measure_stage",
    "measured_settings",
    "sketch_folder",
    "solve_stage",
    "stored_eigenbasis",
]


def measure_stage(split: str = "train") -> str:
    """The measurement stage of a split, ``sketch_<split>`` (:func:`split_stage`)."""
    return split_stage("sketch", split)


def solve_stage(split: str = "train") -> str:
    """The solve stage of a split, ``sketch_solve_<split>`` (:func:`split_stage`)."""
    return split_stage("sketch_solve", split)


def sketch_folder(run: RunFolder, step: int, split: str = "train") -> Path:
    """A step's measurement store folder: ``RUN/sketch_<split>/step_XXXXXXXX``."""
    return run.path / measure_stage(split) / step_key(step)


@dataclass(frozen=True)
class SketchSettings(EigenbasisSettings):
    """What a distributed sketch measures; ``None`` means "not given".

    The fields of :class:`~curvlab.experiments.eigenbasis.EigenbasisSettings`,
    all of them stored.
    """


def measured_settings(run: RunFolder, split: str) -> dict[str, Any]:
    """The settings the split's sketches were measured with (``{}``: none yet)."""
    return stored_settings(run, measure_stage(split))


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
        """The :class:`~curvlab.operators.HessianOperator` on this process's device."""
        device = self.device
        if device == "cuda" and torch.cuda.device_count() > 1:
            # a Dask worker number, its name ("3") or its tail ("SLURMCluster-0-3")
            with suppress(ImportError, ValueError, TypeError):
                from distributed import get_worker

                number = int(str(get_worker().name).rsplit("-", 1)[-1])
                device = f"cuda:{number % torch.cuda.device_count()}"
        run = RunFolder.open(self.run)
        problem = run.problem(device=device, data_dir=self.data_dir)
        op, _, _ = hessian_at_step(
            run, self.step, problem, self.settings, max_cols=self.max_cols
        )
        return op


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


class _StoreStage(Stage):
    """A stage that writes into the steps' measurement stores.

    The manifest entry of a step lists the store's last file written
    (:meth:`last_file`) and keeps the step's summary.
    """

    def last_file(self, result: Any) -> Path | None:
        """The last file the step wrote; ``None`` while the step is unfinished."""
        raise NotImplementedError

    def write(self, step: int, result: Any):
        """Mark the step done (unless unfinished); the manifest keeps the summary."""
        path = self.last_file(result)
        if path is None:
            return None
        return [path], {k: v for k, v in result.summary.items() if k != "step"}

    def read_summary(self, step: int) -> dict[str, Any]:
        """The summary kept in the step's manifest entry."""
        info = dict((self.run.entry(self.name, step) or {}).get("info", {}))
        return {"step": step, **info}


class MeasureStage(_StoreStage):
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
        requested = settings or SketchSettings()
        self.settings = resolve_eigenbasis_settings(
            run, "sketch", requested, num_params=num_params
        )
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
        """The ``(D, D)`` :class:`~curvlab.linalg.SketchPlan` of these settings."""
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
        options = (self.settings, self.device, self.data_dir, self.max_cols)
        factory = StepHessian(str(self.run.path), step, *options)
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

    def last_file(self, result: StepMeasurement) -> Path | None:
        """The store's manifest, once every measurement and probe is stored."""
        if result.missing or result.probes_missing:
            return None
        return result.store.path / "store.json"


@dataclass(frozen=True)
class StepSolve:
    """What :class:`SolveStage` computed at one step.

    Attributes:
        result: The :class:`~curvlab.store.StoredSketchedEigh`.
        summary: JSON-ready summary.
    """

    result: Any
    summary: dict[str, Any]


class SolveStage(_StoreStage):
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

    def last_file(self, result: StepSolve) -> Path:
        """The solve's ``result.json``, its last file written."""
        return result.result.path / "result.json"


def stored_eigenbasis(
    run: RunFolder, step: int, settings: EigenbasisSettings
) -> Eigenbasis:
    """The eigenbasis of a step's solved store, its eigenvectors left on disk.

    Args:
        run: The run folder.
        step: A step whose stage ``sketch_solve_<split>`` is done.
        settings: Resolved settings with the sketch fields; they must be the
            store's.

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
    check_settings(
        entry.get("info", {}).get("settings") or {},
        {name: getattr(settings, name) for name in SketchSettings().stored()},
        f"The sketch of step {step} was measured",
        "measure again with --force",
    )
    start = time.perf_counter()
    result = measurement_store.load_result(sketch_folder(run, step, split) / "solve")
    cert = result.a_posteriori
    seconds = {"load_store": time.perf_counter() - start}
    num_inner = result.plan.num_inner
    return certified_eigenbasis("distributed", result, cert, num_inner, seconds)


def find_eigenbasis(
    run: RunFolder,
    step: int,
    op,
    settings: Any,
    phase: Callable[[str], None],
) -> Eigenbasis:
    """The top eigenbasis of a step's Hessian ``op`` by the overlap's ``method``.

    ``"exact"``: dense ``eigh`` (phase ``"eigh"``); ``"sketch"``: SEIGH in
    memory (``"sketch"``); ``"distributed"``: the step's solved store
    (``"load"``, :func:`stored_eigenbasis`).

    Raises:
        MissingStepError: If the distributed step's store is not solved.
        SettingsConflictError: If it was measured with other settings.
    """
    if settings.method == "distributed":
        phase("load")
        return stored_eigenbasis(run, step, settings)
    if settings.method == "exact":
        phase("eigh")
        max_dim = settings.max_exact_dim or op.shape[0]
        return exact_eigenbasis(op, settings.num_outer, max_dim=max_dim)
    phase("sketch")
    return sketch_of(op, settings)


def mask_overlap_curve(
    params: Tensor, U, ks: Iterable[int], *, num_random: int, seed: int
) -> OverlapCurve:
    """Overlaps of magnitude, best and random masks with ``(D, K)`` eigenvectors.

    ``U`` is a tensor (:func:`curvlab.subspace.overlap_curve`) or a store's
    :class:`~curvlab.store.StoredEigenvectors`, read block by block
    (:func:`curvlab.store.overlap_curve`, the same curves).
    """
    curve_of = (
        overlap_curve if isinstance(U, Tensor) else measurement_store.overlap_curve
    )
    params = params.to(device=U.device)
    return curve_of(params, U, ks, best=True, num_random=num_random, seed=seed)

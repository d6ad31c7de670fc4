r"""Overlap of magnitude masks with the top Hessian eigenspace over training.

The "Apples and Oranges" measurement (Fernandez, Schneider, Mahsereci & Hennig
2025; reference notes ``papers.md`` §1.3-§1.6) on a run folder: at each recorded
step ``t`` with parameters :math:`\theta_t \in \mathbb R^D`,

1. the Hessian :math:`H_t` of the mean loss over a fixed, **class-balanced
   subset** of the train or test split (``samples_per_class`` examples of every
   class, lowest indices first, :func:`~curvlab.problems.balanced_subset`; the
   split itself is the run's seeded split, so the subset is a function of the
   run), model in eval mode;
2. its ``K = num_outer`` eigenpairs of largest :math:`|\lambda|`,
   :math:`H_t \approx Q_K \Lambda_K Q_K^\top`, either **exactly** (the dense
   matrix from ``D`` Hessian-vector products and a symmetric ``eigh`` in
   float64, for ``D <= max_exact_dim``) or by **SEIGH**
   (:func:`~curvlab.linalg.sketched_eigh`, ``num_inner`` products, paper Alg. 2);
3. its **a-posteriori error** :math:`\|H_t - Q_K \Lambda_K Q_K^\top\|_F`:
   exact from the full spectrum for the dense method; for the sketch, the
   Gaussian-probe estimate of Tropp, Yurtsever, Udell & Cevher (2019, §6) with its
   probability bounds and scree bounds (:func:`~curvlab.linalg.a_posteriori_error`);
4. for every ``k = 1..K`` the overlap of the magnitude mask :math:`S_k` (the
   ``k`` largest :math:`|\theta_{t,i}|`) with the top-``k`` eigenspace,

   .. math::
       \operatorname{ov}(k) = \frac1k \|Q_{S_k, :k}\|_F^2,
       \qquad \mathbb E_{\text{random } S}\,\operatorname{ov}(k) = \frac kD,

   next to the best mask (the ``k`` largest row norms of :math:`Q_{:, :k}`, the
   largest overlap any mask reaches), the mean of ``num_random`` uniformly random
   masks and the chance level :math:`k/D` (:func:`~curvlab.subspace.overlap_curve`).

**Stored in the run folder**, each file written atomically and the step marked
done in the manifest only once both files are complete (stage
``overlap_<split>``, e.g. ``overlap_train``)::

    overlap_train/step_00000100.csv   one row per k: step, k, eigenvalue (the
                                      k-th by |λ|), magnitude, best,
                                      random_mean, random_std, random_min,
                                      random_max, chance, ratio, best_ratio
    overlap_train/step_00000100.json  the step's summary (:func:`overlap_at_step`)
    overlap_train/all.csv             the rows of every finished step
    overlap_train/summary.csv         one row per finished step (scalars)

Running again skips the finished steps. Options that are not given are taken
from the stage's stored settings, so ``overlap_run(run, OverlapSettings())``
resumes; options that change the numbers of finished steps are refused
(:class:`OverlapSettingsError`) unless ``force=True``, which recomputes them.

**Randomness** derives from ``seed`` (default: the run's seed): the sketch's test
matrices and the a-posteriori probes are the streams ``(seed, role)`` of
:mod:`curvlab.linalg` (the same test matrix at every step, as in the paper), the
random masks of step ``t`` come from a generator seeded with
``SeedSequence([seed, t])``. The same run, settings and device give the same
numbers.

Library functions print nothing; progress goes to an optional callback
(:class:`OverlapEvent`). :mod:`curvlab.experiments.overlap_plots` draws the
stored results, :mod:`curvlab.experiments.exhaustive` checks the sketch against
the exact eigendecomposition.

References:
    - Fernandez, Schneider, Mahsereci & Hennig (2025). Connecting parameter
      magnitudes and Hessian eigenspaces at scale using sketched methods.
      TMLR; arXiv 2504.14701. (First version: "What apples tell about oranges:
      connecting pruning masks and Hessian eigenspaces", ICLR 2024 submission.)
    - Tropp, Yurtsever, Udell & Cevher (2019). Streaming low-rank matrix
      approximation with an application to scientific simulation. SIAM J. Sci.
      Comput. 41(4) (arXiv 1902.08651), §6 (a-posteriori error, scree bounds).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from curvlab._checks import check_choice, check_int
from curvlab._seeds import derive_seed
from curvlab.experiments.eigenbasis import (
    DEFAULT_MAX_COLS,
    DEFAULT_MAX_EXACT_DIM,
    SPLITS,
    Eigenbasis,
    HessianStage,
    exact_eigenbasis,
    hessian_at_step,
    resolve_eigenbasis_settings,
    sketch_of,
)
from curvlab.experiments.sketch_stages import measure_stage, stored_eigenbasis
from curvlab.problems import Problem
from curvlab.runs import RunFolder
from curvlab.runs.stage import (
    SettingsConflictError,
    StageEvent,
    StageRunResult,
    pick_setting,
    read_table_stage,
    stored_settings,
)
from curvlab.store import overlap_curve as store_overlap_curve
from curvlab.subspace import OverlapCurve, overlap_curve

__all__ = [
    "METHODS",
    "OverlapEvent",
    "OverlapRunResult",
    "OverlapSettings",
    "OverlapSettingsError",
    "StepOverlap",
    "OverlapStage",
    "curve_rows",
    "load_overlap",
    "mask_seed",
    "overlap_at_step",
    "overlap_run",
    "overlap_stage",
    "resolve_overlap_settings",
]

#: Ways to find the eigenbasis: ``"auto"`` is exact up to ``max_exact_dim``.
METHODS = ("exact", "sketch", "auto", "distributed")

#: Default number of random masks per step (the paper's mnist_mini study).
DEFAULT_NUM_RANDOM = 10

#: Columns of the per-step tables (one row per mask size k).
_CURVE_COLUMNS = (
    "step",
    "k",
    "eigenvalue",
    "magnitude",
    "best",
    "random_mean",
    "random_std",
    "random_min",
    "random_max",
    "chance",
    "ratio",
    "best_ratio",
)

#: The stage framework's settings conflict, progress event and result types,
#: under the names this module has always exported.
OverlapSettingsError = SettingsConflictError
OverlapEvent = StageEvent
OverlapRunResult = StageRunResult


@dataclass(frozen=True)
class OverlapSettings:
    """What an overlap measurement computes; ``None`` means "not given".

    Unset fields are filled by :func:`resolve_overlap_settings`: from the stored
    settings of the stage when it has finished steps, else from the defaults.

    Attributes:
        split: ``"train"`` or ``"test"``: the split the Hessian is taken on.
        method: ``"exact"``, ``"sketch"`` or ``"auto"`` (exact when
            ``D <= max_exact_dim``), resolved to ``"exact"`` or ``"sketch"``; or
            ``"distributed"``: the step's solved measurement store
            (:mod:`curvlab.experiments.sketch_stages`), whose sketch settings
            are then the defaults.
        num_outer: ``K``: eigenpairs and largest mask size; default
            :func:`default_num_outer` (5% of ``D``, at most 1000, the paper's
            budgets).
        num_inner: Sketch only: products ``s``, ``K <= s <= D``; default
            ``min(2K, D)``.
        samples_per_class: Hessian samples per class (regression: in total);
            default 50 (500 for 10 classes, as the paper).
        num_random: Random masks per step; default 10.
        test_matrix: Sketch only: ``"ssrft"`` (default), ``"gaussian"`` or
            ``"rademacher"``.
        num_probes: Sketch only: Gaussian probes of the a-posteriori error
            (default 30).
        seed: Seed of sketch, probes and random masks; default the run's seed.
        dtype: ``"float32"`` or ``"float64"``: dtype of model, data and Hessian
            products; default the run's dtype.
        max_exact_dim: Largest ``D`` of the exact method (``"auto"`` picks the
            sketch above it; ``"exact"`` refuses it). Not stored: it only decides.
    """

    split: str | None = None
    method: str | None = None
    num_outer: int | None = None
    num_inner: int | None = None
    samples_per_class: int | None = None
    num_random: int | None = None
    test_matrix: str | None = None
    num_probes: int | None = None
    seed: int | None = None
    dtype: str | None = None
    max_exact_dim: int | None = None

    def stored(self) -> dict[str, Any]:
        """Return the fields that decide the numbers (kept in the manifest).

        Returns:
            Every field except ``max_exact_dim``.
        """
        values = dataclasses.asdict(self)
        values.pop("max_exact_dim")
        return values


def overlap_stage(split: str) -> str:
    """Return the stage name of the overlap on a split.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        ``"overlap_<split>"``.

    Raises:
        ValueError: For another split.
    """
    return f"overlap_{check_choice('split', split, SPLITS)}"


def resolve_overlap_settings(
    run: RunFolder,
    requested: OverlapSettings | None = None,
    *,
    num_params: int | None = None,
    stored: Mapping[str, Any] | None = None,
) -> OverlapSettings:
    """Fill the unset fields of ``requested`` and validate the result.

    Unset fields come from ``stored`` (default: the settings of the stage's
    finished steps), then from the defaults (:class:`OverlapSettings`).

    Args:
        run: The run folder (its seed, dtype and problem size).
        requested: The settings asked for; ``None`` for none.
        num_params: ``D`` (default: built from the run's problem).
        stored: Stored settings to resume with; default those of the stage.

    Returns:
        Settings with every field set; ``method`` is ``"exact"`` or ``"sketch"``;
        the sketch-only fields are ``None`` for the exact method.

    Raises:
        ValueError: If a value is out of range (e.g. ``num_outer >= D`` for the
            sketch, or ``method="exact"`` with ``D > max_exact_dim``).
        TypeError: If a value has the wrong type.
    """
    requested = requested or OverlapSettings()
    split = check_choice("split", requested.split or "train", SPLITS)
    stored = dict(
        stored_settings(run, overlap_stage(split)) if stored is None else stored
    )
    dim = run.problem().num_params if num_params is None else num_params

    def pick(name: str, default: Any) -> Any:
        return pick_setting(name, getattr(requested, name), stored, default)

    max_exact_dim = requested.max_exact_dim or DEFAULT_MAX_EXACT_DIM
    check_int("max_exact_dim", max_exact_dim, 1)
    method = check_choice("method", pick("method", "auto"), METHODS)
    if method == "auto":
        method = "exact" if dim <= max_exact_dim else "sketch"
    if method == "exact" and dim > max_exact_dim:
        raise ValueError(
            f"The exact method materialises the {dim}x{dim} Hessian, above "
            f"max_exact_dim={max_exact_dim}. Use method='sketch' (or 'auto'), or "
            "raise max_exact_dim deliberately."
        )
    if method == "distributed":  # the measured sketch's settings come next
        stored = {**stored_settings(run, measure_stage(split)), **stored}
    shared = resolve_eigenbasis_settings(
        pick,
        dim,
        run,
        sketch=method != "exact",
        max_num_outer=dim if method == "exact" else dim - 1,
    )
    num_random = check_int("num_random", pick("num_random", DEFAULT_NUM_RANDOM), 0)
    return OverlapSettings(
        split=split,
        method=method,
        num_random=num_random,
        max_exact_dim=max_exact_dim,
        **shared,
    )


def mask_seed(seed: int, step: int) -> int:
    """Seed of the random masks of a step, ``SeedSequence([seed, step])``.

    Args:
        seed: The measurement's seed.
        step: The training step.

    Returns:
        A 63-bit seed.
    """
    return derive_seed(seed, step, bits=63)


@dataclass(frozen=True)
class StepOverlap:
    """The overlap measurement of one step.

    Attributes:
        step: The training step.
        settings: The resolved settings.
        basis: The eigenbasis and its diagnostics.
        curve: Overlap of magnitude, best and random masks for ``k = 1..K``.
        rows: The step's table, one dict per ``k`` (columns in the module
            docstring), as stored.
        summary: The step's JSON summary, as stored.
    """

    step: int
    settings: OverlapSettings
    basis: Eigenbasis
    curve: OverlapCurve
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def curve_rows(
    step: int, curve: OverlapCurve, eigenvalues: Tensor | None = None
) -> list[dict[str, Any]]:
    """Turn an overlap curve into table rows, one per ``k``.

    Args:
        step: The training step.
        curve: From :func:`~curvlab.subspace.overlap_curve`.
        eigenvalues: ``(K,)`` eigenvalues by descending magnitude (``K >= max
            k``), or ``None``.

    Returns:
        One dict per ``k`` with the columns of the module docstring.
    """
    random = curve.random
    has_random = random.shape[0] > 0
    values = None if eigenvalues is None else eigenvalues.detach().cpu().tolist()
    rows = []
    for j, k in enumerate(curve.ks.tolist()):
        chance, column = float(curve.chance[j]), random[:, j]
        magnitude, best = float(curve.magnitude[j]), float(curve.best[j])
        rows.append(
            {
                "step": step,
                "k": k,
                "eigenvalue": None if values is None else float(values[k - 1]),
                "magnitude": magnitude,
                "best": best,
                "random_mean": float(curve.random_mean[j]),
                "random_std": float(column.std(correction=0)) if has_random else None,
                "random_min": float(column.min()) if has_random else None,
                "random_max": float(column.max()) if has_random else None,
                "chance": chance,
                "ratio": magnitude / chance,
                "best_ratio": best / chance,
            }
        )
    return rows


def _summary(
    run: RunFolder,
    step: int,
    settings: OverlapSettings,
    basis: Eigenbasis,
    curve: OverlapCurve,
    indices: Tensor,
    seconds: dict[str, float],
) -> dict[str, Any]:
    dim = basis.eigenvectors.shape[0]
    K = settings.num_outer
    last = len(curve.ks) - 1
    matvecs = {**basis.num_matvecs, "total": sum(basis.num_matvecs.values())}
    return {
        "stage": overlap_stage(settings.split),
        "step": step,
        "problem": run.config.problem,
        "num_params": dim,
        "settings": settings.stored(),
        "hessian": {
            "loss": "mean over the subset",
            "split": settings.split,
            "num_samples": int(indices.numel()),
            "samples_per_class": settings.samples_per_class,
            "indices": indices.tolist(),
        },
        "eigenvalues": basis.eigenvalues.detach().cpu().tolist(),
        "trace": basis.trace,
        "frobenius_norm": math.sqrt(basis.a_posteriori["op_norm_sq"]),
        "fraction_negative": basis.fraction_negative,
        "fraction_negative_beyond_rounding": basis.fraction_negative_beyond_rounding,
        "negative_tolerance": basis.negative_tolerance,
        "a_posteriori": basis.a_posteriori,
        "overlap_at_num_outer": {
            "k": K,
            "magnitude": float(curve.magnitude[last]),
            "best": float(curve.best[last]),
            "random_mean": float(curve.random_mean[last]),
            "chance": float(curve.chance[last]),
            "ratio": float(curve.ratio[last]),
        },
        "random_mask_seed": mask_seed(settings.seed, step),
        "num_matvecs": matvecs,
        "seconds": seconds,
    }


def overlap_at_step(
    run: RunFolder,
    step: int,
    settings: OverlapSettings | None = None,
    *,
    problem: Problem | None = None,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    max_cols: int | None = DEFAULT_MAX_COLS,
    on_phase: Callable[[str], None] | None = None,
) -> StepOverlap:
    r"""Measure the mask/eigenspace overlap at one step (nothing is stored).

    Args:
        run: The run folder.
        step: A recorded step.
        settings: What to compute; unset fields are resolved by
            :func:`resolve_overlap_settings` (from the stage's stored settings,
            then the defaults).
        problem: The run's problem on ``device`` (built when ``None``); its
            model is overwritten with the step's parameters.
        device: Device of model, data and products.
        data_dir: Data folder of file-based problems.
        max_cols: Hessian columns per pass over the data (memory).
        on_phase: Called with ``"hessian"`` (loading the step), ``"eigh"``
            (dense Hessian and eigh) or ``"sketch"`` (SEIGH and probes), and
            ``"overlap"`` as the measurement proceeds.

    Returns:
        The eigenbasis, the overlap curve, the table rows and the summary
        (``settings``, ``hessian`` subset, ``eigenvalues``, ``trace``,
        ``frobenius_norm``, ``fraction_negative``, ``a_posteriori``,
        ``overlap_at_num_outer``, ``num_matvecs``, ``seconds``).

    Raises:
        MissingStepError: If the step is not recorded.
        ValueError: If the settings are invalid or the subset cannot be drawn.
    """
    if problem is None:
        problem = run.problem(device=device, data_dir=data_dir)
    settings = resolve_overlap_settings(run, settings, num_params=problem.num_params)
    return _measure(run, step, settings, problem, max_cols, on_phase)


def _measure(
    run: RunFolder,
    step: int,
    settings: OverlapSettings,
    problem: Problem,
    max_cols: int | None,
    on_phase: Callable[[str], None] | None,
) -> StepOverlap:
    """:func:`overlap_at_step` with resolved settings and a built problem."""
    phase = on_phase or (lambda name: None)
    phase("hessian")
    start = time.perf_counter()
    op, params, indices = hessian_at_step(
        run,
        step,
        problem,
        settings.split,
        settings.samples_per_class,
        dtype=settings.dtype,
        max_cols=max_cols,
    )
    load_seconds = time.perf_counter() - start
    if settings.method == "distributed":
        phase("load")
        basis = stored_eigenbasis(run, step, settings)
    elif settings.method == "exact":
        phase("eigh")
        basis = exact_eigenbasis(
            op, settings.num_outer, max_dim=settings.max_exact_dim or op.shape[0]
        )
    else:
        phase("sketch")
        basis = sketch_of(op, settings)
    phase("overlap")
    start_overlap = time.perf_counter()
    U = basis.eigenvectors
    curve_of = (
        store_overlap_curve if settings.method == "distributed" else overlap_curve
    )
    curve = curve_of(
        params.to(device=U.device),
        U,
        range(1, settings.num_outer + 1),
        best=True,
        num_random=settings.num_random,
        seed=mask_seed(settings.seed, step),
    )
    overlap_seconds = time.perf_counter() - start_overlap
    seconds = {
        "load": load_seconds,
        **basis.seconds,
        "overlap": overlap_seconds,
        "total": time.perf_counter() - start,
    }
    rows = curve_rows(step, curve, basis.eigenvalues)
    summary = _summary(run, step, settings, basis, curve, indices, seconds)
    return StepOverlap(step, settings, basis, curve, rows, summary)


def _summary_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    settings = summary["settings"]
    error = summary["a_posteriori"]
    at = summary["overlap_at_num_outer"]
    values = summary["eigenvalues"]
    return {
        "step": summary["step"],
        "method": settings["method"],
        "num_params": summary["num_params"],
        "num_outer": settings["num_outer"],
        "num_inner": settings["num_inner"],
        "lambda_1": values[0] if values else None,
        "lambda_2": values[1] if len(values) > 1 else None,
        "lambda_3": values[2] if len(values) > 2 else None,
        "trace": summary["trace"],
        "frobenius_norm": summary["frobenius_norm"],
        "fraction_negative": summary["fraction_negative"],
        "error_kind": error["kind"],
        "error": error["error"],
        "relative_error": error["relative_error"],
        "overlap_k": at["k"],
        "overlap_magnitude": at["magnitude"],
        "overlap_best": at["best"],
        "overlap_random_mean": at["random_mean"],
        "overlap_chance": at["chance"],
        "overlap_ratio": at["ratio"],
        "num_matvecs": summary["num_matvecs"]["total"],
        "seconds": summary["seconds"]["total"],
    }


def overlap_run(
    run: RunFolder | str | Path,
    settings: OverlapSettings | None = None,
    steps: str | Iterable[int] | None = None,
    *,
    force: bool = False,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    max_cols: int | None = DEFAULT_MAX_COLS,
    on_progress: Callable[[OverlapEvent], None] | None = None,
) -> OverlapRunResult:
    """Measure and store the overlap at recorded steps, skipping finished ones.

    For each step not yet done: :func:`overlap_at_step`, then its CSV and JSON
    written atomically, then the manifest entry (with the settings, a few
    scalars and timings), then the combined tables ``all.csv`` and
    ``summary.csv`` rewritten. An interruption leaves the finished steps intact;
    calling again resumes. The call is recorded in ``invocations/``.

    Args:
        run: The run folder (or its path).
        settings: What to compute (see :class:`OverlapSettings`); unset fields
            come from the stage's stored settings, then the defaults.
        steps: Steps to measure (default: every recorded step), a list or a
            string such as ``"0,100:1000:100"``.
        force: Recompute the requested finished steps, also those computed
            with other settings (unset fields still come from the stored
            settings). Steps not requested keep their results, so a stage can
            then hold steps computed with different settings.
        device: Device of model, data and products.
        data_dir: Data folder of file-based problems.
        max_cols: Hessian columns per pass over the data (memory).
        on_progress: Called with an :class:`OverlapEvent` at the start, at each
            phase of a step, after each stored step and at the end.

    Returns:
        The stage, settings, steps computed and skipped, and every requested
        step's summary.

    Raises:
        OverlapSettingsError: If finished steps were computed with other
            settings and ``force`` is false.
        MissingStepError: If a requested step is not recorded.
        ValueError: If the settings are invalid or the subset cannot be drawn.

    Example:
        >>> import tempfile
        >>> from curvlab.experiments.training import train
        >>> from curvlab.runs import TrainConfig
        >>> config = TrainConfig(problem="digits_logreg", steps=2, batch_size=10,
        ...                      num_samples=100, record_steps=(0,))
        >>> run = train(config, tempfile.mkdtemp()).run
        >>> result = overlap_run(run, OverlapSettings(samples_per_class=2,
        ...                                           num_outer=5, num_random=2))
        >>> result.computed, result.settings.method
        ((0, 2), 'exact')
        >>> overlap_run(run).skipped  # resumes with the stored settings
        (0, 2)
    """
    return OverlapStage.run_on(
        run,
        settings,
        steps,
        force=force,
        device=device,
        data_dir=data_dir,
        max_cols=max_cols,
        on_progress=on_progress,
    )


class OverlapStage(HessianStage):
    """The overlap analysis as a resumable stage (:func:`overlap_run` runs it)."""

    command = "overlap"
    columns = _CURVE_COLUMNS
    resolve = staticmethod(resolve_overlap_settings)
    stage_name = staticmethod(overlap_stage)
    measure = staticmethod(_measure)
    row = staticmethod(_summary_row)


def load_overlap(
    run: RunFolder | str | Path, split: str = "train"
) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """Read the stored overlap results of a split.

    Args:
        run: The run folder (or its path).
        split: ``"train"`` or ``"test"``.

    Returns:
        The rows of every finished step (one per ``(step, k)``, steps ascending)
        and the summaries by step.

    Raises:
        FileNotFoundError: If no step of the split is finished.
    """
    run = run if isinstance(run, RunFolder) else RunFolder.open(run)
    return read_table_stage(
        run,
        overlap_stage(split),
        f"overlap results on the {split} split",
        f"curvlab overlap --run {run.path} --split {split}",
    )

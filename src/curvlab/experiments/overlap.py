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
    overlap_train/step_00000100.json  the step's summary (:class:`StepOverlap`)
    overlap_train/all.csv             the rows of every finished step
    overlap_train/summary.csv         one row per finished step (scalars)

The random masks of step ``t`` come from ``SeedSequence([seed, t])``
(:func:`mask_seed`), the sketch and probes from the streams ``(seed, role)`` of
:mod:`curvlab.linalg` (the same test matrix at every step, as in the paper).
:mod:`curvlab.experiments.overlap_plots` draws the stored results.

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

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from torch import Tensor

from curvlab._checks import check_choice, check_int
from curvlab._seeds import derive_seed
from curvlab.experiments.eigenbasis import (
    DEFAULT_MAX_EXACT_DIM,
    Eigenbasis,
    EigenbasisSettings,
    HessianStage,
    StepHessian,
    split_stage,
)
from curvlab.experiments.sketch_stages import (
    find_eigenbasis,
    mask_overlap_curve,
    measured_settings,
)
from curvlab.runs import RunFolder
from curvlab.runs.stage import SettingsConflictError, StageRunResult, pick_setting
from curvlab.subspace import OverlapCurve

__all__ = [
    "METHODS",
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

#: The stage framework's types under this module's names.
OverlapSettingsError, OverlapRunResult = SettingsConflictError, StageRunResult


@dataclass(frozen=True)
class OverlapSettings(EigenbasisSettings):
    """What an overlap measurement computes; ``None`` means "not given".

    The fields of :class:`~curvlab.experiments.eigenbasis.EigenbasisSettings`
    (the sketch-only ones are ``None`` for the exact method), and:

    Attributes:
        method: ``"exact"``, ``"sketch"`` or ``"auto"`` (exact when
            ``D <= max_exact_dim``), resolved to ``"exact"`` or ``"sketch"``; or
            ``"distributed"``: the step's solved measurement store
            (:mod:`curvlab.experiments.sketch_stages`), whose sketch settings
            are then the defaults.
        num_random: Random masks per step; default 10 (the paper's mnist_mini).
        max_exact_dim: Largest ``D`` of the exact method (``"auto"`` picks the
            sketch above it; ``"exact"`` refuses it). Not stored: it only decides.
    """

    method: str | None = None
    num_random: int | None = None
    max_exact_dim: int | None = None

    unstored: ClassVar[tuple[str, ...]] = ("max_exact_dim",)

    def stored(self) -> dict[str, Any]:
        """The fields that decide the numbers, in the manifest's order."""
        values = super().stored()
        first = ("split", "method", "num_outer", "num_inner", "samples_per_class")
        return {name: values[name] for name in (*first, "num_random")} | values


#: ``overlap_stage(split)``: ``"overlap_<split>"`` (:func:`split_stage`).
overlap_stage = partial(split_stage, "overlap")


def mask_seed(seed: int, step: int) -> int:
    """The 63-bit seed of a step's random masks, ``SeedSequence([seed, step])``."""
    return derive_seed(seed, step, bits=63)


@dataclass(frozen=True)
class StepOverlap:
    """The overlap measurement of one step.

    Attributes:
        step: The training step.
        settings: The resolved settings.
        basis: The eigenbasis and its diagnostics.
        curve: Overlap of magnitude, best and random masks for ``k = 1..K``.
        rows: The step's table as stored, one dict per ``k`` (module docstring).
        summary: The step's JSON summary as stored: ``settings``, ``hessian``
            subset, ``eigenvalues``, ``trace``, ``frobenius_norm``,
            ``fraction_negative``, ``a_posteriori``, ``overlap_at_num_outer``,
            ``num_matvecs``, ``seconds``.
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
    """An overlap curve's table rows, one per ``k`` (columns: module docstring).

    ``eigenvalues`` are ``(K,)`` by descending magnitude (``K >= max k``), or
    ``None``.
    """
    random = curve.random
    values = None if eigenvalues is None else eigenvalues.detach().cpu().tolist()
    rows = []
    for j, k in enumerate(curve.ks.tolist()):
        chance, column = float(curve.chance[j]), random[:, j]
        magnitude, best = float(curve.magnitude[j]), float(curve.best[j])
        spread = [None] * 3  # std, min and max of the random masks
        if random.shape[0]:
            spread = [float(column.std(correction=0)), float(column.min())]
            spread.append(float(column.max()))
        eigenvalue = None if values is None else float(values[k - 1])
        cells = (step, k, eigenvalue, magnitude, best, float(curve.random_mean[j]))
        cells += (*spread, chance, magnitude / chance, best / chance)
        rows.append(dict(zip(_CURVE_COLUMNS, cells, strict=True)))
    return rows


def _measure(
    run: RunFolder, step: int, settings: OverlapSettings, hessian: StepHessian
) -> StepOverlap:
    """:func:`overlap_at_step` with resolved settings and the step's Hessian."""
    start, phase, op, params, subset = hessian
    load_seconds = time.perf_counter() - start
    basis = find_eigenbasis(run, step, op, settings, phase)
    phase("overlap")
    start_overlap = time.perf_counter()
    ks, seed = range(1, settings.num_outer + 1), mask_seed(settings.seed, step)
    options = {"num_random": settings.num_random, "seed": seed}
    curve = mask_overlap_curve(params, basis.eigenvectors, ks, **options)
    seconds = {"load": load_seconds, **basis.seconds}
    seconds |= {"overlap": time.perf_counter() - start_overlap}
    at_num_outer = ("magnitude", "best", "random_mean", "chance", "ratio")
    summary = {
        "stage": overlap_stage(settings.split),
        "step": step,
        "problem": run.config.problem,
        "num_params": basis.eigenvectors.shape[0],
        "settings": settings.stored(),
        "hessian": {"loss": "mean over the subset", **subset},
        "eigenvalues": basis.eigenvalues.detach().cpu().tolist(),
        "trace": basis.trace,
        "frobenius_norm": math.sqrt(basis.a_posteriori["op_norm_sq"]),
        "fraction_negative": basis.fraction_negative,
        "fraction_negative_beyond_rounding": basis.fraction_negative_beyond_rounding,
        "negative_tolerance": basis.negative_tolerance,
        "a_posteriori": basis.a_posteriori,
        "overlap_at_num_outer": {
            "k": settings.num_outer,
            **{name: float(getattr(curve, name)[-1]) for name in at_num_outer},
        },
        "random_mask_seed": seed,
        "num_matvecs": {**basis.num_matvecs, "total": sum(basis.num_matvecs.values())},
        "seconds": {**seconds, "total": time.perf_counter() - start},
    }
    rows = curve_rows(step, curve, basis.eigenvalues)
    return StepOverlap(step, settings, basis, curve, rows, summary)


class OverlapStage(HessianStage):
    """The overlap analysis as a resumable stage, one per split.

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

    command = "overlap"
    what = "overlap results"
    columns = _CURVE_COLUMNS
    settings_type = OverlapSettings
    measure = staticmethod(_measure)

    @staticmethod
    def own_settings(
        run: RunFolder, requested: OverlapSettings, stored: dict[str, Any], dim: int
    ) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """``method``, ``num_random`` and ``max_exact_dim``; SEIGH unless exact.

        Raises:
            ValueError: For ``method="exact"`` with ``D > max_exact_dim``, or a
                value out of range.
            TypeError: If a value has the wrong type.
        """
        max_exact_dim = requested.max_exact_dim or DEFAULT_MAX_EXACT_DIM
        check_int("max_exact_dim", max_exact_dim, 1)
        method = pick_setting("method", requested.method, stored, "auto")
        method = check_choice("method", method, METHODS)
        too_large = dim > max_exact_dim
        if method == "auto":
            method = "sketch" if too_large else "exact"
        elif method == "exact" and too_large:
            raise ValueError(
                f"The exact method materialises the {dim}x{dim} Hessian, above "
                f"max_exact_dim={max_exact_dim}. Use method='sketch' (or 'auto'), "
                "or raise max_exact_dim deliberately."
            )
        if method == "distributed":  # the measured sketch's settings come next
            stored = {**measured_settings(run, requested.split), **stored}
        num_random = pick_setting("num_random", requested.num_random, stored, 10)
        own = {"method": method, "num_random": check_int("num_random", num_random, 0)}
        return own | {"max_exact_dim": max_exact_dim}, stored, method != "exact"

    def summary_row(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """The step's row of ``summary.csv``: its scalars."""
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
            **{
                f"lambda_{i + 1}": values[i] if len(values) > i else None
                for i in range(3)
            },
            "trace": summary["trace"],
            "frobenius_norm": summary["frobenius_norm"],
            "fraction_negative": summary["fraction_negative"],
            "error_kind": error["kind"],
            "error": error["error"],
            "relative_error": error["relative_error"],
            **{f"overlap_{key}": value for key, value in at.items()},
            "num_matvecs": summary["num_matvecs"]["total"],
            "seconds": summary["seconds"]["total"],
        }


#: The stage's classmethods (:class:`~curvlab.experiments.eigenbasis.HessianStage`)
#: under function names; ``overlap_at_step`` returns a :class:`StepOverlap`.
resolve_overlap_settings = OverlapStage.resolve
overlap_at_step = OverlapStage.at_step
overlap_run = OverlapStage.run_on
load_overlap = OverlapStage.load

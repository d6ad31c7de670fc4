r"""The exhaustive check: sketched against exact eigendecomposition along training.

The "mnist_mini exhaustive test" of Fernandez, Schneider, Mahsereci & Hennig
(2025; the ``12a``/``12b`` scripts of their repository, reference notes
``papers.md`` §1.6): at each recorded step, for a problem small enough for a
dense ``eigh``, compute the Hessian :math:`H` on the class-balanced subset (as
:mod:`curvlab.experiments.overlap`), its exact eigendecomposition, and SEIGH
with ``K = num_outer`` outer and ``s = num_inner`` inner measurements
(Hessian-vector products, exactly as ``curvlab overlap`` takes them), and
compare:

- **eigenvalues**: :math:`\lambda_i` (exact) against :math:`\hat\lambda_i`
  (sketch), both the ``K`` largest in magnitude, with absolute and relative
  errors;
- **eigenbases**: for every ``k`` the overlap of the top-``k`` exact and
  sketched eigenspaces :math:`\frac1k \|Q_{:, :k}^\top W_{:, :k}\|_F^2`, and the
  principal angles between the two ``K``-dimensional eigenspaces
  (:func:`~curvlab.subspace.principal_angles`);
- **mask overlaps**: the magnitude-mask overlap curve
  :math:`\frac1k \|\,\cdot_{S_k, :k}\|_F^2` of each basis;
- **the a-posteriori certificate**: the Gaussian-probe estimate of
  :math:`\|H - \hat H\|_F` (TYUC2019 §6) against its exact value from the dense
  :math:`H`, and the exact error of the best rank-``K`` approximation
  :math:`(\sum_{i > K} \lambda_i^2)^{1/2}` for reference.

Unlike the seed script's ``eigvec_resnorm`` (which compared eigenvectors sorted
by :math:`|\lambda|` with ones sorted ascending, ``papers.md`` §1.6), both bases
here are sorted by descending :math:`|\lambda|`.

**Stored** in the run folder (stage ``exhaustive_<split>``), atomically, each
step marked done in the manifest; rerunning skips finished steps::

    exhaustive_train/step_00000100.csv   one row per k = 1..K: step, k,
                                         eigenvalue_exact, eigenvalue_sketch,
                                         abs_error, rel_error, basis_overlap,
                                         magnitude_exact, magnitude_sketch,
                                         chance
    exhaustive_train/step_00000100.json  summary (:class:`StepExhaustive`)
    exhaustive_train/all.csv             rows of every finished step
    exhaustive_train/summary.csv         one row per finished step

References:
    Those of :mod:`curvlab.experiments.overlap`, and Knyazev & Argentati
    (2002). Principal angles between subspaces in an A-based scalar product.
    SIAM J. Sci. Comput. 23(6).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor

from curvlab._checks import check_int
from curvlab.experiments.eigenbasis import (
    DEFAULT_MAX_EXACT_DIM,
    EigenbasisSettings,
    HessianStage,
    StepHessian,
    exact_eigenbasis,
    sketch_of,
    split_stage,
)
from curvlab.runs import RunFolder
from curvlab.runs.stage import StageRunResult
from curvlab.subspace import overlap_curve, principal_angles

__all__ = [
    "ExhaustiveRunResult",
    "ExhaustiveSettings",
    "ExhaustiveStage",
    "StepExhaustive",
    "basis_overlaps",
    "exhaustive_at_step",
    "exhaustive_run",
    "exhaustive_stage",
    "load_exhaustive",
    "resolve_exhaustive_settings",
]

#: Columns of the per-step tables (one row per k).
_COLUMNS = (
    "step",
    "k",
    "eigenvalue_exact",
    "eigenvalue_sketch",
    "abs_error",
    "rel_error",
    "basis_overlap",
    "magnitude_exact",
    "magnitude_sketch",
    "chance",
)


@dataclass(frozen=True)
class ExhaustiveSettings(EigenbasisSettings):
    """What the exhaustive check computes; ``None`` means "not given".

    The fields of :class:`~curvlab.experiments.eigenbasis.EigenbasisSettings`
    (``num_outer`` is the number of eigenpairs compared), and:

    Attributes:
        max_dim: Largest ``D`` for which the dense Hessian is built (default
            8000); larger problems are refused. Not stored.
    """

    max_dim: int | None = None

    unstored: ClassVar[tuple[str, ...]] = ("max_dim",)


#: ``exhaustive_stage(split)``: ``"exhaustive_<split>"`` (:func:`split_stage`).
exhaustive_stage = partial(split_stage, "exhaustive")


def basis_overlaps(Q: Tensor, W: Tensor) -> Tensor:
    r"""Overlaps of the top-``k`` spans of two bases, for every ``k``.

    .. math::
        \operatorname{ov}(k) = \frac1k \|Q_{:, :k}^\top W_{:, :k}\|_F^2
        = \frac1k \sum_{\max(i, j) < k} (Q^\top W)_{ij}^2,

    all ``k`` at once from the ``K x K`` matrix :math:`Q^\top W`: cumulative sums
    over the "shells" :math:`\max(i, j) = k - 1`. In float64.

    Args:
        Q: ``(D, K)`` orthonormal.
        W: ``(D, K)`` orthonormal, same device.

    Returns:
        ``(K,)`` float64 on the CPU; entry ``k - 1`` is :math:`\operatorname{ov}(k)`.

    Raises:
        ValueError: If the shapes differ.

    Example:
        >>> Q = torch.eye(3, dtype=torch.float64)
        >>> W = Q[:, [1, 0, 2]]
        >>> basis_overlaps(Q, W).tolist()
        [0.0, 1.0, 1.0]
    """
    if Q.shape != W.shape or Q.ndim != 2:
        raise ValueError(
            f"Q and W must have the same shape (D, K). Got {tuple(Q.shape)} and "
            f"{tuple(W.shape)}."
        )
    block = (Q.to(torch.float64).mT @ W.to(torch.float64)).square()
    shells = block.tril().sum(1) + block.triu(1).sum(0)
    ks = torch.arange(1, Q.shape[1] + 1, dtype=torch.float64)
    return shells.cumsum(0).cpu() / ks


@dataclass(frozen=True)
class StepExhaustive:
    """The exhaustive check at one step.

    Attributes:
        step: The training step.
        settings: The resolved settings.
        rows: One dict per ``k`` as stored (module docstring).
        summary: The JSON summary, as stored: ``eigenvalues_exact`` and
            ``eigenvalues_sketch`` (``K`` each), ``eigenvalue_errors`` (max
            relative error of the top 1, 3, 10 and ``K``), ``basis_overlap``
            (at ``K``, min and mean over ``k``), ``principal_angles_degrees``
            (min, median, 90% quantile, max), ``magnitude_overlap`` (exact and
            sketch at ``K``), ``a_posteriori`` (estimate, exact error of the
            sketch, ratio, best rank-``K`` error), ``trace``,
            ``fraction_negative``, ``num_matvecs``, ``seconds``.
        angles: ``(K,)`` principal angles (radians, ascending) between the exact
            and the sketched ``K``-dimensional eigenspaces.
    """

    step: int
    settings: ExhaustiveSettings
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    angles: Tensor


def _measure(
    run: RunFolder, step: int, settings: ExhaustiveSettings, hessian: StepHessian
) -> StepExhaustive:
    """:func:`exhaustive_at_step` (phases hessian, eigh, sketch, compare)."""
    start, phase, op, params, subset = hessian
    K = settings.num_outer
    phase("eigh")
    exact = exact_eigenbasis(op, K, max_dim=settings.max_dim, keep_dense=True)
    phase("sketch")
    sketch = sketch_of(op, settings)
    phase("compare")
    compare_start = time.perf_counter()
    H = exact.dense.to(torch.float64)
    W = sketch.eigenvectors.to(torch.float64)
    lam_sketch = sketch.eigenvalues.to(torch.float64)
    true_error = float(torch.linalg.matrix_norm(H - (W * lam_sketch) @ W.mT).cpu())
    del H
    Q = exact.eigenvectors.to(torch.float64)
    lam_exact = exact.eigenvalues.to(torch.float64).cpu()
    lam_sketch = lam_sketch.cpu()
    abs_error = (lam_sketch - lam_exact).abs()
    scale = lam_exact.abs()
    rel_error = torch.where(scale > 0, abs_error / scale, abs_error)
    overlaps = basis_overlaps(Q, W)
    angles = principal_angles(Q, W, orthonormalize=True).cpu()
    ks = range(1, K + 1)
    flat = params.to(device=Q.device, dtype=torch.float64)
    options = {"best": False, "num_random": 0}
    mag_exact = overlap_curve(flat, Q, ks, **options).magnitude
    mag_sketch = overlap_curve(flat, W, ks, **options, orthonormalize=True).magnitude
    dim = op.shape[0]
    cols = (lam_exact, lam_sketch, abs_error, rel_error, overlaps, mag_exact)
    cols = [col.tolist() for col in (*cols, mag_sketch)]  # by k, as in _COLUMNS
    rows = [
        dict(zip(_COLUMNS, (step, k, *cells, k / dim), strict=True))
        for k, *cells in zip(ks, *cols, strict=True)
    ]
    estimate = sketch.a_posteriori
    over = estimate["error"] / true_error if true_error > 0 else None
    op_norm = math.sqrt(exact.a_posteriori["op_norm_sq"])
    seconds = {**exact.seconds, **sketch.seconds}
    seconds["compare"] = time.perf_counter() - compare_start
    seconds["total"] = time.perf_counter() - start
    degrees = torch.rad2deg(angles).to(torch.float64)
    qs = torch.tensor([0.5, 0.9], dtype=torch.float64)
    median, q90 = torch.quantile(degrees, qs).tolist()
    matvecs = {"dense": exact.num_matvecs["eigendecomposition"]}
    matvecs["sketch"] = sketch.num_matvecs["eigendecomposition"]
    matvecs["a_posteriori"] = sketch.num_matvecs["a_posteriori"]
    matvecs["total"] = sum(matvecs.values())
    summary = {
        "stage": exhaustive_stage(settings.split),
        "step": step,
        "problem": run.config.problem,
        "num_params": dim,
        "settings": settings.stored(),
        "hessian": subset,
        "eigenvalues_exact": lam_exact.tolist(),
        "eigenvalues_sketch": lam_sketch.tolist(),
        "eigenvalue_errors": {
            f"max_rel_top_{n}": float(rel_error[:n].max())
            for n in sorted({1, min(3, K), min(10, K), K})
        },
        "basis_overlap": {
            "at_num_outer": float(overlaps[-1]),
            "min": float(overlaps.min()),
            "mean": float(overlaps.mean()),
        },
        "principal_angles_degrees": {
            "min": float(degrees.min()),
            "median": median,
            "q90": q90,
            "max": float(degrees.max()),
        },
        "magnitude_overlap": {
            "k": K,
            "exact": float(mag_exact[-1]),
            "sketch": float(mag_sketch[-1]),
            "chance": K / dim,
            "max_abs_difference": float((mag_exact - mag_sketch).abs().max()),
        },
        "a_posteriori": {
            "estimate": estimate["error"],
            "exact": true_error,
            "estimate_over_exact": over,
            "relative_estimate": estimate["relative_error"],
            "relative_exact": true_error / op_norm if op_norm > 0 else None,
            "best_rank_k_error": exact.a_posteriori["error"],
            "frobenius_norm": op_norm,
            "frobenius_norm_estimate": math.sqrt(estimate["op_norm_sq"]),
            "num_probes": estimate["num_probes"],
            "bounds": estimate["bounds"],
        },
        "trace": exact.trace,
        "fraction_negative": exact.fraction_negative,
        "fraction_negative_beyond_rounding": exact.fraction_negative_beyond_rounding,
        "num_matvecs": matvecs,
        "seconds": seconds,
    }
    return StepExhaustive(step, settings, rows, summary, angles)


#: The stage framework's result type under this module's name.
ExhaustiveRunResult = StageRunResult


class ExhaustiveStage(HessianStage):
    """The exhaustive check as a resumable stage, one per split (``D <= max_dim``)."""

    command = "exhaustive"
    what = "exhaustive check"
    columns = _COLUMNS
    settings_type = ExhaustiveSettings
    measure = staticmethod(_measure)

    @staticmethod
    def own_settings(
        run: RunFolder, requested: ExhaustiveSettings, stored: dict[str, Any], dim: int
    ) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """``max_dim``; always SEIGH.

        Raises:
            ValueError: If ``D > max_dim`` (the problem is too large for a dense
                ``eigh``).
            TypeError: If ``max_dim`` is no int.
        """
        max_dim = check_int("max_dim", requested.max_dim or DEFAULT_MAX_EXACT_DIM, 1)
        if dim > max_dim:
            raise ValueError(
                f"The exhaustive check builds the dense {dim}x{dim} Hessian of "
                f"{run.config.problem!r} and runs a full eigh on it; D={dim} is "
                f"above the limit max_dim={max_dim} ({dim * dim * 8 / 2**30:.1f} GiB "
                "in float64). Use `curvlab overlap --method sketch` on this problem, "
                "or raise the limit deliberately (--max-dim)."
            )
        return {"max_dim": max_dim}, stored, True

    def summary_row(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """The step's row of ``summary.csv``: its scalars."""
        errors = summary["eigenvalue_errors"]
        top_1 = errors.get("max_rel_top_1")
        post = summary["a_posteriori"]
        return {
            "step": summary["step"],
            "num_params": summary["num_params"],
            "num_outer": summary["settings"]["num_outer"],
            "num_inner": summary["settings"]["num_inner"],
            "lambda_1_exact": summary["eigenvalues_exact"][0],
            "lambda_1_sketch": summary["eigenvalues_sketch"][0],
            "max_rel_error_top_3": errors.get("max_rel_top_3", top_1),
            "max_rel_error_top_k": max(errors.values()),
            "basis_overlap": summary["basis_overlap"]["at_num_outer"],
            "basis_overlap_min": summary["basis_overlap"]["min"],
            "angle_median_degrees": summary["principal_angles_degrees"]["median"],
            "angle_max_degrees": summary["principal_angles_degrees"]["max"],
            "magnitude_exact": summary["magnitude_overlap"]["exact"],
            "magnitude_sketch": summary["magnitude_overlap"]["sketch"],
            "error_estimate": post["estimate"],
            "error_exact": post["exact"],
            "best_rank_k_error": post["best_rank_k_error"],
            "trace": summary["trace"],
            "fraction_negative": summary["fraction_negative"],
            "seconds": summary["seconds"]["total"],
        }


#: The stage's classmethods (:class:`~curvlab.experiments.eigenbasis.HessianStage`)
#: under function names; ``exhaustive_at_step`` returns a :class:`StepExhaustive`.
resolve_exhaustive_settings = ExhaustiveStage.resolve
exhaustive_at_step = ExhaustiveStage.at_step
exhaustive_run = ExhaustiveStage.run_on
load_exhaustive = ExhaustiveStage.load

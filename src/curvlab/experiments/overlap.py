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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import torch
from torch import Tensor

from curvlab.linalg import a_posteriori_error, sketched_eigh
from curvlab.operators import HessianOperator
from curvlab.problems import BatchedData, Problem, balanced_subset
from curvlab.runs import MissingStepError, RunFolder, parse_steps
from curvlab.runs.environment import machine_info, package_versions
from curvlab.subspace import OverlapCurve, overlap_curve

__all__ = [
    "DEFAULT_MAX_EXACT_DIM",
    "DEFAULT_SAMPLES_PER_CLASS",
    "METHODS",
    "SPLITS",
    "TEST_MATRICES",
    "Eigenbasis",
    "OverlapEvent",
    "OverlapRunResult",
    "OverlapSettings",
    "OverlapSettingsError",
    "StepOverlap",
    "curve_rows",
    "default_num_outer",
    "exact_eigenbasis",
    "hessian_at_step",
    "hessian_subset",
    "load_overlap",
    "mask_seed",
    "overlap_at_step",
    "overlap_run",
    "overlap_stage",
    "overlap_stages",
    "resolve_overlap_settings",
    "run_stage_steps",
    "select_steps",
    "sketched_eigenbasis",
]

#: Ways to find the eigenbasis: ``"auto"`` is exact up to ``max_exact_dim``.
METHODS = ("exact", "sketch", "auto")

#: Splits the Hessian can be taken on.
SPLITS = ("train", "test")

#: Test matrices of the sketch.
TEST_MATRICES = ("ssrft", "gaussian", "rademacher")

#: Largest ``D`` for which ``method="auto"`` materialises the Hessian: a
#: ``(D, D)`` float64 matrix of 0.5 GB and a dense ``eigh`` of a minute or two.
DEFAULT_MAX_EXACT_DIM = 8000

#: The paper's Hessian subsets: 500 samples of 10 classes (papers.md §1.5).
DEFAULT_SAMPLES_PER_CLASS = 50

#: Default number of random masks per step (the paper's mnist_mini study).
DEFAULT_NUM_RANDOM = 10

#: Default number of Gaussian probes of the a-posteriori error (TYUC2019, paper).
DEFAULT_NUM_PROBES = 30

#: Default columns per pass over the data (memory of the Hessian products).
DEFAULT_MAX_COLS = 128

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


class OverlapSettingsError(ValueError):
    """Settings differ from those the finished steps of a stage were computed with.

    Attributes:
        differences: ``(field, stored, requested)`` for each differing field.
    """

    def __init__(self, message: str, differences: list[tuple[str, Any, Any]]):
        super().__init__(message)
        self.differences = differences


# ------------------------------------------------------------------- settings
@dataclass(frozen=True)
class OverlapSettings:
    """What an overlap measurement computes; ``None`` means "not given".

    Unset fields are filled by :func:`resolve_overlap_settings`: from the stored
    settings of the stage when it has finished steps, else from the defaults.

    Attributes:
        split: ``"train"`` or ``"test"``: the split the Hessian is taken on.
        method: ``"exact"``, ``"sketch"`` or ``"auto"`` (exact when
            ``D <= max_exact_dim``); resolved to ``"exact"`` or ``"sketch"``.
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


def default_num_outer(num_params: int) -> int:
    """Default number of eigenpairs: 5% of ``D``, between 1 and 1000.

    The paper measures ``K = 355`` of ``D = 7030`` (mnist_mini) and ``K = 1000``
    or ``1500`` of ``D ~ 10^6..10^7`` (papers.md §1.4).

    Args:
        num_params: ``D``.

    Returns:
        ``min(max(1, round(0.05 D)), 1000)``, and below ``D``.

    Example:
        >>> default_num_outer(7030), default_num_outer(650), default_num_outer(10**6)
        (352, 32, 1000)
    """
    return max(1, min(round(0.05 * num_params), 1000, num_params - 1))


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | numpy.integer):
        raise TypeError(f"{name} must be an int. Got {type(value).__name__}.")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must lie in {bound}. Got {value}.")
    return int(value)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}. Got {value!r}.")
    return value


def overlap_stage(split: str) -> str:
    """Return the stage name of the overlap on a split.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        ``"overlap_<split>"``.

    Raises:
        ValueError: For another split.
    """
    return f"overlap_{_check_choice('split', split, SPLITS)}"


def overlap_stages(run: RunFolder) -> list[str]:
    """Return the overlap stages of a run that have finished steps.

    Args:
        run: The run folder.

    Returns:
        Stage names, e.g. ``["overlap_test", "overlap_train"]``.
    """
    stages = []
    for split in SPLITS:
        stage = overlap_stage(split)
        if run.done_steps(stage):
            stages.append(stage)
    return sorted(stages)


def _stored_settings(run: RunFolder, stage: str) -> dict[str, Any] | None:
    """Settings of the latest finished step of a stage, or ``None``."""
    done = run.done_steps(stage)
    if not done:
        return None
    entry = run.entry(stage, done[-1]) or {}
    return entry.get("info", {}).get("settings")


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
    config = run.config
    split = requested.split or "train"
    _check_choice("split", split, SPLITS)
    if stored is None:
        stored = _stored_settings(run, overlap_stage(split))
    stored = dict(stored or {})
    if num_params is None:
        num_params = run.problem().num_params
    dim = num_params

    def pick(name: str, default: Any) -> Any:
        value = getattr(requested, name)
        if value is not None:
            return value
        if stored.get(name) is not None:
            return stored[name]
        return default

    max_exact_dim = requested.max_exact_dim or DEFAULT_MAX_EXACT_DIM
    _check_int("max_exact_dim", max_exact_dim, 1)
    method = _check_choice("method", pick("method", "auto"), METHODS)
    if method == "auto":
        method = "exact" if dim <= max_exact_dim else "sketch"
    if method == "exact" and dim > max_exact_dim:
        raise ValueError(
            f"The exact method materialises the {dim}x{dim} Hessian, above "
            f"max_exact_dim={max_exact_dim}. Use method='sketch' (or 'auto'), or "
            "raise max_exact_dim deliberately."
        )
    num_outer = pick("num_outer", default_num_outer(dim))
    high = dim if method == "exact" else dim - 1
    num_outer = _check_int("num_outer", num_outer, 1, high)
    samples = _check_int(
        "samples_per_class", pick("samples_per_class", DEFAULT_SAMPLES_PER_CLASS), 1
    )
    num_random = _check_int("num_random", pick("num_random", DEFAULT_NUM_RANDOM), 0)
    seed = _check_int("seed", pick("seed", config.seed), 0)
    dtype = _check_choice("dtype", pick("dtype", config.dtype), ("float32", "float64"))
    num_inner = test_matrix = num_probes = None
    if method == "sketch":
        num_inner = _check_int(
            "num_inner", pick("num_inner", min(2 * num_outer, dim)), num_outer, dim
        )
        test_matrix = _check_choice(
            "test_matrix", pick("test_matrix", "ssrft"), TEST_MATRICES
        )
        num_probes = _check_int("num_probes", pick("num_probes", DEFAULT_NUM_PROBES), 1)
    return OverlapSettings(
        split=split,
        method=method,
        num_outer=num_outer,
        num_inner=num_inner,
        samples_per_class=samples,
        num_random=num_random,
        test_matrix=test_matrix,
        num_probes=num_probes,
        seed=seed,
        dtype=dtype,
        max_exact_dim=max_exact_dim,
    )


def _differences(
    stored: Mapping[str, Any], settings: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    return [
        (name, stored.get(name), value)
        for name, value in settings.items()
        if stored.get(name) != value
    ]


def mask_seed(seed: int, step: int) -> int:
    """Seed of the random masks of a step, ``SeedSequence([seed, step])``.

    Args:
        seed: The measurement's seed.
        step: The training step.

    Returns:
        A 63-bit seed.
    """
    state = numpy.random.SeedSequence([seed, step]).generate_state(2)
    return (int(state[0]) << 32 | int(state[1])) & (2**63 - 1)


def select_steps(run: RunFolder, steps: str | Iterable[int] | None) -> list[int]:
    """Pick recorded steps.

    Args:
        run: The run folder.
        steps: ``None`` for every recorded step, or a step list
            (:func:`~curvlab.runs.parse_steps` syntax: ``"0,100:1000:100"``).

    Returns:
        The steps, sorted.

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


# -------------------------------------------------------------------- Hessian
def hessian_subset(
    problem: Problem,
    split: str,
    samples_per_class: int,
    *,
    dtype: torch.dtype | None = None,
) -> tuple[BatchedData, Tensor]:
    """The class-balanced subset of a split on which the Hessian is taken.

    Classification: the first ``samples_per_class`` examples of every class, in
    the split's order (:func:`~curvlab.problems.balanced_subset`, as the paper's
    ``SubsetSampler.get_balanced(random=False)``). Regression: the first
    ``samples_per_class`` samples.

    Args:
        problem: The run's problem (:meth:`~curvlab.runs.RunFolder.problem`).
        split: ``"train"`` or ``"test"``.
        samples_per_class: Samples per class (regression: in total).
        dtype: Convert the inputs to this dtype (default: keep).

    Returns:
        The batches (the problem's batch size) and the chosen indices into the
        split.

    Raises:
        ValueError: If the split is unknown or too small.
    """
    _check_choice("split", split, SPLITS)
    data = problem.train_data if split == "train" else problem.test_data
    y = data.y
    if problem.num_classes is None:
        if samples_per_class > data.num_samples:
            raise ValueError(
                f"The {split} split of {problem.name!r} has {data.num_samples} "
                f"samples; samples_per_class={samples_per_class} asks for more."
            )
        indices = torch.arange(samples_per_class, device=y.device)
    else:
        counts = torch.bincount(y, minlength=problem.num_classes)
        fewest = int(counts.min())
        if samples_per_class > fewest:
            raise ValueError(
                f"The {split} split of {problem.name!r} has only {fewest} examples "
                f"of its smallest class (class {int(counts.argmin())}); "
                f"samples_per_class={samples_per_class} is too many. Pass at most "
                f"{fewest}."
            )
        num = samples_per_class * problem.num_classes
        indices = balanced_subset(y, num, problem.num_classes)
    subset = data.subset(indices)
    if dtype is not None and subset.X.is_floating_point() and subset.X.dtype != dtype:
        subset = BatchedData(subset.X.to(dtype), subset.y, subset.batch_size)
    return subset, indices.cpu()


def hessian_at_step(
    run: RunFolder,
    step: int,
    problem: Problem,
    split: str,
    samples_per_class: int,
    *,
    dtype: str | torch.dtype | None = None,
    max_cols: int | None = DEFAULT_MAX_COLS,
) -> tuple[HessianOperator, Tensor, Tensor]:
    """Load a step into the problem's model and build its Hessian operator.

    Args:
        run: The run folder.
        step: A recorded step.
        problem: The run's problem, built once (:meth:`RunFolder.problem`); its
            model is changed in place (the step's parameters, ``dtype``).
        split: ``"train"`` or ``"test"``.
        samples_per_class: See :func:`hessian_subset`.
        dtype: Dtype of model and data (default: the model's).
        max_cols: Columns per pass over the data.

    Returns:
        The Hessian of the mean loss over the subset, the flat parameter
        vector (in the operator's order, its dtype and device) and the subset's
        indices.

    Raises:
        MissingStepError: If the step is not recorded.
        ValueError: If the subset cannot be drawn.
    """
    model = problem.model
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    run.load_into(model, step)
    if dtype is not None:
        model.to(dtype)
    model.eval()
    param_dtype = next(model.parameters()).dtype
    data, indices = hessian_subset(problem, split, samples_per_class, dtype=param_dtype)
    op = HessianOperator(model, problem.loss_fn, data, max_cols=max_cols)
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return op, params, indices


# --------------------------------------------------------------- eigenbases
@dataclass(frozen=True)
class Eigenbasis:
    r"""The top eigenpairs by :math:`|\lambda|` of a Hessian, with diagnostics.

    Attributes:
        method: ``"exact"`` or ``"sketch"``.
        eigenvalues: ``(K,)`` by descending magnitude.
        eigenvectors: ``(D, K)`` orthonormal.
        a_posteriori: The error of :math:`Q_K \Lambda_K Q_K^\top` (JSON-ready):
            ``kind`` (``"exact"`` or ``"estimate"``), ``error``, ``error_sq``,
            ``relative_error``, ``op_norm_sq``, ``num_probes``, ``bounds``
            (``[{"epsilon", "p_under", "p_over"}]``, estimate only),
            ``scree_lower``, ``scree_upper`` (``K + 1`` values each, equal for
            the exact method).
        trace: :math:`\operatorname{tr} H` (exact method), else ``None``.
        fraction_negative: Fraction of the ``D`` eigenvalues below 0 (exact
            method; the paper's statistic, ``papers.md`` §1.6), else ``None``.
            Eigenvalues that are zero up to rounding count half the time.
        fraction_negative_beyond_rounding: Fraction below
            ``-negative_tolerance`` (exact method), else ``None``.
        negative_tolerance: ``D * eps * max|λ|`` of the product dtype (exact).
        all_eigenvalues: All ``D`` eigenvalues by descending magnitude (exact
            method, CPU float64), else ``None``.
        dense: The dense ``(D, D)`` Hessian (exact method), else ``None``.
        num_matvecs: ``{"eigendecomposition": D or s, "a_posteriori": p}``.
        seconds: Timings: ``hessian`` (dense), ``eigh``, ``sketch``,
            ``a_posteriori``.
    """

    method: str
    eigenvalues: Tensor
    eigenvectors: Tensor
    a_posteriori: dict[str, Any]
    trace: float | None = None
    fraction_negative: float | None = None
    fraction_negative_beyond_rounding: float | None = None
    negative_tolerance: float | None = None
    all_eigenvalues: Tensor | None = None
    dense: Tensor | None = None
    num_matvecs: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _exact_error(values_by_magnitude: Tensor, num_outer: int) -> dict[str, Any]:
    squares = values_by_magnitude.to(torch.float64).square()
    total = float(squares.sum())
    tails = squares.flip(0).cumsum(0).flip(0)  # tails[r] = sum_{i >= r}
    tail = torch.cat([tails, squares.new_zeros(1)])[: num_outer + 1]
    scree = (tail / total if total > 0 else torch.zeros_like(tail)).tolist()
    error_sq = float(tail[num_outer])
    return {
        "kind": "exact",
        "error": math.sqrt(error_sq),
        "error_sq": error_sq,
        "relative_error": math.sqrt(error_sq / total) if total > 0 else 0.0,
        "op_norm_sq": total,
        "num_probes": 0,
        "bounds": [],
        "scree_lower": scree,
        "scree_upper": scree,
    }


def exact_eigenbasis(
    op: HessianOperator,
    num_outer: int,
    *,
    max_dim: int = DEFAULT_MAX_EXACT_DIM,
    keep_dense: bool = False,
) -> Eigenbasis:
    r"""Top eigenpairs by :math:`|\lambda|` from the dense matrix.

    Materialises :math:`H` from ``D`` products (identity columns in chunks of
    the operator's ``max_cols``), symmetrises it, and runs a dense ``eigh`` in
    float64. The error of the rank-``K`` truncation is exact:
    :math:`\|H - Q_K \Lambda_K Q_K^\top\|_F^2 = \sum_{i > K} \lambda_i^2`.

    Args:
        op: The Hessian (any symmetric curvature operator).
        num_outer: ``K``, ``1 <= K <= D``.
        max_dim: Refuse ``D > max_dim``.
        keep_dense: Keep the dense matrix (on the operator's device, its dtype)
            in the result.

    Returns:
        The eigenbasis (float64, on the operator's device), trace, fraction of
        negative eigenvalues, the full spectrum and the exact error.

    Raises:
        ValueError: If ``D > max_dim`` or ``num_outer`` is out of range.
    """
    dim = op.shape[0]
    if dim > max_dim:
        raise ValueError(
            f"The exact eigendecomposition needs the dense {dim}x{dim} Hessian, above "
            f"max_dim={max_dim}. Use the sketch, or raise the limit deliberately."
        )
    _check_int("num_outer", num_outer, 1, dim)
    start = time.perf_counter()
    dense = op.to_dense(max_dim=max_dim, chunk_size=op.max_cols or 256)
    hessian_seconds = time.perf_counter() - start
    start = time.perf_counter()
    eps = torch.finfo(dense.dtype).eps
    H = dense.to(torch.float64, copy=True)
    if not keep_dense:
        del dense
        dense = None
    H = H.add_(H.mT.clone()).mul_(0.5)  # symmetrise against rounding
    values, vectors = torch.linalg.eigh(H)
    eigh_seconds = time.perf_counter() - start
    del H
    order = torch.argsort(values.abs(), descending=True, stable=True)
    values, top = values[order], order[:num_outer]
    biggest = float(values.abs().max()) if dim else 0.0
    tolerance = dim * eps * biggest
    return Eigenbasis(
        method="exact",
        eigenvalues=values[:num_outer],
        eigenvectors=vectors[:, top],
        a_posteriori=_exact_error(values.cpu(), num_outer),
        trace=float(values.sum()),
        fraction_negative=float((values < 0).double().mean()),
        fraction_negative_beyond_rounding=float((values < -tolerance).double().mean()),
        negative_tolerance=tolerance,
        all_eigenvalues=values.cpu(),
        dense=dense,
        num_matvecs={"eigendecomposition": dim, "a_posteriori": 0},
        seconds={"hessian": hessian_seconds, "eigh": eigh_seconds},
    )


def sketched_eigenbasis(
    op,
    num_outer: int,
    num_inner: int,
    *,
    test_matrix: str = "ssrft",
    seed: int = 0,
    num_probes: int = DEFAULT_NUM_PROBES,
) -> Eigenbasis:
    r"""Top eigenpairs by :math:`|\lambda|` by SEIGH, with the a-posteriori error.

    :func:`~curvlab.linalg.sketched_eigh` (``num_inner`` products; Fernandez et
    al. 2025, Alg. 2), then ``num_probes`` Gaussian probes estimate
    :math:`\|H - W \Lambda W^\top\|_F^2` and :math:`\|H\|_F^2`
    (:func:`~curvlab.linalg.a_posteriori_error`; TYUC2019 §6), with the
    probabilities that the estimate is off by a factor :math:`1 \pm \varepsilon`
    and the scree bounds.

    Args:
        op: The Hessian (any symmetric operator).
        num_outer: ``K``, ``1 <= K < D``.
        num_inner: ``s``, ``K <= s <= D``.
        test_matrix: ``"ssrft"``, ``"gaussian"`` or ``"rademacher"``.
        seed: Seed of the test matrices and the probes (independent streams).
        num_probes: Gaussian probes, at least 1.

    Returns:
        The eigenbasis (operator's dtype and device) and its error estimate.

    Raises:
        ValueError: If a size is out of range.
        FloatingPointError: If a product is NaN or Inf.
    """
    start = time.perf_counter()
    sketch = sketched_eigh(op, num_outer, num_inner, test_matrix=test_matrix, seed=seed)
    sketch_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cert = a_posteriori_error(op, sketch, num_probes=num_probes, seed=seed)
    a_posteriori_seconds = time.perf_counter() - start
    error = {
        "kind": "estimate",
        "error": cert.error,
        "error_sq": cert.error_sq,
        "relative_error": cert.relative_error,
        "op_norm_sq": cert.op_norm_sq,
        "approx_norm_sq": cert.approx_norm_sq,
        "num_probes": cert.num_probes,
        "bounds": [
            {"epsilon": e, "p_under": under, "p_over": over}
            for e, under, over in cert.bounds
        ],
        "scree_lower": cert.scree_lower.tolist(),
        "scree_upper": cert.scree_upper.tolist(),
    }
    return Eigenbasis(
        method="sketch",
        eigenvalues=sketch.eigenvalues,
        eigenvectors=sketch.eigenvectors,
        a_posteriori=error,
        num_matvecs={
            "eigendecomposition": sketch.num_matvecs,
            "a_posteriori": cert.num_matvecs,
        },
        seconds={"sketch": sketch_seconds, "a_posteriori": a_posteriori_seconds},
    )


# ------------------------------------------------------------------- one step
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
        chance = float(curve.chance[j])
        magnitude = float(curve.magnitude[j])
        best = float(curve.best[j])
        column = random[:, j]
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
    matvecs = dict(basis.num_matvecs)
    matvecs["total"] = sum(matvecs.values())
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
    phase = on_phase or (lambda name: None)
    phase("hessian")
    start = time.perf_counter()
    if problem is None:
        problem = run.problem(device=device, data_dir=data_dir)
    # idempotent on resolved settings
    settings = resolve_overlap_settings(run, settings, num_params=problem.num_params)
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
    if settings.method == "exact":
        phase("eigh")
        basis = exact_eigenbasis(
            op, settings.num_outer, max_dim=settings.max_exact_dim or op.shape[0]
        )
    else:
        phase("sketch")
        basis = sketched_eigenbasis(
            op,
            settings.num_outer,
            settings.num_inner,
            test_matrix=settings.test_matrix,
            seed=settings.seed,
            num_probes=settings.num_probes,
        )
    phase("overlap")
    start_overlap = time.perf_counter()
    U = basis.eigenvectors
    curve = overlap_curve(
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


# ------------------------------------------------------------------ the run
@dataclass(frozen=True)
class OverlapEvent:
    """Progress of :func:`overlap_run`, passed to the callback.

    Attributes:
        kind: ``"start"`` (``values``: ``todo`` and ``skipped`` steps,
            ``settings``), ``"phase"`` (``values["phase"]``: ``"hessian"``,
            ``"eigh"``, ``"sketch"``, ``"overlap"``), ``"step"`` (the step is
            stored; ``values`` is its summary) or ``"done"``.
        step: The step concerned (``None`` for ``"start"``/``"done"``).
        index: Steps finished by this call so far.
        total: Steps this call computes.
        values: Details, see ``kind``.
    """

    kind: str
    step: int | None
    index: int
    total: int
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OverlapRunResult:
    """What one call of :func:`overlap_run` did.

    Attributes:
        stage: The stage, ``overlap_<split>``.
        settings: The resolved settings.
        computed: Steps computed and stored by this call.
        skipped: Requested steps that were already finished.
        summaries: The summaries of all requested steps, by step (read back
            for the skipped ones).
        seconds: Wall time.
    """

    stage: str
    settings: OverlapSettings
    computed: tuple[int, ...]
    skipped: tuple[int, ...]
    summaries: dict[int, dict[str, Any]]
    seconds: float


def _write_combined(run: RunFolder, stage: str) -> None:
    """Rewrite ``<stage>/all.csv`` and ``<stage>/summary.csv`` from done steps."""
    rows, scalars = [], []
    for step in run.done_steps(stage):
        rows.extend(run.read_table(run.path_for(stage, step, ".csv")))
        summary = run.read_json(run.path_for(stage, step, ".json"))
        scalars.append(_summary_row(summary))
    run.write_table(run.path_for(stage, None, ".csv"), rows, columns=_CURVE_COLUMNS)
    run.write_table(run.path / stage / "summary.csv", scalars)


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
    run = run if isinstance(run, RunFolder) else RunFolder.open(run)
    notify = on_progress or (lambda event: None)
    begin = time.perf_counter()
    device = torch.device(device)
    chosen = select_steps(run, steps)
    problem = run.problem(device=device, data_dir=data_dir)
    requested = settings or OverlapSettings()
    split = requested.split or "train"
    stage = overlap_stage(split)
    resolved = resolve_overlap_settings(run, requested, num_params=problem.num_params)
    wanted = resolved.stored()
    computed, skipped, summaries, seconds = run_stage_steps(
        run,
        "overlap",
        stage,
        chosen,
        wanted,
        lambda step, on_phase: overlap_at_step(
            run,
            step,
            resolved,
            problem=problem,
            device=device,
            max_cols=max_cols,
            on_phase=on_phase,
        ),
        event=OverlapEvent,
        columns=_CURVE_COLUMNS,
        summary_row=_summary_row,
        write_combined=_write_combined,
        force=force,
        device=device,
        data_dir=data_dir,
        notify=notify,
        begin=begin,
    )
    return OverlapRunResult(
        stage=stage,
        settings=resolved,
        computed=tuple(computed),
        skipped=tuple(skipped),
        summaries={s: summaries[s] for s in chosen},
        seconds=seconds,
    )


def run_stage_steps(
    run: RunFolder,
    command: str,
    stage: str,
    chosen: list[int],
    wanted: dict[str, Any],
    compute: Callable[[int, Callable[[str], None]], Any],
    *,
    event: Callable[..., Any],
    columns: Sequence[str],
    summary_row: Callable[[Mapping[str, Any]], dict[str, Any]],
    write_combined: Callable[[RunFolder, str], None],
    force: bool,
    device: torch.device,
    data_dir: str | Path | None,
    notify: Callable[[Any], None],
    begin: float,
) -> tuple[list[int], list[int], dict[int, dict[str, Any]], float]:
    """Compute and store a per-step stage, skipping finished steps.

    Shared by :func:`overlap_run` and the exhaustive check: checks that the
    finished steps have the ``wanted`` settings, records the call in
    ``invocations/``, computes each step to do (``compute(step, on_phase)``
    returns an object with ``rows`` and ``summary``), writes its CSV and JSON,
    marks it done and rewrites the combined tables, and notifies ``event``
    objects (``"start"``, ``"phase"``, ``"step"``, ``"done"``).

    Returns:
        The steps computed and skipped, every chosen step's summary by step,
        and the wall time since ``begin``.

    Raises:
        OverlapSettingsError: If finished steps were computed with other
            settings and ``force`` is false.
    """
    todo, skipped = [], []
    for step in chosen:
        if force or not run.is_done(stage, step, verify=True):
            todo.append(step)
            continue
        entry = run.entry(stage, step) or {}
        have = entry.get("info", {}).get("settings", {})
        differences = _differences(have, wanted)
        if differences:
            listed = ", ".join(f"{n}: {a!r} -> {b!r}" for n, a, b in differences)
            raise OverlapSettingsError(
                f"Step {step} of {stage} in {str(run.path)!r} was computed with "
                f"other settings ({listed}). Pass force=True (--force) to recompute "
                "the finished steps.",
                differences,
            )
        skipped.append(step)
    notify(
        event(
            "start",
            None,
            0,
            len(todo),
            {"todo": todo, "skipped": skipped, "settings": wanted},
        )
    )
    invocation = run.start_invocation(
        command,
        request={"settings": wanted, "steps": chosen, "force": force},
        device=str(device),
        data_dir=None if data_dir is None else str(data_dir),
        versions=package_versions(),
        machine=machine_info(str(device)),
    )
    computed: list[int] = []
    summaries: dict[int, dict[str, Any]] = {}
    try:
        for index, step in enumerate(todo):

            def on_phase(name: str, step=step, index=index) -> None:
                notify(event("phase", step, index, len(todo), {"phase": name}))

            result = compute(step, on_phase)
            run.unmark(stage, step)
            csv_path = run.write_table(
                run.path_for(stage, step, ".csv"), result.rows, columns=columns
            )
            json_path = run.write_json(
                run.path_for(stage, step, ".json"), result.summary
            )
            row = summary_row(result.summary)
            row.pop("step")
            info = {"settings": wanted, **row}
            run.mark_done(stage, step, files=[csv_path, json_path], info=info)
            write_combined(run, stage)
            computed.append(step)
            summaries[step] = result.summary
            notify(event("step", step, index + 1, len(todo), result.summary))
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        invocation.finish(
            status, computed=computed, error=f"{type(error).__name__}: {error}"
        )
        raise
    for step in skipped:
        summaries[step] = run.read_json(run.path_for(stage, step, ".json"))
    if not todo and skipped:
        write_combined(run, stage)
    seconds = time.perf_counter() - begin
    invocation.finish("finished", computed=computed, skipped=skipped)
    notify(event("done", None, len(todo), len(todo), {"seconds": seconds}))
    return computed, skipped, summaries, seconds


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
    stage = overlap_stage(split)
    steps = run.done_steps(stage)
    if not steps:
        raise FileNotFoundError(
            f"No overlap results on the {split} split in {str(run.path)!r}. Run "
            f"`curvlab overlap --run {run.path} --split {split}` first."
        )
    rows, summaries = [], {}
    for step in steps:
        rows.extend(run.read_table(run.path_for(stage, step, ".csv")))
        summaries[step] = run.read_json(run.path_for(stage, step, ".json"))
    return rows, summaries

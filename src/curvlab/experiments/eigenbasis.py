r"""The top Hessian eigenbasis at a recorded step: the science shared by stages.

Both the overlap analysis (:mod:`curvlab.experiments.overlap`) and the exhaustive
check (:mod:`curvlab.experiments.exhaustive`) take the Hessian of the mean loss
over a fixed, class-balanced subset of a split at a recorded step
(:func:`hessian_at_step`) and its ``K`` eigenpairs of largest :math:`|\lambda|`,
either exactly from the dense matrix (:func:`exact_eigenbasis`) or by SEIGH with
its a-posteriori error estimate (Tropp, Yurtsever, Udell & Cevher 2019, §6;
:func:`sketch_of`); both return an :class:`Eigenbasis`.
:class:`HessianStage` runs such a measurement as a stage per split. The traces
and the TIC take their subset here too (:func:`subset_at_step`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from curvlab._checks import check_choice, check_int

# Largest ``D`` of a dense Hessian by default (0.5 GB float64, ``eigh`` in minutes).
from curvlab._limits import MAX_DENSE_DIM as DEFAULT_MAX_EXACT_DIM
from curvlab.linalg import a_posteriori_error, sketched_eigh
from curvlab.operators import HessianOperator
from curvlab.problems import BatchedData, Problem, balanced_subset
from curvlab.runs import RunFolder
from curvlab.runs.stage import (
    StageEvent,
    StageRunResult,
    StepProgress,
    TableStage,
    pick_setting,
    read_table_stage,
    resolve_settings,
    run_stage,
    stored_settings,
)

__all__ = [
    "DEFAULT_MAX_COLS",
    "DEFAULT_MAX_EXACT_DIM",
    "DEFAULT_NUM_PROBES",
    "DEFAULT_SAMPLES_PER_CLASS",
    "SPLITS",
    "TEST_MATRICES",
    "Eigenbasis",
    "EigenbasisSettings",
    "HessianStage",
    "StepHessian",
    "default_num_outer",
    "exact_eigenbasis",
    "hessian_at_step",
    "hessian_subset",
    "resolve_eigenbasis_settings",
    "sketch_of",
    "subset_at_step",
    "subset_settings",
]

#: Splits the Hessian can be taken on.
SPLITS = ("train", "test")

#: Test matrices of the sketch.
TEST_MATRICES = ("ssrft", "gaussian", "rademacher")

#: Dtypes of model, data and products.
DTYPES = ("float32", "float64")

#: The paper's Hessian subsets: 500 samples of 10 classes (papers.md §1.5).
DEFAULT_SAMPLES_PER_CLASS = 50

#: Default number of Gaussian probes of the a-posteriori error (TYUC2019, paper).
DEFAULT_NUM_PROBES = 30

#: Default columns per pass over the data (memory of the Hessian products).
DEFAULT_MAX_COLS = 128


def split_stage(kind: str, split: str) -> str:
    """``<kind>_<split>`` (``"overlap_train"``); ``ValueError`` for another split."""
    return f"{kind}_{check_choice('split', split, SPLITS)}"


def default_num_outer(num_params: int) -> int:
    """Default ``K`` of ``D = num_params``: 5%, at least 1, at most 1000, below ``D``.

    The paper measures ``K = 355`` of ``D = 7030`` (mnist_mini) and ``K = 1000``
    or ``1500`` of ``D ~ 10^6..10^7`` (papers.md §1.4).

    Example:
        >>> default_num_outer(7030), default_num_outer(650), default_num_outer(10**6)
        (352, 32, 1000)
    """
    return max(1, min(round(0.05 * num_params), 1000, num_params - 1))


@dataclass(frozen=True)
class EigenbasisSettings:
    """What a top-eigenbasis stage computes; ``None`` means "not given".

    :func:`resolve_eigenbasis_settings` sets each field to the requested value,
    else the one of the stage's finished steps, else the default below.

    Attributes:
        split: ``"train"`` (default) or ``"test"``: the Hessian's split.
        num_outer: ``K``, eigenpairs (default :func:`default_num_outer`: 5% of
            ``D``, at most 1000, below ``D``).
        num_inner: Sketch only: ``s`` Hessian-vector products, ``K <= s <= D``
            (default ``min(2K, D)``).
        samples_per_class: Hessian samples per class (regression: in total);
            default 50 (500 for 10 classes, as the paper).
        test_matrix: Sketch only: ``"ssrft"`` (default), ``"gaussian"`` or
            ``"rademacher"``.
        num_probes: Sketch only: Gaussian probes of the a-posteriori error
            (default 30).
        seed: Seed of the test matrices and probes (default: the run's).
        dtype: ``"float32"`` or ``"float64"``: model, data and products
            (default: the run's).
    """

    split: str | None = None
    num_outer: int | None = None
    num_inner: int | None = None
    samples_per_class: int | None = None
    test_matrix: str | None = None
    num_probes: int | None = None
    seed: int | None = None
    dtype: str | None = None

    #: Fields that only decide whether to compute, not the numbers.
    unstored: ClassVar[tuple[str, ...]] = ()

    def stored(self) -> dict[str, Any]:
        """The fields that decide the numbers, as kept in the manifest."""
        names = [f.name for f in dataclasses.fields(self)]
        return {n: getattr(self, n) for n in names if n not in self.unstored}


def resolve_eigenbasis_settings(
    run: RunFolder,
    kind: str,
    requested: EigenbasisSettings,
    *,
    num_params: int | None = None,
    stored: Mapping[str, Any] | None = None,
    own_settings: Callable[..., tuple[dict, dict, bool]] | None = None,
) -> Any:
    """Fill the unset fields of a stage's settings (:class:`EigenbasisSettings`).

    Args:
        run: The run folder (its seed, dtype and problem size).
        kind: The stage's kind; its name is ``<kind>_<split>``.
        requested: The settings asked for.
        num_params: ``D`` (default: built from the run's problem).
        stored: Settings to resume with (default: the stage's finished steps').
        own_settings: ``own_settings(run, requested, stored, D)`` of a stage
            with settings of its own (``requested.split`` set): those resolved
            and checked, the stored settings to resolve the others from, and
            whether SEIGH is used (else ``K <= D``, sketch-only fields ``None``).

    Returns:
        Settings of ``requested``'s type with every field set.

    Raises:
        ValueError: If a value is out of range.
        TypeError: If a value has the wrong type.
    """
    split = requested.split or "train"
    stage = split_stage(kind, split)
    stored = dict(stored_settings(run, stage) if stored is None else stored)
    dim = run.problem().num_params if num_params is None else num_params
    own, sketch = {}, True
    if own_settings is not None:
        requested = dataclasses.replace(requested, split=split)
        own, stored, sketch = own_settings(run, requested, stored, dim)

    def pick(name: str, default: Any) -> Any:
        return pick_setting(name, getattr(requested, name), stored, default)

    num_outer = pick("num_outer", default_num_outer(dim))
    num_outer = check_int("num_outer", num_outer, 1, dim - 1 if sketch else dim)
    samples = pick("samples_per_class", DEFAULT_SAMPLES_PER_CLASS)
    values = {
        "num_outer": num_outer,
        "samples_per_class": check_int("samples_per_class", samples, 1),
        "seed": check_int("seed", pick("seed", run.config.seed), 0),
        "dtype": check_choice("dtype", pick("dtype", run.config.dtype), DTYPES),
    }
    if sketch:
        num_inner = pick("num_inner", min(2 * num_outer, dim))
        test_matrix = pick("test_matrix", "ssrft")
        num_probes = pick("num_probes", DEFAULT_NUM_PROBES)
        values["num_inner"] = check_int("num_inner", num_inner, num_outer, dim)
        values["test_matrix"] = check_choice("test_matrix", test_matrix, TEST_MATRICES)
        values["num_probes"] = check_int("num_probes", num_probes, 1)
    return type(requested)(split=split, **own, **values)  # sketch-only: None


def subset_settings(
    run: RunFolder, stage: str, requested: Any, **own: tuple[Any, int | None]
) -> dict[str, Any]:
    """Resolve and check the settings of a stage on the train subset.

    Args:
        run: The run folder.
        stage: The stage's name (its finished steps' settings are the stored).
        requested: The settings asked for (``None`` fields: not given).
        **own: The stage's own settings, ``(default, smallest int or None)``.

    Returns:
        ``{setting: value}``: the own settings, then ``samples_per_class``
        (default 50), ``seed`` and ``dtype`` (the run's).

    Raises:
        ValueError: If a setting is out of range.
        TypeError: If a setting has the wrong type.
    """
    defaults = {name: default for name, (default, _) in own.items()}
    defaults["samples_per_class"] = DEFAULT_SAMPLES_PER_CLASS
    defaults |= {"seed": run.config.seed, "dtype": run.config.dtype}
    values = resolve_settings(requested, stored_settings(run, stage), defaults)
    lowest = {name: low for name, (_, low) in own.items() if low is not None}
    for name, low in {**lowest, "samples_per_class": 1, "seed": 0}.items():
        check_int(name, values[name], low)
    check_choice("dtype", values["dtype"], DTYPES)
    return values


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
        The batches (the problem's batch size) and their indices into the split.

    Raises:
        ValueError: If the split is unknown or too small.
    """
    check_choice("split", split, SPLITS)
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


def subset_at_step(
    run: RunFolder,
    step: int,
    problem: Problem,
    settings: Any,
    split: str = "train",
) -> tuple[BatchedData, Tensor]:
    """Load a step into the problem's model; the :func:`hessian_subset` in its dtype.

    The model is changed in place: the step's parameters, ``settings.dtype``
    (if set), eval mode.

    Raises:
        MissingStepError: If the step is not recorded.
        ValueError: If the subset cannot be drawn.
    """
    model = run.load_into(problem.model, step)
    if settings.dtype is not None:
        model.to(getattr(torch, settings.dtype))
    model.eval()
    dtype = next(model.parameters()).dtype
    return hessian_subset(problem, split, settings.samples_per_class, dtype=dtype)


def hessian_at_step(
    run: RunFolder,
    step: int,
    problem: Problem,
    settings: EigenbasisSettings,
    *,
    max_cols: int | None = DEFAULT_MAX_COLS,
) -> tuple[HessianOperator, Tensor, dict[str, Any]]:
    """Load a step into the problem's model (:func:`subset_at_step`); its Hessian.

    Returns:
        The Hessian of the mean loss over the subset, the flat parameter vector
        (in the operator's order, its dtype and device) and the JSON record of
        the subset (``split``, ``num_samples``, ``samples_per_class``,
        ``indices``).

    Raises:
        MissingStepError: If the step is not recorded.
        ValueError: If the subset cannot be drawn.
    """
    data, indices = subset_at_step(run, step, problem, settings, settings.split)
    model = problem.model
    op = HessianOperator(model, problem.loss_fn, data, max_cols=max_cols)
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    subset = {"split": settings.split, "num_samples": int(indices.numel())}
    subset |= {"samples_per_class": settings.samples_per_class}
    return op, params, {**subset, "indices": indices.tolist()}


class StepHessian(NamedTuple):
    """A step's Hessian (:func:`hessian_at_step`), its load start and phase callback."""

    start: float
    phase: Callable[[str], None]
    op: HessianOperator
    params: Tensor
    subset: dict[str, Any]


@dataclass(frozen=True)
class Eigenbasis:
    r"""The top eigenpairs by :math:`|\lambda|` of a Hessian, with diagnostics.

    Attributes:
        method: ``"exact"``, ``"sketch"`` or ``"distributed"`` (a solved
            measurement store, :mod:`curvlab.experiments.sketch_stages`).
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
    check_int("num_outer", num_outer, 1, dim)
    start = time.perf_counter()
    dense = op.to_dense(max_dim=max_dim, chunk_size=op.max_cols or 256)
    hessian_seconds = time.perf_counter() - start
    start = time.perf_counter()
    eps = torch.finfo(dense.dtype).eps
    H = dense.to(torch.float64, copy=True)
    dense = dense if keep_dense else None
    H = H.add_(H.mT.clone()).mul_(0.5)  # symmetrise against rounding
    values, vectors = torch.linalg.eigh(H)
    eigh_seconds = time.perf_counter() - start
    del H
    order = torch.argsort(values.abs(), descending=True, stable=True)
    values, top = values[order], order[:num_outer]
    biggest = float(values.abs().max()) if dim else 0.0
    tolerance = dim * eps * biggest
    squares = values.cpu().square()
    total = float(squares.sum())
    tails = squares.flip(0).cumsum(0).flip(0)  # tails[r] = sum_{i >= r}
    tail = torch.cat([tails, squares.new_zeros(1)])[: num_outer + 1]
    scree = (tail / total if total > 0 else torch.zeros_like(tail)).tolist()
    error_sq = float(tail[num_outer])
    error = {"kind": "exact", "error": math.sqrt(error_sq), "error_sq": error_sq}
    error["relative_error"] = math.sqrt(error_sq / total) if total > 0 else 0.0
    error |= {"op_norm_sq": total, "num_probes": 0, "bounds": []}
    return Eigenbasis(
        method="exact",
        eigenvalues=values[:num_outer],
        eigenvectors=vectors[:, top],
        a_posteriori=error | {"scree_lower": scree, "scree_upper": scree},
        trace=float(values.sum()),
        fraction_negative=float((values < 0).double().mean()),
        fraction_negative_beyond_rounding=float((values < -tolerance).double().mean()),
        negative_tolerance=tolerance,
        all_eigenvalues=values.cpu(),
        dense=dense,
        num_matvecs={"eigendecomposition": dim, "a_posteriori": 0},
        seconds={"hessian": hessian_seconds, "eigh": eigh_seconds},
    )


def certified_eigenbasis(
    method: str, eigh: Any, cert: Any, num_matvecs: int, seconds: dict[str, float]
) -> Eigenbasis:
    """The :class:`Eigenbasis` of a sketched ``eigh`` and its certificate.

    ``cert`` (an :class:`~curvlab.linalg.APosterioriError`) becomes the JSON
    record ``a_posteriori`` (``kind="estimate"``); ``num_matvecs`` counts the
    products of the eigendecomposition.
    """
    names = ("error", "error_sq", "relative_error", "op_norm_sq", "approx_norm_sq")
    record = {"kind": "estimate", **{n: getattr(cert, n) for n in names}}
    record["num_probes"] = cert.num_probes
    keys = ("epsilon", "p_under", "p_over")
    record["bounds"] = [dict(zip(keys, bound, strict=True)) for bound in cert.bounds]
    record["scree_lower"] = cert.scree_lower.tolist()
    record["scree_upper"] = cert.scree_upper.tolist()
    counts = {"eigendecomposition": num_matvecs, "a_posteriori": cert.num_matvecs}
    basis = (eigh.eigenvalues, eigh.eigenvectors, record)
    return Eigenbasis(method, *basis, num_matvecs=counts, seconds=seconds)


def sketch_of(op, settings: EigenbasisSettings) -> Eigenbasis:
    r"""Top eigenpairs by :math:`|\lambda|` by SEIGH, with the a-posteriori error.

    :func:`~curvlab.linalg.sketched_eigh` (``s = num_inner`` products; Fernandez
    et al. 2025, Alg. 2), then ``num_probes`` Gaussian probes estimate
    :math:`\|H - W \Lambda W^\top\|_F^2` and :math:`\|H\|_F^2`
    (:func:`~curvlab.linalg.a_posteriori_error`; TYUC2019 §6), with the
    probabilities that the estimate is off by a factor :math:`1 \pm \varepsilon`
    and the scree bounds. The test matrices and the probes take independent
    streams of ``seed``.

    Args:
        op: The Hessian (any symmetric operator).
        settings: Resolved settings: ``num_outer`` (``1 <= K < D``),
            ``num_inner`` (``K <= s <= D``), ``test_matrix``, ``seed``,
            ``num_probes``.

    Returns:
        The eigenbasis (operator's dtype and device) and its error estimate.

    Raises:
        ValueError: If a size is out of range.
        FloatingPointError: If a product is NaN or Inf.
    """
    s = settings
    start = time.perf_counter()
    sketch = sketched_eigh(
        op, s.num_outer, s.num_inner, test_matrix=s.test_matrix, seed=s.seed
    )
    sketch_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cert = a_posteriori_error(op, sketch, num_probes=s.num_probes, seed=s.seed)
    seconds = {"sketch": sketch_seconds, "a_posteriori": time.perf_counter() - start}
    return certified_eigenbasis("sketch", sketch, cert, sketch.num_matvecs, seconds)


class HessianStage(TableStage):
    """A table stage measured on the Hessian at each recorded step, per split.

    Its name is ``<command>_<split>``. A subclass names what it holds (``what``,
    for messages) and its settings (``settings_type``), and defines
    ``own_settings`` (:func:`resolve_eigenbasis_settings`), ``measure(run,
    step, settings, hessian)`` (one step's result from a :class:`StepHessian`,
    with ``rows`` and ``summary``) and :meth:`summary_row`. Its module exports the
    classmethods under function names (``overlap_run = OverlapStage.run_on``).
    ``settings`` are resolved once, at construction.
    """

    what: str
    settings_type: type[EigenbasisSettings]
    own_settings: Callable[..., tuple[dict[str, Any], dict[str, Any], bool]]
    measure: Callable[..., Any]

    def __init__(
        self,
        run: RunFolder,
        settings: Any,
        problem: Problem,
        *,
        max_cols: int | None = DEFAULT_MAX_COLS,
    ):
        super().__init__(run)
        self.settings = self.resolve(run, settings, num_params=problem.num_params)
        self.stored = self.settings.stored()
        self.name = split_stage(self.command, self.settings.split)
        self.problem = problem
        self.max_cols = max_cols

    @classmethod
    def resolve(
        cls,
        run: RunFolder,
        requested: Any = None,
        *,
        num_params: int | None = None,
        stored: Mapping[str, Any] | None = None,
    ) -> Any:
        """Fill the unset fields of the settings and check them.

        :func:`resolve_eigenbasis_settings` with the stage's ``own_settings``
        (``requested=None``: nothing asked).

        Raises:
            ValueError: If a value is out of range (e.g. ``num_outer >= D`` for
                the sketch, or ``D`` too large for a dense ``eigh``).
            TypeError: If a value has the wrong type.
        """
        requested = requested or cls.settings_type()
        options = {"num_params": num_params, "stored": stored}
        options["own_settings"] = cls.own_settings
        return resolve_eigenbasis_settings(run, cls.command, requested, **options)

    @classmethod
    def at_step(
        cls,
        run: RunFolder,
        step: int,
        settings: Any = None,
        *,
        problem: Problem | None = None,
        device: str | torch.device = "cpu",
        data_dir: str | Path | None = None,
        max_cols: int | None = DEFAULT_MAX_COLS,
        on_phase: Callable[[str], None] | None = None,
    ) -> Any:
        """Measure one step; nothing is stored.

        ``settings`` are resolved as by :meth:`run_on`; ``problem`` (built on
        ``device`` when ``None``) gets the step's parameters; ``on_phase`` is
        called with the name of each phase.

        Returns:
            The step's result, with its table ``rows`` and ``summary``.

        Raises:
            MissingStepError: If the step is not recorded.
            ValueError: If the settings are invalid or the subset is too large.
        """
        if problem is None:
            problem = run.problem(device=device, data_dir=data_dir)
        settings = cls.resolve(run, settings, num_params=problem.num_params)
        return cls._measure_step(run, step, settings, problem, max_cols, on_phase)

    @classmethod
    def _measure_step(cls, run, step, settings, problem, max_cols, on_phase) -> Any:
        phase = on_phase or (lambda name: None)
        phase("hessian")
        start = time.perf_counter()
        hessian = hessian_at_step(run, step, problem, settings, max_cols=max_cols)
        return cls.measure(run, step, settings, StepHessian(start, phase, *hessian))

    @classmethod
    def run_on(
        cls,
        run: RunFolder | str | Path,
        settings: Any = None,
        steps: str | Iterable[int] | None = None,
        *,
        force: bool = False,
        device: str | torch.device = "cpu",
        data_dir: str | Path | None = None,
        max_cols: int | None = DEFAULT_MAX_COLS,
        on_progress: Callable[[StageEvent], None] | None = None,
    ) -> StageRunResult:
        """Measure and store recorded steps, skipping finished ones.

        :func:`~curvlab.runs.stage.run_stage` of the stage: each step's CSV and
        JSON are written atomically, then its manifest entry, then ``all.csv``
        and ``summary.csv``; an interrupted call resumes.

        Args:
            run: The run folder (or its path).
            settings: What to compute; unset fields come from the stage's
                stored settings, then the defaults.
            steps: Steps (default: every recorded one), a list or a string
                such as ``"0,100:1000:100"``.
            force: Recompute the requested finished steps, also those computed
                with other settings.
            device: Device of model, data and products.
            data_dir: Data folder of file-based problems.
            max_cols: Hessian columns per pass over the data (memory).
            on_progress: Called with each :class:`~curvlab.runs.stage.StageEvent`.

        Raises:
            SettingsConflictError: If finished steps were computed with other
                settings and ``force`` is false.
            MissingStepError: If a requested step is not recorded.
            ValueError: If the settings are invalid (e.g. the problem is too
                large for a dense ``eigh``) or the subset cannot be drawn.
        """
        run = run if isinstance(run, RunFolder) else RunFolder.open(run)
        problem = run.problem(device=torch.device(device), data_dir=data_dir)
        stage = cls(run, settings, problem, max_cols=max_cols)
        options = {"device": device, "data_dir": data_dir, "on_progress": on_progress}
        return run_stage(stage, steps, force=force, **options)

    @classmethod
    def load(
        cls, run: RunFolder | str | Path, split: str = "train"
    ) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
        """The stored rows of every finished step of a split, and the summaries by step.

        Raises:
            FileNotFoundError: If no step of the split is finished.
        """
        run = run if isinstance(run, RunFolder) else RunFolder.open(run)
        return read_table_stage(
            run,
            split_stage(cls.command, split),
            f"{cls.what} on the {split} split",
            f"curvlab {cls.command} --run {run.path} --split {split}",
        )

    def compute(self, step: int, progress: StepProgress) -> Any:
        """Measure one step."""
        options = (self.problem, self.max_cols, progress.phase)
        return self._measure_step(self.run, step, self.settings, *options)

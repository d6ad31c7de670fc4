r"""HesScale's optimization study: AdaHesScale against the optimizers it should beat.

:func:`optimizer_study` trains every (method, learning rate, seed) of a grid on
one problem (default ``mnist5k_mlp``, the HesScale MLP on 5,000 real MNIST
digits) as a resumable training run (:func:`~curvlab.experiments.training.train`)
in the study folder, picks each method's best learning rate, and reports the
learning curves of the best learning rates with mean and standard error over
seeds, a table of final values, each method's time per step as a multiple of
SGD's, and one sentence per finding generated from the numbers. It is HesScale's
third experiment (Elsayed & Mahmood 2022, arXiv 2210.11639; their
``ex1_stationary_mnist.py`` generates the grid, ``core/best_config.py`` picks the
best step size).

**Methods**: ``sgd`` (plain), ``adam``, ``adahesscale`` and ``adahesscalegn``
(:mod:`curvlab.optim.adahesscale`), and ``adahessian``
(:class:`~curvlab.optim.AdaHessian`, the Hutchinson-diagonal baseline), each with
its library defaults except the learning rate.

**The default study**: ``mnist5k_mlp`` (4,000 train and 1,000 test digits),
batch 32, 2,000 steps (16 epochs), curves every 100 steps, 8 seeds, and five
learning rates per method (:data:`DEFAULT_LRS`, half-decades around each
method's best on this problem, found with one seed): SGD 1 to 0.01, Adam and
AdaHesScale 1e-2 to 1e-4, AdaHesScaleGN 1e-3 to 1e-5, AdaHessian 0.1 to 1e-3.
That is 200 runs; ``curvlab optimizers --out STUDY --workers 2`` trains them in
under 6 minutes on 2 CPU cores (``benchmarks/RESULTS.md``).

**Seeds.** Seed :math:`s` seeds the model initialisation, the 80/20 train/test
split of the bundled data and the mini-batch order, so every method sees the
same initial model and batches for one seed, and the spread over seeds covers
all three.

**Curves.** Each run records, every ``eval_every`` steps (before that step's
update), the mean loss and accuracy over the whole train and test splits; the
wall-time axis is the training time only (the timed updates, without the
evaluations), summed up to each recorded step.

**Best learning rate.** ``criterion="final_loss"`` (default): the lowest final
training loss (whole train split, after the last step) averaged over seeds;
``"mean_loss"``: the lowest training loss averaged over the recorded steps and
the seeds (the area under the curve), as HesScale's ``core/best_config.py``
chooses. A learning rate with a diverged seed counts as infinite loss, so it is
never chosen while another learning rate has no diverged seed (HesScale's code
drops such configurations).

**Divergence.** A run whose mini-batch loss turns NaN or infinite stops there;
it is stored as diverged at that step (``diverged_at``), counted in the tables,
and the study goes on.

**Parallel.** Runs are independent: with a Dask ``client`` they are trained on
its workers (:func:`~curvlab.runs.stage.run_grid`), otherwise one after the
other in this process. Timings of runs that share cores are slower; the time
ratios compare methods under the same conditions.

Layout of the study folder::

    STUDY/study.json                  the resolved settings of the latest call
    STUDY/runs/<unit>/                one training run folder per unit, e.g.
                                      runs/adam_lr0.001_seed0/
    STUDY/units/<unit>.json           the unit's summary and curve
    STUDY/manifest/optimizers/<unit>.json, STUDY/invocations/
    STUDY/report/{curves,grid,table}.csv, findings.md, optimizers.png

Example:
    >>> import tempfile
    >>> settings = OptimizersSettings(
    ...     problem="digits_logreg", methods=("sgd", "adahessian"),
    ...     lrs={"sgd": (0.1,), "adahessian": (0.1,)}, num_seeds=1, steps=4,
    ...     batch_size=16, eval_every=2, num_samples=100)
    >>> study = optimizer_study(tempfile.mkdtemp(), settings)
    >>> [row["method"] for row in study.table], study.diverged
    (['sgd', 'adahessian'], 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from curvlab._checks import check_choice, check_int
from curvlab._format import fmt, markdown_table
from curvlab.runs import RunFolder, TrainConfig
from curvlab.runs import stage as framework
from curvlab.runs.config import DTYPES

__all__ = [
    "CRITERIA",
    "DEFAULT_LRS",
    "LABELS",
    "METHODS",
    "OptimizerStudy",
    "OptimizersSettings",
    "OptimizersStage",
    "UnitResult",
    "optimizer_study",
    "unit_key",
]

#: Methods the study trains with.
METHODS = ("sgd", "adam", "adahesscale", "adahesscalegn", "adahessian")

#: Default learning-rate grid per method.
DEFAULT_LRS: dict[str, tuple[float, ...]] = {
    "sgd": (1.0, 0.3, 0.1, 0.03, 0.01),
    "adam": (0.01, 0.003, 0.001, 0.0003, 0.0001),
    "adahesscale": (0.01, 0.003, 0.001, 0.0003, 0.0001),
    "adahesscalegn": (0.001, 0.0003, 0.0001, 3e-05, 1e-05),
    "adahessian": (0.1, 0.03, 0.01, 0.003, 0.001),
}

#: How the best learning rate is chosen (module docstring).
CRITERIA = ("final_loss", "mean_loss")

#: Display name per method.
LABELS = {
    "sgd": "SGD",
    "adam": "Adam",
    "adahesscale": "AdaHesScale",
    "adahesscalegn": "AdaHesScaleGN",
    "adahessian": "AdaHessian",
}

#: Settings that decide a unit's numbers (compared with a stored unit).
_UNIT_SETTINGS = (
    "problem",
    "steps",
    "batch_size",
    "eval_every",
    "num_samples",
    "dtype",
)


@dataclass(frozen=True)
class OptimizersSettings:
    """The study's settings; ``None`` takes the stored value, else the default.

    Attributes:
        problem: Problem name. [``mnist5k_mlp``]
        methods: Methods, from :data:`METHODS`. [all five]
        lrs: Learning rates per method; methods not given keep their stored or
            default grid (:data:`DEFAULT_LRS`).
        num_seeds: Seeds ``0 .. num_seeds - 1`` per (method, lr). [8]
        steps: Optimizer steps per run. [2000]
        batch_size: Samples per step. [32]
        eval_every: Record the curves every this many steps. [100]
        num_samples: Train on a class-balanced subset of this many samples
            (``None``: the whole train split). [None]
        dtype: ``float32`` or ``float64``. [float32]
        criterion: How the best learning rate is chosen, :data:`CRITERIA`.
            [``final_loss``]
    """

    problem: str | None = None
    methods: Sequence[str] | None = None
    lrs: Mapping[str, Sequence[float]] | None = None
    num_seeds: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    eval_every: int | None = None
    num_samples: int | None = None
    dtype: str | None = None
    criterion: str | None = None


DEFAULTS: dict[str, Any] = {
    "problem": "mnist5k_mlp",
    "methods": list(METHODS),
    "lrs": None,  # per method, see DEFAULT_LRS
    "num_seeds": 8,
    "steps": 2000,
    "batch_size": 32,
    "eval_every": 100,
    "num_samples": None,
    "dtype": "float32",
    "criterion": "final_loss",
}


def unit_key(method: str, lr: float, seed: int) -> str:
    """The name of a (method, learning rate, seed) unit and of its run folder.

    Args:
        method: The method.
        lr: The learning rate.
        seed: The seed.

    Returns:
        ``"<method>_lr<lr:g>_seed<seed>"`` without ``+`` (``"sgd_lr1e30_seed0"``).

    Example:
        >>> unit_key("adam", 1e-4, 2)
        'adam_lr0.0001_seed2'
    """
    return f"{method}_lr{lr:g}_seed{seed}".replace("+", "")


def _positive_lr(method: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Learning rates of {method} must be numbers. Got {value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"Learning rates of {method} must be positive and finite. Got {value!r}."
        )
    return float(value)


def _resolve_lrs(
    requested: Mapping[str, Sequence[float]] | None,
    stored: Mapping[str, Any],
    methods: Sequence[str],
) -> dict[str, list[float]]:
    requested = dict(requested or {})
    unknown = sorted(set(requested) - set(METHODS))
    if unknown:
        raise ValueError(
            f"lrs are given for unknown methods {unknown}; methods are "
            f"{', '.join(METHODS)}."
        )
    stored_lrs = stored.get("lrs") or {}
    out = {}
    for method in methods:
        chosen = framework.pick_setting(
            method, requested.get(method), stored_lrs, DEFAULT_LRS[method]
        )
        if isinstance(chosen, str | bytes) or not isinstance(chosen, Sequence):
            chosen = [chosen]
        lrs = [_positive_lr(method, lr) for lr in chosen]
        if not lrs:
            raise ValueError(f"The learning-rate grid of {method} is empty.")
        out[method] = list(dict.fromkeys(lrs))
    return out


@dataclass(frozen=True)
class UnitResult:
    """One trained run of the grid.

    Attributes:
        summary: ``unit``, ``method``, ``lr``, ``seed``, ``steps_done`` (the
            last recorded step), ``diverged_at`` (the step whose mini-batch
            loss was NaN/Inf, else ``None``), ``final_train_loss``,
            ``final_test_accuracy``, ``mean_train_loss`` (over the recorded
            steps), ``seconds_per_step`` and ``curve`` (one dict per recorded
            step: ``step``, ``seconds``, ``train_loss``, ``train_accuracy``,
            ``test_loss``, ``test_accuracy``). A diverged run's final and mean
            losses are ``inf`` and its final accuracy is ``None``.
    """

    summary: dict[str, Any]


class OptimizersStage(framework.GridStage):
    """Every (method, lr, seed) of the study as one resumable training run.

    Args:
        folder: The study folder.
        settings: Requested settings (``None``: stored, else defaults).
        device: Device to train on.
        data_dir: Data folder of file-based problems.
        threads: PyTorch CPU threads per run (``None``: keep).

    Raises:
        ValueError: If a setting is out of range or names an unknown method,
            problem, dtype or criterion.
        TypeError: If a setting has the wrong type.
        FileExistsError: If ``folder`` is a file, or a non-empty folder that
            holds no study.
    """

    name = command = "optimizers"

    def __init__(
        self,
        folder: str | Path,
        settings: OptimizersSettings | None = None,
        *,
        device: str = "cpu",
        data_dir: str | Path | None = None,
        threads: int | None = None,
    ):
        from curvlab import problems

        super().__init__(folder)
        requested = settings or OptimizersSettings()
        path = self.folder.path / "study.json"
        if not path.is_file() and self.folder.path.is_dir():
            others = sorted(
                p.name
                for p in self.folder.path.iterdir()
                if not p.name.startswith(".") and p.name != "invocations"
            )
            if others:
                raise FileExistsError(
                    f"{str(self.folder.path)!r} is not empty and holds no study "
                    f"(no study.json; it holds {', '.join(others[:5])}). Choose a "
                    "new or empty folder."
                )
        stored = self.folder.read_json(path)["settings"] if path.is_file() else {}
        resolved = framework.resolve_settings(requested, stored, DEFAULTS)
        check_choice("problem", resolved["problem"], problems.names())
        methods = resolved["methods"]
        if isinstance(methods, str) or not isinstance(methods, Sequence):
            raise TypeError(f"methods must be a list of names. Got {methods!r}.")
        if not methods:
            raise ValueError(f"methods must name at least one of {', '.join(METHODS)}.")
        for method in methods:
            check_choice("method", method, METHODS)
        resolved["methods"] = list(dict.fromkeys(methods))
        resolved["lrs"] = _resolve_lrs(requested.lrs, stored, resolved["methods"])
        for name in ("num_seeds", "steps", "batch_size", "eval_every"):
            check_int(name, resolved[name], 1)
        if resolved["num_samples"] is not None:
            check_int("num_samples", resolved["num_samples"], 1)
        check_choice("dtype", resolved["dtype"], DTYPES)
        check_choice("criterion", resolved["criterion"], CRITERIA)
        self.stored = resolved
        self.settings = OptimizersSettings(**resolved)
        self.device, self.threads = str(device), threads
        self.data_dir = None if data_dir is None else str(data_dir)
        # interleaved (seed, lr index, method), so that a change of load on a
        # shared machine slows every method alike
        lrs, width = resolved["lrs"], max(len(v) for v in resolved["lrs"].values())
        self._units = {
            unit_key(method, lrs[method][i], seed): (method, lrs[method][i], seed)
            for seed in range(resolved["num_seeds"])
            for i in range(width)
            for method in resolved["methods"]
            if i < len(lrs[method])
        }

    def units(self) -> list[str]:
        """Every (method, lr, seed): by seed, then lr index, then method."""
        return list(self._units)

    def unit(self, key: str) -> tuple[str, float, int]:
        """The method, learning rate and seed of a unit.

        Args:
            key: A unit of this study.

        Returns:
            ``(method, lr, seed)``.
        """
        return self._units[key]

    def unit_settings(self, unit: str) -> dict[str, Any]:
        """The settings that decide the unit's numbers (the grid names the rest)."""
        return {name: self.stored[name] for name in _UNIT_SETTINGS}

    def train_config(self, unit: str) -> TrainConfig:
        """The training config of a unit.

        Args:
            unit: A unit of this study.

        Returns:
            The config (no full-data gradients are recorded).
        """
        method, lr, seed = self._units[unit]
        s = self.stored
        return TrainConfig(
            problem=s["problem"],
            optimizer=method,
            lr=lr,
            steps=s["steps"],
            batch_size=s["batch_size"],
            record_steps=tuple(range(0, s["steps"] + 1, s["eval_every"])),
            seed=seed,
            dtype=s["dtype"],
            num_samples=s["num_samples"],
            record_gradients=False,
        )

    def prepare(self, todo: Sequence[str]) -> None:
        """Store the resolved settings in ``study.json``."""
        self.folder.write_json("study.json", {"settings": self.stored})

    def compute(
        self, unit: str, progress: framework.UnitProgress | None, force: bool
    ) -> UnitResult:
        """Train (or resume) one run; a NaN/Inf loss ends it as diverged."""
        from curvlab.experiments.training import train

        method, lr, seed = self._units[unit]
        label = f"{LABELS[method]} lr {lr:g} seed {seed}"
        reached = {"step": 0}

        def on_train(event) -> None:
            if event.kind in ("start", "step"):
                reached["step"] = event.step
            if progress is not None and event.kind == "record":
                progress.phase(label, event.step)

        diverged_at = None
        path = self.folder.path / "runs" / unit
        config = self.train_config(unit)
        if RunFolder.is_run_folder(path) and RunFolder(path).config != config:
            force = True  # left by a call with other settings; none of it is stored
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            train(
                config,
                path,
                force=force,
                device=self.device,
                data_dir=self.data_dir,
                on_progress=on_train,
            )
        except FloatingPointError:
            diverged_at = reached["step"]
        finally:
            torch.set_num_threads(previous)
        return UnitResult(_summarise(unit, method, lr, seed, path, diverged_at))

    def write(self, unit: str, result: UnitResult) -> tuple[list[Path], dict[str, Any]]:
        """Write ``units/<unit>.json``; the entry keeps the final values."""
        path = self.folder.write_json(f"units/{unit}.json", result.summary)
        info = {k: v for k, v in result.summary.items() if k != "curve"}
        return [path], {"settings": self.unit_settings(unit), **info}

    def read_summary(self, unit: str) -> dict[str, Any]:
        """Read ``units/<unit>.json``."""
        return self.folder.read_json(f"units/{unit}.json")


_CURVE_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def _summarise(
    unit: str, method: str, lr: float, seed: int, path: Path, diverged_at: int | None
) -> dict[str, Any]:
    rows = RunFolder(path).metrics()
    curve, seconds = [], 0.0
    for row in rows:
        seconds += row.get("train_seconds") or 0.0
        curve.append(
            {
                "step": row["step"],
                "seconds": seconds,
                **{key: row.get(key) for key in _CURVE_KEYS},
            }
        )
    losses = [point["train_loss"] for point in curve]
    if diverged_at is None and any(not math.isfinite(x) for x in losses):
        diverged_at = next(
            p["step"] for p in curve if not math.isfinite(p["train_loss"])
        )
    last = curve[-1] if curve else {}
    steps_done = last.get("step", 0)
    finite = diverged_at is None
    return {
        "unit": unit,
        "method": method,
        "lr": lr,
        "seed": seed,
        "steps_done": steps_done,
        "diverged_at": diverged_at,
        "final_train_loss": last.get("train_loss") if finite else math.inf,
        "final_test_accuracy": last.get("test_accuracy") if finite else None,
        "mean_train_loss": sum(losses) / len(losses) if finite else math.inf,
        "seconds_per_step": seconds / steps_done if steps_done else None,
        "curve": curve,
    }


# ------------------------------------------------------------------ report
def _mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


@dataclass(frozen=True)
class OptimizerStudy:
    """The study's results, as :func:`optimizer_study` returns and writes them.

    Attributes:
        folder: The study folder.
        settings: The resolved settings.
        runs: The summary of every unit of the grid, by unit (curves included).
        best_lrs: Each method's best learning rate (``None`` if every learning
            rate had a diverged seed).
        grid: One row per (method, lr): the criterion, the mean final training
            loss and test accuracy over seeds, and the diverged seeds.
        table: One row per method at its best learning rate: final training
            loss and test accuracy (mean and standard error over seeds), runs
            diverged over the method's whole grid, seconds per step and its
            ratio to SGD's.
        curves: The learning curves of the best learning rates: one row per
            (method, recorded step) with the mean and standard error over seeds
            of ``train_loss`` and ``test_accuracy`` and the mean ``seconds``.
        findings: One sentence per finding, generated from the numbers.
        diverged: Runs that diverged, over the whole grid.
        computed: Units trained by this call.
        skipped: Units that were already stored.
        seconds: Wall time of this call.
        files: The report files, by name.
    """

    folder: Path
    settings: OptimizersSettings
    runs: dict[str, dict[str, Any]]
    best_lrs: dict[str, float | None]
    grid: list[dict[str, Any]]
    table: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    findings: list[str]
    diverged: int
    computed: tuple[str, ...]
    skipped: tuple[str, ...]
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)


def _seed_runs(runs, method: str, lr: float, settings) -> list[dict[str, Any]]:
    """The summaries of every seed of one (method, lr)."""
    return [runs[unit_key(method, lr, s)] for s in range(settings.num_seeds)]


def _criterion_value(summary: Mapping[str, Any], criterion: str) -> float:
    key = "final_train_loss" if criterion == "final_loss" else "mean_train_loss"
    value = summary[key]
    return math.inf if value is None or not math.isfinite(value) else value


def _grid_rows(runs, settings: OptimizersSettings) -> list[dict[str, Any]]:
    rows = []
    for method in settings.methods:
        for lr in settings.lrs[method]:
            mine = _seed_runs(runs, method, lr, settings)
            values = [_criterion_value(r, settings.criterion) for r in mine]
            finals = [r["final_train_loss"] for r in mine]  # inf where diverged
            finite = [r for r in mine if r["diverged_at"] is None]
            rows.append(
                {
                    "method": method,
                    "lr": lr,
                    "criterion": sum(values) / len(values),
                    "final_train_loss": sum(finals) / len(finals),
                    "final_test_accuracy": _mean_se(
                        [r["final_test_accuracy"] for r in finite]
                    )[0],
                    "diverged": len(mine) - len(finite),
                    "seeds": len(mine),
                }
            )
    return rows


def _best_lrs(grid, settings: OptimizersSettings) -> dict[str, float | None]:
    best = {}
    for method in settings.methods:
        rows = [
            r for r in grid if r["method"] == method and math.isfinite(r["criterion"])
        ]
        best[method] = min(rows, key=lambda r: r["criterion"])["lr"] if rows else None
    return best


def _curves(runs, best, settings: OptimizersSettings) -> list[dict[str, Any]]:
    out = []
    for method, lr in best.items():
        if lr is None:
            continue
        mine = [run["curve"] for run in _seed_runs(runs, method, lr, settings)]
        for index, point in enumerate(mine[0]):
            points = [curve[index] for curve in mine if index < len(curve)]
            loss, loss_se = _mean_se([p["train_loss"] for p in points])
            accuracy, accuracy_se = _mean_se([p["test_accuracy"] for p in points])
            out.append(
                {
                    "method": method,
                    "lr": lr,
                    "step": point["step"],
                    "seconds": _mean_se([p["seconds"] for p in points])[0],
                    "train_loss": loss,
                    "train_loss_se": loss_se,
                    "test_accuracy": accuracy,
                    "test_accuracy_se": accuracy_se,
                    "seeds": len(points),
                }
            )
    return out


def _table(runs, best, settings: OptimizersSettings) -> list[dict[str, Any]]:
    def seconds(method: str) -> float | None:
        times = [
            r["seconds_per_step"]
            for r in runs.values()
            if r["method"] == method and r["seconds_per_step"] is not None
        ]
        return sorted(times)[len(times) // 2] if times else None  # median

    sgd = seconds("sgd") if "sgd" in settings.methods else None
    rows = []
    for method in settings.methods:
        lr = best[method]
        mine = [r for r in runs.values() if r["method"] == method]
        at_best = [] if lr is None else _seed_runs(runs, method, lr, settings)
        loss, loss_se = _mean_se([r["final_train_loss"] for r in at_best])
        accuracy, accuracy_se = _mean_se([r["final_test_accuracy"] for r in at_best])
        per_step = seconds(method)
        rows.append(
            {
                "method": method,
                "best_lr": lr,
                "final_train_loss": loss,
                "final_train_loss_se": loss_se,
                "final_test_accuracy": accuracy,
                "final_test_accuracy_se": accuracy_se,
                "diverged": sum(r["diverged_at"] is not None for r in mine),
                "runs": len(mine),
                "seconds_per_step": per_step,
                "time_vs_sgd": None if not sgd or per_step is None else per_step / sgd,
            }
        )
    return rows


def _pm(mean: float | None, error: float | None, scale: float = 1.0) -> str:
    """``mean ± error`` (``error`` left out when there is none)."""
    if mean is None:
        return "-"
    if scale != 1.0:
        text = f"{scale * mean:.2f}"
        return text if error is None else f"{text} ± {scale * error:.2f}"
    return fmt(mean, 3) if error is None else f"{fmt(mean, 3)} ± {fmt(error, 2)}"


def _loss(row: Mapping[str, Any]) -> str:
    return _pm(row["final_train_loss"], row["final_train_loss_se"])


def _accuracy(row: Mapping[str, Any]) -> str:
    return _pm(row["final_test_accuracy"], row["final_test_accuracy_se"], 100)


def _compare(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> str:
    """'lower than', 'higher than' or 'indistinguishable from'.

    Two values are indistinguishable when they differ by at most two joint
    standard errors; without standard errors (one seed) only the order counts.
    """
    x, y = a[key], b[key]
    ex, ey = a.get(f"{key}_se"), b.get(f"{key}_se")
    margin = 0.0 if ex is None or ey is None else 2 * math.sqrt(ex**2 + ey**2)
    if x == y or abs(x - y) <= margin:
        return "indistinguishable from"
    return "lower than" if x < y else "higher than"


def _findings(table, settings: OptimizersSettings) -> list[str]:
    out = []
    rows = {r["method"]: r for r in table if r["best_lr"] is not None}
    for row in table:
        if row["best_lr"] is None:
            out.append(
                f"Every learning rate of {LABELS[row['method']]} had a diverged seed, "
                "so it has no best learning rate."
            )
    if rows:
        ranked = sorted(rows.values(), key=lambda r: r["final_train_loss"])
        first = ranked[0]
        text = (
            f"On {settings.problem}, {LABELS[first['method']]} (lr "
            f"{first['best_lr']:g}) reached the lowest final training loss, "
            f"{_loss(first)}"
        )
        if len(ranked) > 1:
            second = ranked[1]
            text += (
                f"; the runner-up {LABELS[second['method']]} reached {_loss(second)}"
            )
            if settings.num_seeds > 1:
                apart = _compare(first, second, "final_train_loss") != (
                    "indistinguishable from"
                )
                text += (
                    " (more than two standard errors apart)"
                    if apart
                    else " (within two standard errors)"
                )
        seeds = settings.num_seeds
        spread = (
            "; one seed" if seeds == 1 else f"; mean ± standard error, {seeds} seeds"
        )
        out.append(f"{text}{spread}.")
        scored = [r for r in rows.values() if r["final_test_accuracy"] is not None]
        if scored:
            top = max(scored, key=lambda r: r["final_test_accuracy"])
            out.append(
                f"The highest final test accuracy was {LABELS[top['method']]}'s, "
                f"{_accuracy(top)} %."
            )
    for mine in ("adahesscale", "adahesscalegn"):
        if mine not in rows:
            continue
        for other in ("adam", "adahessian", "sgd"):
            if other not in rows:
                continue
            a, b = rows[mine], rows[other]
            text = (
                f"At their best learning rates {LABELS[mine]}'s final training "
                f"loss ({fmt(a['final_train_loss'], 3)}) was "
                f"{_compare(a, b, 'final_train_loss')} {LABELS[other]}'s "
                f"({fmt(b['final_train_loss'], 3)})"
            )
            if a["final_test_accuracy"] is not None:
                text += (
                    f" and its final test accuracy "
                    f"({100 * a['final_test_accuracy']:.2f}%) "
                    f"{_compare(a, b, 'final_test_accuracy')} "
                    f"{100 * b['final_test_accuracy']:.2f}%"
                )
            decide = (
                "two standard errors decide"
                if settings.num_seeds > 1
                else "one seed: no standard errors"
            )
            out.append(f"{text} ({decide}).")
    for method, row in rows.items():
        lrs = settings.lrs[method]
        if len(lrs) > 1 and row["best_lr"] in (min(lrs), max(lrs)):
            out.append(
                f"{LABELS[method]}'s best learning rate {row['best_lr']:g} lies at "
                "the edge of its grid; a wider grid may do better."
            )
    timed = [r for r in table if r["time_vs_sgd"] is not None and r["method"] != "sgd"]
    if timed:
        parts = ", ".join(
            f"{LABELS[r['method']]} {r['time_vs_sgd']:.2f}x" for r in timed
        )
        out.append(f"Time per step as a multiple of SGD's (median over runs): {parts}.")
    diverged = sum(r["diverged"] for r in table)
    total = sum(r["runs"] for r in table)
    if diverged:
        parts = ", ".join(
            f"{LABELS[r['method']]} {r['diverged']}" for r in table if r["diverged"]
        )
        out.append(f"{diverged} of {total} runs diverged ({parts}).")
    else:
        out.append(f"None of the {total} runs diverged.")
    return out


def _markdown(study_table, findings, settings: OptimizersSettings) -> str:
    header = (
        "method",
        "best lr",
        "final train loss",
        "final test acc. (%)",
        "diverged runs",
        "s / step",
        "x SGD",
    )
    body = []
    for r in study_table:
        body.append(
            (
                LABELS[r["method"]],
                fmt(r["best_lr"], 3),
                _loss(r),
                _accuracy(r),
                f"{r['diverged']}/{r['runs']}",
                fmt(r["seconds_per_step"], 3),
                fmt(r["time_vs_sgd"], 3),
            )
        )
    criterion = (
        "final training loss averaged over seeds"
        if settings.criterion == "final_loss"
        else "training loss averaged over recorded steps and seeds"
    )
    lines = [
        f"Problem {settings.problem}: {settings.steps} steps of batch "
        f"{settings.batch_size}, {settings.num_seeds} seeds; best learning rate by "
        f"{criterion}; mean ± standard error over seeds.",
        "",
        markdown_table(header, body),
        "",
        *[f"- {sentence}" for sentence in findings],
    ]
    return "\n".join(lines)


def _report(
    folder: RunFolder, result: framework.GridRunResult, stage
) -> OptimizerStudy:
    from curvlab.experiments.optimizers_plots import plot_curves

    settings = stage.settings
    runs = result.summaries
    grid = _grid_rows(runs, settings)
    best = _best_lrs(grid, settings)
    curves = _curves(runs, best, settings)
    table = _table(runs, best, settings)
    findings = _findings(table, settings)
    files = {
        "curves": folder.write_table("report/curves.csv", curves),
        "grid": folder.write_table("report/grid.csv", grid),
        "table": folder.write_table("report/table.csv", table),
        "findings": folder.write_text(
            "report/findings.md", _markdown(table, findings, settings) + "\n"
        ),
    }
    files["figure"] = plot_curves(folder, curves, settings, labels=LABELS)
    return OptimizerStudy(
        folder=folder.path,
        settings=settings,
        runs=runs,
        best_lrs=best,
        grid=grid,
        table=table,
        curves=curves,
        findings=findings,
        diverged=sum(r["diverged"] for r in table),
        computed=result.computed,
        skipped=result.skipped,
        seconds=result.seconds,
        files=files,
    )


def optimizer_study(
    folder: str | Path,
    settings: OptimizersSettings | None = None,
    *,
    force: bool = False,
    client: Any = None,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    threads: int | None = None,
    on_progress: Callable[[framework.StageEvent], None] | None = None,
) -> OptimizerStudy:
    """Run (or resume) the optimization study in ``folder`` and write its report.

    Args:
        folder: The study folder; created if missing, resumed if it holds a
            study (stored units are skipped, interrupted runs resume from their
            last checkpoint).
        settings: Requested settings; ``None`` fields take the stored values,
            else the defaults (:class:`OptimizersSettings`).
        force: Retrain stored units from scratch, also those trained with other
            settings.
        client: A ``distributed.Client`` (workers with one thread each) to
            train the runs on; ``None`` trains them one after the other here.
        device: Device to train on.
        data_dir: Data folder of file-based problems.
        threads: PyTorch CPU threads per run (``None``: keep).
        on_progress: Receives the :class:`~curvlab.runs.stage.StageEvent` of
            :func:`~curvlab.runs.stage.run_grid` (an exception it raises stops
            the study; a later call resumes).

    Returns:
        The study's results (also written to ``folder/report/``).

    Raises:
        SettingsConflictError: If stored units were trained with other settings
            (problem, steps, batch size, eval_every, num_samples, dtype) and
            ``force`` is false.
        ValueError: If a setting is invalid.
        TypeError: If a setting has the wrong type.
        FileExistsError: If ``folder`` is a non-empty folder that holds no study.
    """
    stage = OptimizersStage(
        folder, settings, device=device, data_dir=data_dir, threads=threads
    )
    result = framework.run_grid(
        stage,
        force=force,
        client=client,
        device=stage.device,
        data_dir=stage.data_dir,
        on_progress=on_progress,
    )
    return _report(stage.folder, result, stage)

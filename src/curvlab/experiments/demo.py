r"""``curvlab demo``: every experiment on one small problem, and a report.

:func:`demo_run` trains ``digits_mlp`` (``D = 3190``) with SGD and records it in a
run folder (:class:`~curvlab.runs.RunFolder`), then runs the library's
measurements on the recorded steps, each a resumable stage of that folder:

1. ``train``: :func:`~curvlab.experiments.training.train_run` (parameters, full
   gradient and metrics at the record steps);
2. ``spectrum``: :func:`~curvlab.experiments.spectrum.spectrum_run` with
   ``layers=True``: the full Hessian's spectrum and every layer's diagonal block,
   exact (dense ``eigh``) at this size;
3. ``overlap``: :func:`~curvlab.experiments.overlap.overlap_run`: overlap of the
   magnitude masks with the top Hessian eigenspace, exact eigenbasis;
4. ``exhaustive``: :func:`~curvlab.experiments.exhaustive.exhaustive_run`:
   the sketched eigendecomposition (SEIGH) against the exact one;
5. ``hesscale``: :func:`~curvlab.experiments.hesscale_quality.hesscale_quality`
   with the demo's architecture (64-20-20-20-20-20-10 tanh), stored as stage
   ``hesscale_quality``;
6. ``report``: the figures and ``report.md`` / ``report.html``
   (:func:`curvlab.experiments.report.write_report`), rendered from the results
   the stages returned (:class:`~curvlab.experiments.report.DemoResults`).

Every stage skips what the folder already holds, so calling :func:`demo_run`
again on the same folder redoes nothing (and an interrupted demo resumes); the
report reads back only what a call skipped. It is rewritten only when an
earlier stage computed something or a report file is missing. Nothing here
prints: progress goes to an optional callback (:class:`DemoEvent`), which
``curvlab demo`` turns into progress bars.

Example:
    >>> import tempfile
    >>> report, summary = demo_run(tempfile.mkdtemp(), quick_settings())
    >>> report.name, summary["stages"]["train"]["status"]
    ('report.md', 'computed')
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from curvlab.experiments.exhaustive import (
    ExhaustiveSettings,
    exhaustive_run,
    load_exhaustive,
)
from curvlab.experiments.hesscale_quality import hesscale_quality
from curvlab.experiments.overlap import OverlapSettings, load_overlap, overlap_run
from curvlab.experiments.report import (
    HESSCALE_FILE,
    HESSCALE_STAGE,
    REPORT_STAGE,
    TIMINGS_FILE,
    DemoResults,
    Report,
    StepTables,
    write_report,
)
from curvlab.experiments.spectrum import (
    SpectrumSettings,
    read_spectrum,
    spectrum_run,
)
from curvlab.experiments.training import derived_seeds, train_run
from curvlab.runs import RunFolder, TrainConfig
from curvlab.runs.stage import StageEvent, StageRunResult

__all__ = [
    "DEMO_STAGES",
    "DemoEvent",
    "DemoSettings",
    "HesScaleSettings",
    "default_record_steps",
    "demo_run",
    "quick_settings",
]

#: The demo's stages, in order.
DEMO_STAGES = ("train", "spectrum", "overlap", "exhaustive", "hesscale", "report")

#: Fractions of the training at which the default schedule records: dense early,
#: where the spectrum changes fastest.
_RECORD_FRACTIONS = (0.0, 0.05, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class HesScaleSettings:
    """The short HesScale quality comparison of the demo.

    Attributes:
        seeds: One trained model per seed.
        num_samples: Train samples measured per seed (batch size 1).
        width: Units per hidden layer.
        depth: Hidden layers (20 x 5: the architecture of ``digits_mlp``).
        epochs: SGD epochs before the measurement.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    num_samples: int = 50
    width: int = 20
    depth: int = 5
    epochs: int = 2

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict."""
        values = dataclasses.asdict(self)
        values["seeds"] = list(self.seeds)
        return values


@dataclass(frozen=True)
class DemoSettings:
    """What :func:`demo_run` computes.

    Attributes:
        problem: The problem trained (``digits_mlp``; tests use smaller ones).
        steps: SGD steps.
        record_steps: Steps recorded and measured; ``None`` for
            :func:`default_record_steps` ``(steps)``.
        lr: SGD learning rate.
        batch_size: SGD mini-batch size.
        seed: Seed of the model, split, batches, eigensolvers and sketches.
        dtype: ``"float32"`` or ``"float64"``.
        num_samples: Train on a class-balanced subset of this many samples
            (``None``: the whole train split).
        spectrum: Settings of the spectra (full and layerwise).
        overlap: Settings of the mask/eigenspace overlap.
        exhaustive: Settings of the sketch-versus-exact check.
        hesscale: Settings of the HesScale comparison.
    """

    problem: str = "digits_mlp"
    steps: int = 1000
    record_steps: tuple[int, ...] | None = None
    lr: float = 0.1
    batch_size: int = 32
    seed: int = 0
    dtype: str = "float32"
    num_samples: int | None = None
    spectrum: SpectrumSettings = field(
        default_factory=lambda: SpectrumSettings(layers=True)
    )
    overlap: OverlapSettings = field(
        default_factory=lambda: OverlapSettings(split="train", method="exact")
    )
    exhaustive: ExhaustiveSettings = field(
        default_factory=lambda: ExhaustiveSettings(split="train")
    )
    hesscale: HesScaleSettings = field(default_factory=HesScaleSettings)

    @property
    def steps_recorded(self) -> tuple[int, ...]:
        """The record steps, resolved (``steps`` always included)."""
        if self.record_steps is None:
            return default_record_steps(self.steps)
        return tuple(sorted({*self.record_steps, self.steps}))

    def _training(self) -> dict[str, Any]:
        training = {name: getattr(self, name) for name in _TRAINING}
        return {**training, "record_steps": self.steps_recorded}

    def train_config(self) -> TrainConfig:
        """Return the training config of the run.

        Returns:
            Plain SGD with the demo's learning rate, batch size and schedule.
        """
        return TrainConfig(optimizer="sgd", **self._training())

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict."""
        return {
            **self._training(),
            "record_steps": list(self.steps_recorded),
            "spectrum": self.spectrum.to_dict(),
            "overlap": self.overlap.stored(),
            "exhaustive": self.exhaustive.stored(),
            "hesscale": self.hesscale.to_dict(),
        }


#: The settings of :class:`DemoSettings` that are the training config's.
_TRAINING = ("problem", "steps", "record_steps", "lr", "batch_size", "seed", "dtype")
_TRAINING += ("num_samples",)


def default_record_steps(steps: int) -> tuple[int, ...]:
    """Return the demo's record steps: 0, 5%, 20%, 50% and 100% of ``steps``.

    Args:
        steps: Number of SGD steps, at least 0.

    Returns:
        The sorted distinct steps.

    Raises:
        ValueError: If ``steps < 0``.

    Example:
        >>> default_record_steps(1000)
        (0, 50, 200, 500, 1000)
    """
    if steps < 0:
        raise ValueError(f"steps must be at least 0. Got {steps}.")
    return tuple(sorted({round(f * steps) for f in _RECORD_FRACTIONS}))


def quick_settings(*, seed: int = 0, dtype: str = "float32") -> DemoSettings:
    """Return a tiny configuration that runs in seconds (for tests).

    ``synthetic_regression`` (``D = 499``, three layers, MSE) on 200 train
    samples for 20 steps, two record steps, Hessians on 40 samples, ``K = 20``
    eigenpairs and a HesScale comparison on 3 samples of a narrow network.

    Args:
        seed: The seed.
        dtype: ``"float32"`` or ``"float64"``.

    Returns:
        The settings.
    """
    return DemoSettings(
        problem="synthetic_regression",
        steps=20,
        record_steps=(0, 20),
        lr=0.05,
        batch_size=20,
        seed=seed,
        dtype=dtype,
        num_samples=200,
        spectrum=SpectrumSettings(
            layers=True, samples_per_class=40, top_k=5, bottom_k=2, grid_points=256
        ),
        overlap=OverlapSettings(
            split="train",
            method="exact",
            num_outer=20,
            samples_per_class=40,
            num_random=5,
        ),
        exhaustive=ExhaustiveSettings(
            split="train", num_outer=20, samples_per_class=40, num_probes=5
        ),
        hesscale=HesScaleSettings(seeds=(0,), num_samples=3, width=8, depth=2),
    )


@dataclass(frozen=True)
class DemoEvent:
    """Progress of :func:`demo_run`, passed to the callback.

    Attributes:
        stage: One of :data:`DEMO_STAGES`.
        kind: ``"start"`` (the stage starts; ``message`` says what it does),
            ``"progress"`` (``completed`` of ``total`` units are done; ``total``
            may be ``None``) or ``"done"`` (``message`` says what it did;
            ``values`` holds ``status``, ``"computed"`` or ``"skipped"``, and
            ``seconds``).
        completed: Units done (SGD steps, spectra, measured steps, samples).
        total: Units of the stage, or ``None`` when unknown.
        message: A short description.
        values: Details, see ``kind``.
    """

    stage: str
    kind: str
    completed: int = 0
    total: int | None = None
    message: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)


DemoCallback = Callable[[DemoEvent], None]

#: Stage events (:class:`~curvlab.runs.stage.StageEvent`) shown as progress.
_PROGRESS_KINDS = ("start", "step", "spectrum")


def _steps_text(steps: Sequence[int]) -> str:
    return ", ".join(str(s) for s in steps) if steps else "none"


class _Stages:
    """The demo's stages as events: start, progress, done; status and wall time."""

    def __init__(self, notify: DemoCallback):
        self.notify = notify
        self.status: dict[str, dict[str, Any]] = {}

    def start(self, name: str, total: int | None, message: str) -> None:
        self.tic = time.perf_counter()
        self.notify(DemoEvent(name, "start", 0, total, message))

    def progress(self, name: str, total: int | None = None) -> Callable:
        """A stage callback that reports the stage's progress (of ``total``)."""

        def forward(event: StageEvent) -> None:
            if event.kind in _PROGRESS_KINDS:
                of = total or event.total or None
                self.notify(DemoEvent(name, "progress", event.index, of))

        return forward

    def done(self, name: str, computed, skipped, message: str) -> None:
        seconds = time.perf_counter() - self.tic
        status = "computed" if computed else "skipped"
        self.status[name] = {
            "status": status,
            "seconds": seconds,
            "computed": list(computed),
            "skipped": list(skipped),
        }
        values = {"status": status, "seconds": seconds}
        self.notify(DemoEvent(name, "done", message=message, values=values))


def demo_run(
    out: str | Path = "runs/demo",
    settings: DemoSettings | None = None,
    *,
    on_progress: DemoCallback | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run the demo into the run folder ``out`` and write its report.

    Args:
        out: The run folder: created if missing, resumed if it holds a demo run
            with the same settings (finished stages are skipped).
        settings: What to compute (default :class:`DemoSettings`).
        on_progress: Called with a :class:`DemoEvent` when a stage starts,
            progresses and ends.

    Returns:
        The path of ``report.md`` and a summary: ``run`` (the folder),
        ``report`` and ``html`` (paths), ``figures`` (PNG paths), ``stages``
        (per stage: ``status`` ``"computed"`` or ``"skipped"``, ``seconds``,
        ``computed`` and ``skipped`` steps) and ``findings`` (the headline
        numbers of the report).

    Raises:
        ConfigMismatchError: If ``out`` holds a run with another training
            config.
        SettingsConflictError: If a stage's finished steps in ``out`` were
            computed with other settings.
        FileExistsError: If ``out`` is a non-empty folder that is no run folder.
    """
    settings = settings or DemoSettings()
    steps = list(settings.steps_recorded)
    config = settings.train_config()
    run = RunFolder.create(out, config, metadata={"seeds": derived_seeds(config.seed)})
    stages = _Stages(on_progress or (lambda event: None))

    stages.start(
        "train",
        settings.steps,
        f"SGD on {settings.problem}, lr {settings.lr:g}, batch "
        f"{settings.batch_size}, {settings.steps} steps; recording steps "
        f"{_steps_text(steps)}",
    )
    trained = train_run(run, config, on_progress=stages.progress("train", config.steps))
    run.write_metrics()
    already = f", already had {_steps_text(trained.skipped)}" if trained.skipped else ""
    message = f"recorded steps {_steps_text(trained.recorded)}{already}"
    stages.done("train", trained.recorded, trained.skipped, message)

    outcomes: dict[str, StageRunResult] = {}
    for name, function, stage_settings, total, what in (
        ("spectrum", spectrum_run, settings.spectrum, None, _SPECTRUM),
        ("overlap", overlap_run, settings.overlap, len(steps), _OVERLAP),
        ("exhaustive", exhaustive_run, settings.exhaustive, len(steps), _EXHAUSTIVE),
    ):
        stages.start(name, total, what)
        outcome = function(
            run, stage_settings, steps=steps, on_progress=stages.progress(name)
        )
        message = f"computed steps {_steps_text(outcome.computed)}"
        stages.done(name, outcome.computed, outcome.skipped, message)
        outcomes[name] = outcome

    hesscale = settings.hesscale
    total = len(hesscale.seeds) * hesscale.num_samples
    stages.start("hesscale", total, _HESSCALE)
    quality = _hesscale_stage(run, hesscale, stages.notify, total)
    computed = [0] if quality is not None else []
    message = "computed" if computed else "already stored"
    stages.done("hesscale", computed, [] if computed else [0], message)

    stages.start("report", None, "figures, report.md, report.html")
    timings = _update_timings(run, stages.status)
    wanted = settings.to_dict()
    entry = run.entry(REPORT_STAGE)
    fresh = (
        all(s["status"] == "skipped" for s in stages.status.values())
        and run.is_done(REPORT_STAGE)
        and entry is not None
        and entry["info"].get("settings") == wanted
    )
    if fresh:
        info = entry["info"]
        figures = [run.resolve(p) for p in info["figures"]]
        report = Report(
            run.resolve("report.md"),
            run.resolve("report.html"),
            figures,
            info["findings"],
        )
    else:
        results = DemoResults(
            metrics={row["step"]: row for row in run.metrics()},
            spectra={
                s: outcomes["spectrum"].results.get(s) or read_spectrum(run, s)
                for s in steps
            },
            overlap=StepTables.of(outcomes["overlap"], lambda: load_overlap(run)),
            exhaustive=StepTables.of(
                outcomes["exhaustive"], lambda: load_exhaustive(run)
            ),
            hesscale=quality or run.read_json(HESSCALE_FILE),
        )
        report = write_report(run, results, timings=timings)
        run.mark_done(
            REPORT_STAGE,
            files=[report.markdown, report.html, *report.figures],
            info={
                "settings": wanted,
                "figures": [run.relative(p) for p in report.figures],
                "findings": report.findings,
            },
        )
    verb = "kept" if fresh else "wrote"
    message = f"{verb} {run.relative(report.markdown)}"
    stages.done("report", [] if fresh else [0], [0] if fresh else [], message)
    if not fresh:
        _update_timings(run, {"report": stages.status["report"]})
    summary = {
        "run": run.path,
        "report": report.markdown,
        "html": report.html,
        "figures": report.figures,
        "stages": stages.status,
        "findings": report.findings,
    }
    return report.markdown, summary


_SPECTRUM = "Hessian spectra, full and per layer, at each recorded step"
_OVERLAP = "overlap of magnitude masks with the top Hessian eigenspace"
_EXHAUSTIVE = "sketched (SEIGH) against exact eigendecomposition"
_HESSCALE = "diagonal curvature estimators against the exact Hessian diagonal"


def _hesscale_stage(
    run: RunFolder, settings: HesScaleSettings, notify: DemoCallback, total: int
) -> dict[str, Any] | None:
    """Compute and store the HesScale comparison unless it is stored.

    Returns:
        The comparison as stored (:data:`HESSCALE_FILE`), or ``None`` when it
        was stored already.
    """
    wanted = {**settings.to_dict(), "dtype": "float64"}
    entry = run.entry(HESSCALE_STAGE)
    stored = entry is not None and run.is_done(HESSCALE_STAGE)
    if stored and entry["info"].get("settings") == wanted:
        return None
    done_seeds: list[int] = []

    def on_sample(seed: int, completed: int, num: int) -> None:
        if completed == num:
            done_seeds.append(seed)
        done = len(done_seeds) * num + (0 if completed == num else completed)
        notify(DemoEvent("hesscale", "progress", done, total))

    tic = time.perf_counter()
    result = hesscale_quality(
        **dataclasses.asdict(settings), dtype=torch.float64, on_progress=on_sample
    )
    content = {
        "settings": wanted,
        **{key: list(getattr(result, key)) for key in ("methods", "layers", "seeds")},
        "num_samples": result.num_samples,
        "normalized": result.normalized,
        "mean_errors": result.mean_errors(),
        "seed_ratios": result.seed_ratios,
        "ranking": result.ranking(),
        "config": result.config,
        "seconds": time.perf_counter() - tic,
    }
    path = run.write_json(HESSCALE_FILE, content)
    info = {"settings": wanted, "seconds": content["seconds"]}
    run.mark_done(HESSCALE_STAGE, files=[path], info=info)
    return content


def _update_timings(
    run: RunFolder, stages: Mapping[str, Mapping[str, Any]]
) -> dict[str, float]:
    """Keep, per stage, the wall time of the call that last computed it."""
    stored = run.resolve(TIMINGS_FILE).is_file()
    timings = run.read_json(TIMINGS_FILE) if stored else {}
    for name, stage in stages.items():
        if stage["status"] == "computed" or name not in timings:
            timings[name] = stage["seconds"]
    run.write_json(TIMINGS_FILE, timings)
    return timings

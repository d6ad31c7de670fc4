r"""``curvlab demo``: every experiment on one small problem, and a report.

:func:`demo_run` trains ``digits_mlp`` (``D = 3190``) with SGD in a run folder
(:class:`~curvlab.runs.RunFolder`) and runs the library's measurements on the
recorded steps, each a resumable stage of that folder:

1. ``train``: :func:`~curvlab.experiments.training.train_run`;
2. ``spectrum``: :func:`~curvlab.experiments.spectrum.spectrum_run`, the full
   Hessian's spectrum and every layer's diagonal block (dense ``eigh``);
3. ``overlap``: :func:`~curvlab.experiments.overlap.overlap_run`, the magnitude
   masks against the top Hessian eigenspace;
4. ``exhaustive``: :func:`~curvlab.experiments.exhaustive.exhaustive_run`, the
   sketched eigendecomposition (SEIGH) against the exact one;
5. ``hesscale``: :func:`~curvlab.experiments.hesscale_quality.hesscale_quality`
   on the demo's architecture (64-20-20-20-20-20-10 tanh), stored as stage
   ``hesscale_quality``;
6. ``report``: :func:`~curvlab.experiments.report.write_report`, from the
   results the stages returned (:class:`~curvlab.experiments.report.DemoResults`).

Every stage skips what the folder holds, so a second call redoes nothing and an
interrupted demo resumes; the report reads back only what a call skipped, and is
rewritten only when a stage computed something or a report file is missing.
Nothing here prints: progress goes to an optional callback (:class:`DemoEvent`),
which ``curvlab demo`` turns into progress bars.

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

from curvlab.experiments import report as reporting
from curvlab.experiments.exhaustive import (
    ExhaustiveSettings,
    exhaustive_run,
    load_exhaustive,
)
from curvlab.experiments.hesscale_quality import hesscale_quality
from curvlab.experiments.overlap import OverlapSettings, load_overlap, overlap_run
from curvlab.experiments.spectrum import SpectrumSettings, read_spectrum, spectrum_run
from curvlab.experiments.training import create_run, train_run
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
#: The fields of :class:`DemoSettings` that are the training config's.
_TRAINING = ("problem", "steps", "record_steps", "lr", "batch_size", "seed", "dtype")
_TRAINING += ("num_samples",)


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
        return {**dataclasses.asdict(self), "seeds": list(self.seeds)}


@dataclass(frozen=True)
class DemoSettings:
    """What :func:`demo_run` computes.

    Attributes:
        problem, steps, lr, batch_size, dtype, num_samples: Those of the SGD
            training (:class:`~curvlab.runs.TrainConfig`).
        record_steps: Steps recorded and measured; ``None`` for
            :func:`default_record_steps` ``(steps)``.
        seed: Seed of the model, split, batches, eigensolvers and sketches.
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

    def train_config(self) -> TrainConfig:
        """Return the training config of the run: plain SGD with these settings."""
        training = {name: getattr(self, name) for name in _TRAINING}
        return TrainConfig(
            optimizer="sgd", **{**training, "record_steps": self.steps_recorded}
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict."""
        return {
            **{name: getattr(self, name) for name in _TRAINING},
            "record_steps": list(self.steps_recorded),
            "spectrum": self.spectrum.to_dict(),
            "overlap": self.overlap.stored(),
            "exhaustive": self.exhaustive.stored(),
            "hesscale": self.hesscale.to_dict(),
        }


def default_record_steps(steps: int) -> tuple[int, ...]:
    """Return the demo's record steps: 0, 5%, 20%, 50% and 100% of ``steps`` >= 0.

    Example:
        >>> default_record_steps(1000)
        (0, 50, 200, 500, 1000)
    """
    if steps < 0:
        raise ValueError(f"steps must be at least 0. Got {steps}.")
    return tuple(sorted({round(f * steps) for f in _RECORD_FRACTIONS}))


def quick_settings(*, seed: int = 0, dtype: str = "float32") -> DemoSettings:
    """Return a tiny configuration (``synthetic_regression``, D = 499) for tests."""
    training = {"problem": "synthetic_regression", "steps": 20, "lr": 0.05}
    training |= {"record_steps": (0, 20), "batch_size": 20, "num_samples": 200}
    hessian = {"split": "train", "num_outer": 20, "samples_per_class": 40}
    return DemoSettings(
        **training,
        seed=seed,
        dtype=dtype,
        spectrum=SpectrumSettings(
            layers=True, samples_per_class=40, top_k=5, bottom_k=2, grid_points=256
        ),
        overlap=OverlapSettings(**hessian, method="exact", num_random=5),
        exhaustive=ExhaustiveSettings(**hessian, num_probes=5),
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


def _steps_text(steps: Sequence[int]) -> str:
    return ", ".join(str(s) for s in steps) if steps else "none"


class _Stages:
    """The demo's stages as events (start, progress, done), with their status."""

    def __init__(self, notify: DemoCallback):
        self.notify = notify
        self.status: dict[str, dict[str, Any]] = {}

    def start(self, name: str, total: int | None, message: str) -> None:
        self.tic = time.perf_counter()
        self.notify(DemoEvent(name, "start", 0, total, message))

    def progress(self, name: str, total: int | None = None) -> Callable:
        """A stage's callback: its :class:`StageEvent` as progress of ``total``."""

        def forward(event: StageEvent) -> None:
            if event.kind in ("start", "step", "spectrum", "sample"):
                of = event.total if total is None else total
                self.notify(DemoEvent(name, "progress", event.index, of))

        return forward

    def done(self, name: str, computed, skipped, message: str) -> None:
        seconds = time.perf_counter() - self.tic
        values = {"status": "computed" if computed else "skipped", "seconds": seconds}
        steps = {"computed": list(computed), "skipped": list(skipped)}
        self.status[name] = {**values, **steps}
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
    run = create_run(config, out)
    stages = _Stages(on_progress or (lambda event: None))
    stages.start(
        "train",
        config.steps,
        f"SGD on {config.problem}, lr {config.lr:g}, batch {config.batch_size}, "
        f"{config.steps} steps; recording steps {_steps_text(steps)}",
    )
    trained = train_run(run, config, on_progress=stages.progress("train", config.steps))
    run.write_metrics()
    had = f", already had {_steps_text(trained.skipped)}" if trained.skipped else ""
    message = f"recorded steps {_steps_text(trained.recorded)}{had}"
    stages.done("train", trained.recorded, trained.skipped, message)
    outcomes: dict[str, StageRunResult] = {}
    for name, function, stage_settings, total, what in (
        ("spectrum", spectrum_run, settings.spectrum, None, _SPECTRUM),
        ("overlap", overlap_run, settings.overlap, len(steps), _OVERLAP),
        ("exhaustive", exhaustive_run, settings.exhaustive, len(steps), _EXHAUSTIVE),
    ):
        stages.start(name, total, what)
        on_step = stages.progress(name)
        outcome = function(run, stage_settings, steps=steps, on_progress=on_step)
        message = f"computed steps {_steps_text(outcome.computed)}"
        stages.done(name, outcome.computed, outcome.skipped, message)
        outcomes[name] = outcome
    quality = _hesscale_stage(run, settings.hesscale, stages)
    stages.start("report", None, "figures, report.md, report.html")
    report = _report_stage(run, settings, stages, outcomes, quality)
    summary = {"run": run.path, "report": report.markdown, "html": report.html}
    summary |= {"figures": report.figures, "stages": stages.status}
    return report.markdown, {**summary, "findings": report.findings}


_SPECTRUM = "Hessian spectra, full and per layer, at each recorded step"
_OVERLAP = "overlap of magnitude masks with the top Hessian eigenspace"
_EXHAUSTIVE = "sketched (SEIGH) against exact eigendecomposition"
_HESSCALE = "diagonal curvature estimators against the exact Hessian diagonal"


def _hesscale_stage(
    run: RunFolder, settings: HesScaleSettings, stages: _Stages
) -> dict[str, Any]:
    """The HesScale comparison as stored, computed and stored first unless it is."""
    total = len(settings.seeds) * settings.num_samples
    stages.start("hesscale", total, _HESSCALE)
    wanted = {**settings.to_dict(), "dtype": "float64"}
    if _stored_info(run, reporting.HESSCALE_STAGE, wanted) is not None:
        stages.done("hesscale", [], [0], "already stored")
        return run.read_json(reporting.HESSCALE_FILE)

    tic = time.perf_counter()
    on_sample = stages.progress("hesscale", total)
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
    path = run.write_json(reporting.HESSCALE_FILE, content)
    info = {"settings": wanted, "seconds": content["seconds"]}
    run.mark_done(reporting.HESSCALE_STAGE, files=[path], info=info)
    stages.done("hesscale", [0], [], "computed")
    return content


def _report_stage(
    run: RunFolder,
    settings: DemoSettings,
    stages: _Stages,
    outcomes: Mapping[str, StageRunResult],
    quality: dict[str, Any],
) -> reporting.Report:
    """Write the report from the stages' results, unless it is up to date."""
    timings = _update_timings(run, stages.status)
    wanted = settings.to_dict()
    info = _stored_info(run, reporting.REPORT_STAGE, wanted)
    skipped = all(s["status"] == "skipped" for s in stages.status.values())
    if info is not None and skipped:
        figures = [run.resolve(path) for path in info["figures"]]
        files = [run.resolve("report.md"), run.resolve("report.html")]
        stages.done("report", [], [0], f"kept {run.relative(files[0])}")
        return reporting.Report(*files, figures, info["findings"])
    spectra = outcomes["spectrum"].results
    results = reporting.DemoResults(
        metrics={row["step"]: row for row in run.metrics()},
        spectra={
            s: spectra.get(s) or read_spectrum(run, s) for s in settings.steps_recorded
        },
        overlap=reporting.StepTables.of(outcomes["overlap"], lambda: load_overlap(run)),
        exhaustive=reporting.StepTables.of(
            outcomes["exhaustive"], lambda: load_exhaustive(run)
        ),
        hesscale=quality,
    )
    report = reporting.write_report(run, results, timings=timings)
    info = {"settings": wanted, "figures": [run.relative(p) for p in report.figures]}
    run.mark_done(
        reporting.REPORT_STAGE,
        files=[report.markdown, report.html, *report.figures],
        info={**info, "findings": report.findings},
    )
    stages.done("report", [0], [], f"wrote {run.relative(report.markdown)}")
    _update_timings(run, {"report": stages.status["report"]})
    return report


def _stored_info(run: RunFolder, stage: str, settings: dict) -> dict | None:
    """The manifest info of a finished stage computed with ``settings``, or ``None``."""
    entry = run.entry(stage)
    done = entry is not None and run.is_done(stage)
    return entry["info"] if done and entry["info"].get("settings") == settings else None


def _update_timings(
    run: RunFolder, stages: Mapping[str, Mapping[str, Any]]
) -> dict[str, float]:
    """Keep, per stage, the wall time of the call that last computed it."""
    stored = run.resolve(reporting.TIMINGS_FILE).is_file()
    timings = run.read_json(reporting.TIMINGS_FILE) if stored else {}
    for name, stage in stages.items():
        if stage["status"] == "computed" or name not in timings:
            timings[name] = stage["seconds"]
    run.write_json(reporting.TIMINGS_FILE, timings)
    return timings

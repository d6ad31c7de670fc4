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
   (:func:`curvlab.experiments.report.write_report`).

Every stage skips what the folder already holds, so calling :func:`demo_run`
again on the same folder redoes nothing (and an interrupted demo resumes).
The report is rewritten only when an earlier stage computed something or a
report file is missing. Nothing here prints: progress goes to an optional
callback (:class:`DemoEvent`), which ``curvlab demo`` turns into progress bars.

Example:
    >>> import tempfile
    >>> report, summary = demo_run(tempfile.mkdtemp(), quick_settings())
    >>> report.name, summary["stages"]["train"]["status"]
    ('report.md', 'computed')
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from curvlab.experiments.exhaustive import ExhaustiveSettings, exhaustive_run
from curvlab.experiments.hesscale_quality import hesscale_quality
from curvlab.experiments.overlap import OverlapSettings, overlap_run
from curvlab.experiments.report import (
    HESSCALE_FILE,
    HESSCALE_STAGE,
    REPORT_STAGE,
    TIMINGS_FILE,
    write_report,
)
from curvlab.experiments.spectrum import SpectrumSettings, spectrum_run
from curvlab.experiments.training import derived_seeds, train_run
from curvlab.runs import RunFolder, TrainConfig

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

    def train_config(self) -> TrainConfig:
        """Return the training config of the run.

        Returns:
            Plain SGD with the demo's learning rate, batch size and schedule.
        """
        return TrainConfig(
            problem=self.problem,
            optimizer="sgd",
            lr=self.lr,
            steps=self.steps,
            batch_size=self.batch_size,
            record_steps=self.steps_recorded,
            seed=self.seed,
            dtype=self.dtype,
            num_samples=self.num_samples,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict."""
        return {
            "problem": self.problem,
            "steps": self.steps,
            "record_steps": list(self.steps_recorded),
            "lr": self.lr,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "dtype": self.dtype,
            "num_samples": self.num_samples,
            "spectrum": self.spectrum.to_dict(),
            "overlap": self.overlap.stored(),
            "exhaustive": self.exhaustive.stored(),
            "hesscale": self.hesscale.to_dict(),
        }


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


def _steps_text(steps: tuple[int, ...] | list[int]) -> str:
    return ", ".join(str(s) for s in steps) if steps else "none"


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
        SpectrumSettingsError: If spectra in ``out`` were computed with other
            settings (likewise ``OverlapSettingsError`` for the overlap and the
            exhaustive check).
        FileExistsError: If ``out`` is a non-empty folder that is no run folder.
    """
    settings = settings or DemoSettings()
    notify = on_progress or (lambda event: None)
    record_steps = list(settings.steps_recorded)
    config = settings.train_config()
    run = RunFolder.create(out, config, metadata={"seeds": derived_seeds(config.seed)})
    stages: dict[str, dict[str, Any]] = {}

    def finish(name: str, tic: float, computed, skipped, message: str) -> None:
        seconds = time.perf_counter() - tic
        status = "computed" if computed else "skipped"
        stages[name] = {
            "status": status,
            "seconds": seconds,
            "computed": list(computed),
            "skipped": list(skipped),
        }
        notify(
            DemoEvent(
                name,
                "done",
                message=message,
                values={"status": status, "seconds": seconds},
            )
        )

    # 1. training
    tic = time.perf_counter()
    notify(
        DemoEvent(
            "train",
            "start",
            0,
            settings.steps,
            f"SGD on {settings.problem}, lr {settings.lr:g}, batch "
            f"{settings.batch_size}, {settings.steps} steps; recording steps "
            f"{_steps_text(record_steps)}",
        )
    )

    def on_train(event) -> None:
        if event.kind == "step":
            notify(DemoEvent("train", "progress", event.index, settings.steps))

    result = train_run(run, config, on_progress=on_train)
    run.write_metrics()
    finish(
        "train",
        tic,
        result.recorded,
        result.skipped,
        f"recorded steps {_steps_text(result.recorded)}"
        + (f", already had {_steps_text(result.skipped)}" if result.skipped else ""),
    )

    # 2. spectra
    tic = time.perf_counter()
    notify(
        DemoEvent(
            "spectrum",
            "start",
            0,
            None,
            "Hessian spectra, full and per layer, at each recorded step",
        )
    )

    def on_spectrum(event) -> None:
        if event.kind in ("start", "spectrum"):
            notify(DemoEvent("spectrum", "progress", event.index, event.total or None))

    spectra = spectrum_run(
        run, settings.spectrum, steps=record_steps, on_progress=on_spectrum
    )
    finish(
        "spectrum",
        tic,
        spectra.computed,
        spectra.skipped,
        f"computed steps {_steps_text(spectra.computed)}",
    )

    # 3. overlap and 4. exhaustive check
    for name, function, stage_settings, what in (
        (
            "overlap",
            overlap_run,
            settings.overlap,
            "overlap of magnitude masks with the top Hessian eigenspace",
        ),
        (
            "exhaustive",
            exhaustive_run,
            settings.exhaustive,
            "sketched (SEIGH) against exact eigendecomposition",
        ),
    ):
        tic = time.perf_counter()
        notify(DemoEvent(name, "start", 0, len(record_steps), what))

        def on_step(event, name=name) -> None:
            if event.kind in ("start", "step"):
                notify(DemoEvent(name, "progress", event.index, event.total))

        outcome = function(run, stage_settings, steps=record_steps, on_progress=on_step)
        finish(
            name,
            tic,
            outcome.computed,
            outcome.skipped,
            f"computed steps {_steps_text(outcome.computed)}",
        )

    # 5. HesScale quality
    tic = time.perf_counter()
    hesscale = settings.hesscale
    total = len(hesscale.seeds) * hesscale.num_samples
    notify(
        DemoEvent(
            "hesscale",
            "start",
            0,
            total,
            "diagonal curvature estimators against the exact Hessian diagonal",
        )
    )
    computed_hesscale = _hesscale_stage(run, hesscale, settings.dtype, notify, total)
    finish(
        "hesscale",
        tic,
        [0] if computed_hesscale else [],
        [] if computed_hesscale else [0],
        "computed" if computed_hesscale else "already stored",
    )

    # 6. report
    tic = time.perf_counter()
    notify(DemoEvent("report", "start", 0, None, "figures, report.md, report.html"))
    timings = _update_timings(run, stages)
    upstream = any(s["status"] == "computed" for s in stages.values())
    wanted = settings.to_dict()
    entry = run.entry(REPORT_STAGE)
    fresh = (
        not upstream
        and run.is_done(REPORT_STAGE)
        and entry is not None
        and entry["info"].get("settings") == wanted
    )
    if fresh:
        report, html = run.resolve("report.md"), run.resolve("report.html")
        figures = [run.resolve(p) for p in entry["info"]["figures"]]
        findings = entry["info"]["findings"]
    else:
        written = write_report(run, timings=timings, settings=wanted)
        report, html, figures, findings = (
            written.markdown,
            written.html,
            written.figures,
            written.findings,
        )
        run.mark_done(
            REPORT_STAGE,
            files=[report, html, *figures],
            info={
                "settings": wanted,
                "figures": [run.relative(p) for p in figures],
                "findings": findings,
            },
        )
    finish(
        "report",
        tic,
        [] if fresh else [0],
        [0] if fresh else [],
        f"{'kept' if fresh else 'wrote'} {run.relative(report)}",
    )
    if not fresh:
        _update_timings(run, {"report": stages["report"]})
    summary = {
        "run": run.path,
        "report": report,
        "html": html,
        "figures": figures,
        "stages": stages,
        "findings": findings,
    }
    return report, summary


def _hesscale_stage(
    run: RunFolder,
    settings: HesScaleSettings,
    dtype: str,
    notify: DemoCallback,
    total: int,
) -> bool:
    """Compute and store the HesScale comparison unless it is stored; say if run."""
    wanted = {**settings.to_dict(), "dtype": "float64"}
    entry = run.entry(HESSCALE_STAGE)
    if (
        run.is_done(HESSCALE_STAGE)
        and entry is not None
        and entry["info"].get("settings") == wanted
    ):
        return False
    done_seeds: list[int] = []

    def on_sample(seed: int, completed: int, num: int) -> None:
        if completed == num:
            done_seeds.append(seed)
        notify(
            DemoEvent(
                "hesscale",
                "progress",
                len(done_seeds) * num + (0 if completed == num else completed),
                total,
            )
        )

    tic = time.perf_counter()
    result = hesscale_quality(
        seeds=settings.seeds,
        num_samples=settings.num_samples,
        width=settings.width,
        depth=settings.depth,
        epochs=settings.epochs,
        dtype=torch.float64,
        on_progress=on_sample,
    )
    content = {
        "settings": wanted,
        "methods": list(result.methods),
        "layers": list(result.layers),
        "seeds": list(result.seeds),
        "num_samples": result.num_samples,
        "normalized": result.normalized,
        "mean_errors": result.mean_errors(),
        "seed_ratios": result.seed_ratios,
        "ranking": result.ranking(),
        "config": result.config,
        "seconds": time.perf_counter() - tic,
    }
    path = run.write_json(HESSCALE_FILE, content)
    run.mark_done(
        HESSCALE_STAGE,
        files=[path],
        info={"settings": wanted, "seconds": content["seconds"]},
    )
    return True


def _update_timings(
    run: RunFolder, stages: Mapping[str, Mapping[str, Any]]
) -> dict[str, float]:
    """Keep, per stage, the wall time of the call that last computed it."""
    path = run.resolve(TIMINGS_FILE)
    timings = json.loads(path.read_text()) if path.is_file() else {}
    for name, stage in stages.items():
        if stage["status"] == "computed" or name not in timings:
            timings[name] = stage["seconds"]
    run.write_json(TIMINGS_FILE, timings)
    return timings

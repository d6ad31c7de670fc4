"""Experiments: the science of each stage and study, returning typed records.

Nothing here parses arguments or prints; the CLI (:mod:`curvlab.cli`) renders
the records. Per-step stages on a run folder (:mod:`curvlab.runs.stage`):
``training``, ``spectrum``, ``overlap`` and ``exhaustive`` (both on
``eigenbasis``), ``trace``. Studies without a run folder: ``check``,
``grassmann``, ``hesscale_quality``, ``hesscale_cost`` and the grid study
``optimizers``; ``demo`` chains the stages and ``report`` renders their results.
"""

from curvlab.experiments.check import (
    CheckReport,
    OperatorCheck,
    check_operators,
    check_problem,
)
from curvlab.experiments.exhaustive import ExhaustiveSettings, exhaustive_run
from curvlab.experiments.overlap import OverlapSettings, overlap_run
from curvlab.experiments.spectrum import SpectrumSettings, spectrum_run
from curvlab.experiments.trace import TraceSettings, TraceStage
from curvlab.experiments.training import TrainResult, train, train_run

__all__ = [
    "CheckReport",
    "ExhaustiveSettings",
    "OperatorCheck",
    "OverlapSettings",
    "SpectrumSettings",
    "TraceSettings",
    "TraceStage",
    "TrainResult",
    "check_operators",
    "check_problem",
    "exhaustive_run",
    "overlap_run",
    "spectrum_run",
    "train",
    "train_run",
]

"""Experiments: the science of each stage and study, returning typed records.

Nothing here parses arguments or prints; the CLI (:mod:`curvlab.cli`) renders
the records. Per-step stages on a run folder run on the framework of
:mod:`curvlab.runs.stage`:

- :mod:`~curvlab.experiments.training`: train and record a run;
- :mod:`~curvlab.experiments.spectrum`: full and layerwise spectra over training;
- :mod:`~curvlab.experiments.overlap`: magnitude masks against the top Hessian
  eigenspace; :mod:`~curvlab.experiments.exhaustive`: SEIGH against the exact
  eigendecomposition (both on :mod:`~curvlab.experiments.eigenbasis`);
- :mod:`~curvlab.experiments.trace`: Hutch++ traces of the Hessian and the GGN.

Studies that need no run folder: :mod:`~curvlab.experiments.check`,
:mod:`~curvlab.experiments.grassmann`, :mod:`~curvlab.experiments.hesscale_quality`,
:mod:`~curvlab.experiments.hesscale_cost`; :mod:`~curvlab.experiments.demo` chains
the stages and :mod:`~curvlab.experiments.report` renders their results.
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

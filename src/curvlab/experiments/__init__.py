"""Experiments: plain functions that run measurements and return records.

Nothing here parses arguments or prints; the CLI (:mod:`curvlab.cli`) renders
the records. :mod:`curvlab.experiments.check` smoke-tests the operators on a
problem; :mod:`curvlab.experiments.train` trains a model with SGD and measures
its Hessian spectrum and trace along the way.
"""

from curvlab.experiments.check import (
    CheckReport,
    OperatorCheck,
    check_operators,
    check_problem,
)
from curvlab.experiments.train import (
    EigenResult,
    TrainRecord,
    evaluate,
    exact_trace,
    record_steps,
    run_demo,
    top_eigenvalues,
    train_and_record,
)

__all__ = [
    "CheckReport",
    "EigenResult",
    "OperatorCheck",
    "TrainRecord",
    "check_operators",
    "check_problem",
    "evaluate",
    "exact_trace",
    "record_steps",
    "run_demo",
    "top_eigenvalues",
    "train_and_record",
]

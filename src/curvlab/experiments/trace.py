r"""The Hessian's and the GGN's trace over training, by Hutch++ with error bars.

At each recorded step, on the class-balanced train subset of the overlap
(:func:`~curvlab.experiments.eigenbasis.hessian_subset`), estimate
:math:`\operatorname{tr} H` and :math:`\operatorname{tr} G` by
:func:`~curvlab.linalg.hutchpp_trace` (Meyer, Musco, Musco & Woodruff 2021,
SOSA), with the standard error of its Hutchinson part. PyHessian users track
this trace over training (Yao et al. 2020, "PyHessian", IEEE BigData). Stored as
stage ``trace``: one CSV row per operator and a JSON summary per step, and
``trace/all.csv``, ``trace/summary.csv``. The worked example of
``docs/architecture.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from curvlab.experiments.eigenbasis import subset_at_step, subset_settings
from curvlab.linalg import hutchpp_trace
from curvlab.operators import GGNOperator, HessianOperator
from curvlab.runs import RunFolder
from curvlab.runs import stage as framework

__all__ = ["TraceSettings", "TraceStage"]

OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator}


@dataclass(frozen=True)
class TraceSettings:
    """Hutch++ products, samples per class, probe seed and dtype of a trace.

    Defaults: 90, 50, the run's seed and dtype; ``None`` takes the stored value.
    """

    num_matvecs: int | None = None
    samples_per_class: int | None = None
    seed: int | None = None
    dtype: str | None = None


class TraceStage(framework.TableStage):
    """Hutch++ traces of the Hessian and the GGN at recorded steps.

    Raises:
        ValueError: If a setting is out of range.
        TypeError: If a setting has the wrong type.
    """

    name = command = "trace"
    columns = ("step", "operator", "trace", "std_error", "num_matvecs")

    def __init__(self, run: RunFolder, settings: TraceSettings | None, problem):
        super().__init__(run)
        requested = settings or TraceSettings()
        self.stored = subset_settings(run, self.name, requested, num_matvecs=(90, 3))
        self.settings, self.problem = TraceSettings(**self.stored), problem

    def compute(self, step: int, progress) -> framework.StepTable:
        """Estimate both traces at one step."""
        settings, model, summary, rows = self.settings, self.problem.model, {}, []
        data, _ = subset_at_step(self.run, step, self.problem, settings)
        for name, operator in OPERATORS.items():
            progress.phase(name)
            op = operator(model, self.problem.loss_fn, data)
            estimate = hutchpp_trace(op, settings.num_matvecs, seed=settings.seed)
            value, error = estimate.value, estimate.std_error
            rows.append(dict(step=step, operator=name, trace=value, std_error=error))
            rows[-1]["num_matvecs"] = estimate.num_matvecs
            summary |= {f"{name}_trace": value, f"{name}_std_error": error}
        return framework.StepTable(
            rows, {"step": step, "settings": self.stored, **summary}
        )

r"""The Takeuchi Information Criterion over training, with its error bar.

At each recorded step, on the class-balanced train subset of the overlap
(:func:`~curvlab.experiments.eigenbasis.hessian_subset`, ``N`` samples),
estimate :math:`\mathrm{TIC} = \operatorname{tr}((G + \delta I)^{-1} C)` by
:func:`~curvlab.linalg.tic` (Hutch++ over block-CG solves), with :math:`G` the
GGN (positive semi-definite, so CG applies; Thomas et al. 2020 let a GGN or
Fisher stand for the Hessian) and :math:`C` the centered per-sample gradient
covariance with 1/N normalisation
(:class:`~curvlab.operators.GradientCovarianceOperator`), and the
generalization-gap estimate TIC / N (Takeuchi 1976; Thomas, Pedregosa, van
Merriënboer, Manzagol, Bengio & Le Roux 2020, "On the interplay between noise
and curvature and its effect on optimization and generalization", AISTATS).
Stored as stage ``tic``: one CSV row and a JSON summary per step, and
``tic/all.csv``, ``tic/summary.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass

from curvlab.experiments.eigenbasis import subset_at_step, subset_settings
from curvlab.linalg import tic
from curvlab.operators import GGNOperator, GradientCovarianceOperator
from curvlab.runs import RunFolder
from curvlab.runs import stage as framework

__all__ = ["TICSettings", "TICStage"]


@dataclass(frozen=True)
class TICSettings:
    """Damping, Hutch++ probes, samples per class, seed and dtype of the TIC.

    Defaults: 1e-3, 30, 50, the run's seed and dtype; ``None`` takes the stored
    value.
    """

    damping: float | None = None
    num_probes: int | None = None
    samples_per_class: int | None = None
    seed: int | None = None
    dtype: str | None = None


class TICStage(framework.TableStage):
    """TIC and generalization-gap estimates at recorded steps.

    Raises:
        ValueError: If a setting is out of range (``damping`` must be > 0).
        TypeError: If an int setting has another type.
    """

    name = command = "tic"
    columns = ("step", "tic", "std_error", "gap", "gap_std_error", "num_data")

    def __init__(self, run: RunFolder, settings: TICSettings | None, problem):
        super().__init__(run)
        own = {"damping": (1e-3, None), "num_probes": (30, 3)}
        self.stored = subset_settings(run, self.name, settings or TICSettings(), **own)
        damping = self.stored["damping"]
        if not (isinstance(damping, int | float) and damping > 0):
            raise ValueError(f"damping must be a number > 0. Got {damping!r}.")
        self.settings, self.problem = TICSettings(**self.stored), problem

    def compute(self, step: int, progress) -> framework.StepTable:
        """Estimate the TIC at one step."""
        settings, model = self.settings, self.problem.model
        data, _ = subset_at_step(self.run, step, self.problem, settings)
        progress.phase("tic")
        loss = self.problem.loss_fn
        estimate = tic(
            GGNOperator(model, loss, data),
            GradientCovarianceOperator(model, loss, data, centered=True),
            settings.damping,
            settings.num_probes,
            seed=settings.seed,
        )
        row = {"step": step, "tic": estimate.value, "std_error": estimate.std_error}
        row |= {"gap": estimate.gap, "gap_std_error": estimate.gap_std_error}
        row |= {"num_data": estimate.num_data}
        summary = {**row, "settings": self.stored, "converged": estimate.converged}
        return framework.StepTable([row], summary)

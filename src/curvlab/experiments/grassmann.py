r"""How do Grassmannian metrics behave for random masks, subspaces and planted overlaps?

The synthetic study of Fernandez et al. (notebooks ``00a``/``10a``
``_grassmannian_metrics`` of andres-fr/hessian_overlap; reference notes
``papers.md`` §1.2), which led the paper to pick the overlap over distances
that saturate. For each dimension ``D`` and ratio :math:`\rho = k/D`
(:math:`k = \operatorname{round}(\rho D)`), ``num_trials`` pairs of
``k``-dimensional subspaces per scenario (:data:`SCENARIOS`):

- ``random``: two independent uniformly random (Haar) subspaces, the QR
  factors of Gaussian matrices;
- ``mask``: a uniformly random mask (the span of ``k`` unit vectors, as for a
  magnitude mask) against a random subspace. Its angles have the same law as
  ``random``, since a mask is a fixed subspace and the other is Haar;
- ``rotated p``: a random mask :math:`M` against
  :math:`V = M\cos\varphi + W\sin\varphi` with :math:`W` a random orthonormal
  basis orthogonal to :math:`\operatorname{span}(M)`: all ``k`` principal angles
  equal :math:`\varphi = \arccos\sqrt p`, so the overlap is exactly ``p``
  (needs :math:`2k \le D`);
- ``shared p``: a random mask against a subspace that contains
  :math:`s = \operatorname{round}(p k)` of its unit vectors, the other
  :math:`k - s` directions random in their orthogonal complement: ``s`` angles
  are 0, the overlap is about :math:`p + (1 - p)(k - s)/(D - s)`.

Every pair gets each metric of :data:`curvlab.subspace.METRICS` normalised to
:math:`[0, 1]` (:func:`curvlab.subspace.distance_from_angles`; 0 = equal, 1 =
as far as possible) and the overlap. For random pairs at :math:`\rho = 0.2`
the means approach the paper's chance values (:data:`PAPER_CHANCE_0_2`) as
``D`` grows: ``projection_2``, ``fubini_study`` and ``binet_cauchy`` are 1 and
``chordal_2`` is about 1 for random pairs and, in the ``shared`` scenario, even
when half of the directions coincide, while the overlap stays at :math:`k/D`
and moves with the planted value.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from curvlab._seeds import derive_seed
from curvlab.runs.stage import StageEvent
from curvlab.subspace import METRICS, distance_from_angles, principal_angles
from curvlab.subspace.masks import random_mask

__all__ = [
    "DEFAULT_DIMS",
    "DEFAULT_PLANTED",
    "DEFAULT_RATIOS",
    "DEFAULT_TRIALS",
    "PAPER_CHANCE_0_2",
    "QUANTITIES",
    "SCENARIOS",
    "GrassmannCell",
    "GrassmannResult",
    "chance_comparison",
    "grassmann_study",
    "pair_values",
    "scenario_pair",
]

#: Scenario kinds; ``rotated`` and ``shared`` take a planted value ``p``.
SCENARIOS = ("random", "mask", "rotated", "shared")
#: The columns of the study: every metric (normalised) and the overlap.
QUANTITIES = (*METRICS, "overlap")
#: Defaults of :func:`grassmann_study` (and of ``curvlab grassmann``).
DEFAULT_DIMS = (250, 500, 1000, 2000)
DEFAULT_RATIOS = (0.05, 0.2)
DEFAULT_PLANTED = (0.5,)
DEFAULT_TRIALS = 3
#: Normalised chance values for :math:`k/D = 0.2` of the paper's notebook
#: ``01_crystallization_and_grassmannians`` (``papers.md`` §1.2). Binet-Cauchy
#: and Martin are not in the paper.
PAPER_CHANCE_0_2 = {
    "geodesic": 0.75466,
    "chordal_2": 0.99954,
    "chordal_F": 0.78246,
    "projection_2": 1.0,
    "projection_F": 0.89430,
    "fubini_study": 1.0,
    "overlap": 0.2,
}


def _haar(D: int, k: int, generator: torch.Generator, outside=None) -> Tensor:
    """Random orthonormal ``(D, k)`` basis orthogonal to unit vectors ``outside``."""
    G = torch.randn(D, k, generator=generator, dtype=torch.float64)
    if outside is not None:
        G[outside] = 0.0
    return torch.linalg.qr(G).Q


def scenario_pair(
    scenario: str, D: int, k: int, planted: float | None, seed: int
) -> tuple[Tensor, Tensor]:
    """Draw one pair of orthonormal ``(D, k)`` float64 bases for a scenario.

    Args:
        scenario: A name from :data:`SCENARIOS`.
        D: Ambient dimension.
        k: Subspace dimension, ``1 <= k <= D`` (``2k <= D`` for ``rotated``).
        planted: The planted value ``p`` in ``[0, 1]`` of ``rotated`` and
            ``shared``; ``None`` for the others.
        seed: Seed of the draw.

    Returns:
        The bases ``U`` (the mask, or a random subspace for ``random``) and ``V``.

    Raises:
        ValueError: If the scenario is unknown, ``planted`` is missing, given
            where unused or out of range, or the dimensions do not fit.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}. Got {scenario!r}.")
    needs_planted = scenario in ("rotated", "shared")
    if needs_planted != (planted is not None):
        wants = "needs a planted value p" if needs_planted else "takes no planted value"
        raise ValueError(f"Scenario {scenario!r} {wants}. Got planted={planted!r}.")
    if planted is not None and not 0.0 <= planted <= 1.0:
        raise ValueError(f"planted must lie in [0, 1]. Got {planted}.")
    if not 1 <= k <= D or (scenario == "rotated" and 2 * k > D):
        limit = "2k <= D" if scenario == "rotated" else "1 <= k <= D"
        raise ValueError(f"Scenario {scenario!r} needs {limit}. Got D={D}, k={k}.")
    generator = torch.Generator().manual_seed(seed)
    if scenario == "random":
        return _haar(D, k, generator), _haar(D, k, generator)
    mask = random_mask(D, k, generator=generator)
    U = torch.zeros(D, k, dtype=torch.float64)
    U[mask, torch.arange(k)] = 1.0
    if scenario == "mask":
        return U, _haar(D, k, generator)
    if scenario == "rotated":
        phi = math.acos(math.sqrt(planted))
        W = _haar(D, k, generator, outside=mask)
        return U, U * math.cos(phi) + W * math.sin(phi)
    shared = round(planted * k)
    rest = _haar(D, k - shared, generator, outside=mask[:shared])
    return U, torch.cat([U[:, :shared], rest], dim=1)


def pair_values(U: Tensor, V: Tensor) -> dict[str, float]:
    """``{quantity: value}`` of :data:`QUANTITIES` for orthonormal ``(D, k)`` U, V."""
    angles = principal_angles(U, V)
    values = {
        metric: float(distance_from_angles(angles, metric, normalized=True))
        for metric in METRICS
    }
    values["overlap"] = float(torch.cos(angles).square().mean())
    return values


@dataclass(frozen=True)
class GrassmannCell:
    """All trials of one scenario at one ``D`` and ratio.

    Attributes:
        D: Ambient dimension.
        ratio: The requested :math:`k/D`.
        k: Subspace dimension, ``round(ratio * D)`` (at least 1).
        scenario: A name from :data:`SCENARIOS`.
        planted: The planted value of ``rotated``/``shared``, else ``None``.
        values: ``values[quantity]``: one value per trial.
    """

    D: int
    ratio: float
    k: int
    scenario: str
    planted: float | None
    values: dict[str, list[float]]

    @property
    def label(self) -> str:
        """Scenario and planted value, e.g. ``"rotated 0.5"``."""
        planted = "" if self.planted is None else f" {self.planted:g}"
        return self.scenario + planted

    def mean(self, quantity: str) -> float:
        """Mean over the trials of one quantity."""
        return statistics.fmean(self.values[quantity])

    def std(self, quantity: str) -> float:
        """Sample standard deviation over the trials (0 for one trial)."""
        values = self.values[quantity]
        return statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class GrassmannResult:
    r"""Outcome of :func:`grassmann_study`.

    Attributes:
        cells: One record per (``D``, ratio, scenario), in loop order: ratio,
            scenario, ``D``.
        dims: The dimensions ``D``.
        ratios: The ratios :math:`k/D`.
        planted: The planted values.
        num_trials: Pairs per cell.
        seed: Base seed.
        seconds: Wall time of the study.
        skipped: Descriptions of cells that could not be drawn (``rotated``
            needs :math:`2k \le D`).
    """

    cells: tuple[GrassmannCell, ...]
    dims: tuple[int, ...]
    ratios: tuple[float, ...]
    planted: tuple[float, ...]
    num_trials: int
    seed: int
    seconds: float
    skipped: tuple[str, ...] = ()

    def find(
        self, scenario: str, ratio: float, D: int, planted: float | None = None
    ) -> GrassmannCell | None:
        """Return the cell of a scenario, ratio and ``D``, if it was run."""
        key = (scenario, ratio, D, planted)
        return next(
            (c for c in self.cells if (c.scenario, c.ratio, c.D, c.planted) == key),
            None,
        )


def grassmann_study(
    dims: Sequence[int] = DEFAULT_DIMS,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    *,
    planted: Sequence[float] = DEFAULT_PLANTED,
    num_trials: int = DEFAULT_TRIALS,
    seed: int = 0,
    on_progress: Callable[[StageEvent], None] | None = None,
) -> GrassmannResult:
    r"""Measure every metric on random and planted pairs of subspaces.

    See the module docstring for the scenarios. The pair of trial ``t`` of
    scenario ``s`` at ``(D, k)`` is drawn with a seed derived from
    ``(seed, D, k, s, t)``, so a cell does not depend on which other cells run.

    Args:
        dims: Ambient dimensions ``D``.
        ratios: Ratios :math:`k/D` in :math:`(0, 1]`; ``k = max(1, round(ratio D))``.
        planted: Planted values ``p`` in ``[0, 1]`` for ``rotated`` and ``shared``.
        num_trials: Pairs per cell.
        seed: Base seed.
        on_progress: Called with a :class:`~curvlab.runs.stage.StageEvent` of
            kind ``"cell"`` after each cell (``D``, ratio, scenario).

    Raises:
        ValueError: If a list is empty or a value out of range.

    Example:
        >>> result = grassmann_study([40], [0.25], planted=[0.5], num_trials=1)
        >>> [cell.label for cell in result.cells]
        ['random', 'mask', 'rotated 0.5', 'shared 0.5']
        >>> round(result.cells[2].mean("overlap"), 12)  # planted exactly
        0.5
    """
    dims = tuple(int(d) for d in dims)
    ratios = tuple(float(r) for r in ratios)
    planted = tuple(float(p) for p in planted)
    if not dims or min(dims) < 1:
        raise ValueError(f"dims must be positive integers. Got {list(dims)}.")
    if not ratios or not all(0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"ratios must lie in (0, 1]. Got {list(ratios)}.")
    if not all(0.0 <= p <= 1.0 for p in planted):
        raise ValueError(f"planted values must lie in [0, 1]. Got {list(planted)}.")
    if num_trials < 1:
        raise ValueError(f"num_trials must be at least 1. Got {num_trials}.")
    scenarios: list[tuple[str, float | None]] = [("random", None), ("mask", None)]
    scenarios += [(kind, p) for kind in ("rotated", "shared") for p in planted]
    start = time.perf_counter()
    cells, skipped = [], []
    total = len(ratios) * len(scenarios) * len(dims)
    for ratio in ratios:
        for index, (scenario, value) in enumerate(scenarios):
            for D in dims:
                k = max(1, round(ratio * D))
                if scenario == "rotated" and 2 * k > D:
                    skipped.append(
                        f"{scenario} {value:g} at D={D}, k={k}: needs 2k <= D"
                    )
                else:
                    seeds = [
                        derive_seed(seed, D, k, index, t, bits=63)
                        for t in range(num_trials)
                    ]
                    pairs = (scenario_pair(scenario, D, k, value, s) for s in seeds)
                    trials = [pair_values(U, V) for U, V in pairs]
                    values = {q: [t[q] for t in trials] for q in QUANTITIES}
                    cells.append(GrassmannCell(D, ratio, k, scenario, value, values))
                if on_progress is not None:
                    done = len(cells) + len(skipped)
                    on_progress(StageEvent("cell", None, done, total))
    seconds = time.perf_counter() - start
    return GrassmannResult(
        tuple(cells), dims, ratios, planted, num_trials, seed, seconds, tuple(skipped)
    )


def chance_comparison(
    result: GrassmannResult, ratio: float = 0.2
) -> list[tuple[str, float | None, float, float]]:
    """Chance values at the largest ``D`` against the paper's (``papers.md`` §1.2).

    Returns:
        ``(quantity, paper value or None, random-pair mean, mask mean)`` for
        every quantity in :data:`QUANTITIES`.

    Raises:
        ValueError: If the study did not run ``ratio`` with both scenarios.
    """
    D = max(result.dims)
    random_cell = result.find("random", ratio, D)
    mask_cell = result.find("mask", ratio, D)
    if random_cell is None or mask_cell is None:
        raise ValueError(
            f"The study has no random and mask cells at ratio {ratio} and D={D}. "
            f"Ratios run: {list(result.ratios)}."
        )
    paper = PAPER_CHANCE_0_2 if math.isclose(ratio, 0.2) else {}
    return [
        (q, paper.get(q), random_cell.mean(q), mask_cell.mean(q)) for q in QUANTITIES
    ]

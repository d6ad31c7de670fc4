r"""Hessian spectra over training: full and layerwise, with the GGN/residual split.

:func:`spectrum_run` reads a run folder written by ``curvlab train`` and, at each
recorded step, computes on a class-balanced subset of the train split
(:func:`hessian_data`):

- the full Hessian's spectrum (:func:`curvlab.subspace.spectra.block_spectrum`):
  its ``top_k`` eigenvalues of largest magnitude and ``bottom_k`` most negative
  ones, and its spectral measure and density, exact for :math:`D \le`
  ``max_exact_dim`` (``method="exact"``/``"auto"``) or by stochastic Lanczos
  quadrature (``"slq"``; ``"lanczos"`` gives the extreme eigenvalues only);
- with ``layers=True`` the same for every layer's diagonal block :math:`H_l`
  (Sankar et al. 2021), one block per module with its bias
  (``blocks="modules"``) or per Linear/conv weight (``blocks="weights"``, the
  paper's convention);
- with ``split_ggn=True`` the same for the Gauss-Newton part :math:`G` and the
  residual :math:`H - G` (:func:`curvlab.subspace.spectra.ggn_residual_split`).

The Hessian data follow LayerHessians (``examples_per_class = 10``): the first
``samples_per_class`` samples of each class in a permutation of the train split
seeded by the run's seed (``numpy.random.SeedSequence(seed, spawn_key=(2,))``),
so every step, rerun and machine uses the same samples. The data form one batch.

**Files.** One JSON file per step, ``spectrum/step_XXXXXXXX.json``, written
atomically and then marked done in the manifest (stage ``"spectrum"``)::

    {"format": "curvlab-spectrum", "format_version": 1, "step": 100,
     "settings": {...SpectrumSettings...}, "num_samples": 100, "dim": 3190,
     "dtype": "float32", "device": "cpu", "seconds": 12.3,
     "spectra": {"hessian": {"full": BLOCK, "blocks": {"0": BLOCK, ...}},
                 "ggn": ..., "residual": ...}}

where ``BLOCK`` is :meth:`BlockSpectrum.to_dict
<curvlab.subspace.spectra.BlockSpectrum.to_dict>`: the record's attributes (the
spectral measure, extreme eigenvalues, the density smoothed as LayerHessians does,
trace and cost). JSON keeps float64 values exactly; :func:`read_spectrum` turns a
file back into records.

**Resuming.** A step whose file is done (manifest entry, sizes intact) with the
same settings is skipped; other settings raise :class:`SpectrumSettingsError`
unless ``force=True`` recomputes. Progress goes to an optional callback
(:class:`SpectrumEvent`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy
import torch
from torch import nn

from curvlab._seeds import derive_seed
from curvlab.problems.data import BatchedData, balanced_subset
from curvlab.runs import stage as framework
from curvlab.runs.folder import MissingStepError, RunFolder
from curvlab.subspace.spectra import (
    MAX_EXACT_DIM,
    METHODS,
    BlockSpectrum,
    LayerwiseSpectra,
    default_blocks,
    ggn_residual_split,
    layerwise_spectra,
)

__all__ = [
    "OPERATORS",
    "SPECTRUM_FORMAT",
    "SPECTRUM_FORMAT_VERSION",
    "STAGE",
    "SpectrumEvent",
    "SpectrumResult",
    "SpectrumSettings",
    "SpectrumSettingsError",
    "SpectrumStage",
    "SpectrumStep",
    "compute_spectra",
    "hessian_data",
    "read_spectrum",
    "spectrum_run",
    "subset_indices",
]

STAGE = "spectrum"
SPECTRUM_FORMAT = "curvlab-spectrum"
SPECTRUM_FORMAT_VERSION = 1

#: Operators a spectrum file may hold: the Hessian, the GGN and the residual H - G.
OPERATORS = ("hessian", "ggn", "residual")

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: Settings passed on to :func:`~curvlab.subspace.spectra.block_spectrum`.
_SPECTRUM_OPTIONS = ("top_k", "bottom_k", "max_exact_dim", "num_probes", "num_steps")
_SPECTRUM_OPTIONS += ("tol", "block_size", "grid_points", "kernel_resolution")

#: Smallest value of each count setting.
_MINIMUM = dict(samples_per_class=1, top_k=0, bottom_k=0, num_probes=1, num_steps=1)
_MINIMUM |= dict(grid_points=2, kernel_resolution=10, max_exact_dim=1, block_size=1)

#: A step was computed with other settings (the framework's one error type).
SpectrumSettingsError = framework.SettingsConflictError


@dataclass(frozen=True)
class SpectrumSettings:
    """What :func:`spectrum_run` computes at each step.

    Attributes:
        method: ``"auto"``, ``"exact"``, ``"lanczos"`` or ``"slq"``
            (:func:`~curvlab.subspace.spectra.block_spectrum`).
        layers: Also compute every layer's diagonal block.
        blocks: ``"modules"`` (one block per module, bias with weight) or
            ``"weights"`` (LayerHessians: Linear/conv weights only).
        split_ggn: Also compute the GGN and the residual :math:`H - G`.
        samples_per_class: Hessian samples per class (regression: in total).
        top_k: Eigenvalues of largest magnitude per spectrum.
        bottom_k: Most negative eigenvalues per spectrum.
        num_probes: SLQ probes.
        num_steps: SLQ Lanczos steps per probe.
        grid_points: Points of the stored densities.
        kernel_resolution: Sets the density's kernel width (LayerHessians: 128).
        max_exact_dim: Largest block with a dense eigendecomposition; ``None``
            for the value the stage's finished steps were computed with, else
            :data:`~curvlab.subspace.spectra.MAX_EXACT_DIM` (curvlab's one dense
            limit, ``MAX_DENSE_DIM``), so that runs stored before that limit
            changed resume unchanged.
        tol: Relative tolerance of the Lanczos eigensolves.
        block_size: Columns per product in the Lanczos eigensolves.
        seed: Seed of the Lanczos start vectors and SLQ probes; ``None`` for
            the run's seed.
        dtype: ``"float32"`` or ``"float64"`` for model and products; ``None``
            for the run's dtype.

    Raises:
        ValueError: For an unknown method, blocks or dtype, or counts out of range.
    """

    method: str = "auto"
    layers: bool = False
    blocks: str = "modules"
    split_ggn: bool = False
    samples_per_class: int = 10
    top_k: int = 10
    bottom_k: int = 3
    num_probes: int = 1
    num_steps: int = 128
    grid_points: int = 1024
    kernel_resolution: int = 128
    max_exact_dim: int | None = None
    tol: float = 1e-6
    block_size: int = 1
    seed: int | None = None
    dtype: str | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}. Got {self.method!r}.")
        if self.blocks not in ("modules", "weights"):
            raise ValueError(
                f"blocks must be 'modules' or 'weights'. Got {self.blocks!r}."
            )
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(
                f"dtype must be one of {tuple(_DTYPES)} or None. Got {self.dtype!r}."
            )
        for name, low in _MINIMUM.items():
            value = getattr(self, name)
            if name == "max_exact_dim" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}. Got {value!r}.")
        if self.method == "lanczos" and self.top_k == 0 and self.bottom_k == 0:
            raise ValueError("method 'lanczos' needs top_k > 0 or bottom_k > 0.")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0. Got {self.tol!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def spectrum_options(self, seed: int) -> dict[str, Any]:
        """Options of ``block_spectrum``; the probes' seed ``seed`` unless set."""
        options = {name: getattr(self, name) for name in _SPECTRUM_OPTIONS}
        options["max_exact_dim"] = self.max_exact_dim or MAX_EXACT_DIM
        return {**options, "seed": seed if self.seed is None else self.seed}


#: Progress events of :func:`spectrum_run`: ``"start"``, ``"phase"`` (a step
#: starts, ``values["phase"] == "spectra"``), ``"spectrum"`` (one spectrum is
#: done; ``values``: ``operator``, ``block``, ``dim``, ``method``, ``seconds``),
#: ``"step"`` (a step's file is written; ``values``: its summary) and ``"done"``;
#: ``index``/``total`` count spectra.
SpectrumEvent = framework.StageEvent

#: What :func:`spectrum_run` returns.
SpectrumResult = framework.StageRunResult


@dataclass(frozen=True)
class SpectrumStep:
    """The spectra of one step, as stored.

    Attributes:
        step: The training step.
        settings: The settings they were computed with.
        spectra: Operator name (:data:`OPERATORS`) -> its layerwise spectra.
        num_samples: Samples of the Hessian data.
        dim: Parameters ``D``.
        seconds: Wall time of the step.
    """

    step: int
    settings: SpectrumSettings
    spectra: dict[str, LayerwiseSpectra]
    num_samples: int
    dim: int
    seconds: float

    @property
    def summary(self) -> dict[str, Any]:
        """The step's scalars for the manifest (``num_matvecs``: of all spectra)."""
        full = self.spectra["hessian"].full
        first = [
            float(v[0]) if v is not None and len(v) else None
            for v in (full.top_eigenvalues, full.bottom_eigenvalues)
        ]
        return {
            "dim": full.dim,
            "method": full.method,
            "top_eigenvalue": first[0],
            "min_eigenvalue": first[1],
            "trace": full.trace,
            "num_matvecs": sum(s.num_matvecs for s in self.spectra.values()),
            "seconds": self.seconds,
        }


# ----------------------------------------------------------------- data
def subset_indices(
    y: torch.Tensor, num_classes: int | None, samples_per_class: int, seed: int
) -> torch.Tensor:
    """Pick the Hessian samples: a class-balanced subset, seeded.

    Args:
        y: Train targets, ``(N,)`` class labels or ``(N, C)`` regression targets.
        num_classes: Number of classes; ``None`` for regression.
        samples_per_class: Samples per class (regression: in total).
        seed: The run's seed.

    Returns:
        Sorted indices into the train split (CPU, int64): the first
        ``samples_per_class`` of each class in the permutation drawn from
        ``SeedSequence(seed, spawn_key=(2,))`` (regression: the first
        ``samples_per_class`` of it).

    Raises:
        ValueError: If a class has too few samples.
    """
    y = y.detach().cpu()
    generator = torch.Generator().manual_seed(derive_seed(seed, spawn_key=(2,)))
    order = torch.randperm(y.shape[0], generator=generator)
    if num_classes is None:
        if samples_per_class > y.shape[0]:
            raise ValueError(
                f"samples_per_class must be at most the {y.shape[0]} train samples "
                f"(regression: the total). Got {samples_per_class}."
            )
        chosen = order[:samples_per_class]
    else:
        picked = balanced_subset(y[order], samples_per_class * num_classes, num_classes)
        chosen = order[picked]
    return torch.sort(chosen).values


def hessian_data(problem, samples_per_class: int, seed: int) -> BatchedData:
    """The Hessian data: the samples :func:`subset_indices` picks, as one batch."""
    train = problem.train_data
    indices = subset_indices(train.y, problem.num_classes, samples_per_class, seed)
    indices = indices.to(train.X.device)
    return BatchedData(train.X[indices], train.y[indices], len(indices))


# ----------------------------------------------------------------- compute
def _blocks(settings: SpectrumSettings, hessian) -> dict:
    if not settings.layers:
        return {}
    return default_blocks(hessian, biases=settings.blocks == "modules")


def compute_spectra(
    model: nn.Module,
    loss_fn: nn.Module,
    data,
    settings: SpectrumSettings,
    *,
    seed: int = 0,
    on_spectrum: Callable[[str, BlockSpectrum], None] | None = None,
) -> dict[str, LayerwiseSpectra]:
    """Compute the spectra of one model, as :func:`spectrum_run` does per step.

    Args:
        model: The model (its dtype sets the products' dtype).
        loss_fn: The loss.
        data: The Hessian data (:func:`hessian_data`).
        settings: What to compute.
        seed: Seed of the probes when ``settings.seed`` is ``None``.
        on_spectrum: Called with ``(operator, spectrum)`` for each spectrum.

    Returns:
        ``{"hessian": ...}``, plus ``"ggn"`` and ``"residual"`` with
        ``split_ggn``.
    """
    from curvlab.operators import GGNOperator, HessianOperator

    options = settings.spectrum_options(seed)
    hessian = HessianOperator(model, loss_fn, data)
    blocks, method = _blocks(settings, hessian), settings.method
    if settings.split_ggn:
        ggn = GGNOperator(model, loss_fn, data)
        split = ggn_residual_split(
            hessian, ggn, blocks, method, on_spectrum=on_spectrum, **options
        )
        return dict(split.items())
    report = None if on_spectrum is None else partial(on_spectrum, "hessian")
    spectra = layerwise_spectra(hessian, blocks, method, on_spectrum=report, **options)
    return {"hessian": spectra}


def spectrum_run(
    run: RunFolder,
    settings: SpectrumSettings | None = None,
    *,
    steps: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    force: bool = False,
    on_progress: Callable[[SpectrumEvent], None] | None = None,
) -> SpectrumResult:
    """Compute and store the spectra at recorded steps of a run, resumably.

    Args:
        run: The run folder (``curvlab train`` wrote it).
        settings: What to compute (default :class:`SpectrumSettings`).
        steps: Recorded steps to do; ``None`` for all.
        device: Device of the model, data and products.
        data_dir: Data folder of file-based problems (default: training's).
        force: Recompute steps that are done (with any settings).
        on_progress: Called with a :class:`SpectrumEvent` as work progresses.

    Returns:
        What this call did; ``results`` holds the computed :class:`SpectrumStep`
        records.

    Raises:
        MissingStepError: If a requested step is not recorded.
        SpectrumSettingsError: If a requested step is done with other settings
            and ``force`` is false.
        ValueError: If ``top_k`` or ``bottom_k`` exceeds the parameters, or a
            step's parameters are not finite or its Hessian has no spectrum
            (training diverged).
        RunLockedError: If another process computes spectra in the folder.
    """
    stage = SpectrumStage(run, settings, device=device, data_dir=data_dir)
    steps = None if steps is None else sorted(set(steps))
    options = {"force": force, "on_progress": on_progress}
    return framework.run_stage(
        stage, steps, device=device, data_dir=data_dir, **options
    )


class SpectrumStage(framework.Stage):
    """The spectra over training as a resumable stage, :func:`spectrum_run`'s.

    Its arguments are :func:`spectrum_run`'s. The problem, its Hessian data and
    the model's dtype are prepared once, when the first step is computed.
    """

    name = command = STAGE

    def __init__(
        self,
        run: RunFolder,
        settings: SpectrumSettings | None = None,
        *,
        device: str | torch.device = "cpu",
        data_dir: str | Path | None = None,
    ):
        super().__init__(run)
        settings = settings or SpectrumSettings()
        if settings.max_exact_dim is None:
            stored = framework.stored_settings(run, STAGE)
            value = framework.pick_setting("max_exact_dim", None, stored, MAX_EXACT_DIM)
            settings = dataclasses.replace(settings, max_exact_dim=value)
        self.settings = settings
        self.stored = self.settings.to_dict()
        self.device, self.data_dir = device, data_dir
        self._prepared: tuple[Any, BatchedData] | None = None

    def _prepare(self) -> tuple[Any, BatchedData]:
        if self._prepared is None:
            settings = self.settings
            problem = self.run.problem(device=self.device, data_dir=self.data_dir)
            if settings.dtype is not None:
                problem.model.to(_DTYPES[settings.dtype])
            seed = self.run.config.seed
            data = hessian_data(problem, settings.samples_per_class, seed)
            for name in ("top_k", "bottom_k"):  # the file could not hold more
                value, dim = getattr(settings, name), problem.num_params
                if value > dim:
                    raise ValueError(
                        f"{name}={value} exceeds the model's D={dim} parameters; "
                        f"pass at most {dim} (blocks of layers get at most their "
                        "own size)."
                    )
            self._prepared = (problem, data)
        return self._prepared

    def num_units(self, todo: Sequence[int]) -> int:
        """Spectra to compute: (1 + layers) x (3 with the GGN split) per step."""
        from curvlab.operators import HessianOperator

        problem, data = self._prepare()
        hessian = HessianOperator(problem.model, problem.loss_fn, data)
        per_step = 1 + len(_blocks(self.settings, hessian))
        return per_step * (3 if self.settings.split_ggn else 1) * len(todo)

    def compute(self, step: int, progress: framework.StepProgress) -> SpectrumStep:
        """Compute the spectra of one step."""
        problem, data = self._prepare()
        model = self.run.load_into(problem.model, step).eval()
        progress.phase("spectra")
        tic = time.perf_counter()

        def on_spectrum(operator: str, s: BlockSpectrum) -> None:
            info = dict(block=s.name, dim=s.dim, method=s.method, seconds=s.seconds)
            progress.advance("spectrum", operator=operator, **info)

        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise ValueError(
                f"The parameters recorded at step {step} hold NaN or infinite "
                f"values ({', '.join(bad)}): training diverged. Choose earlier "
                "steps with --steps."
            )
        try:
            options = {"seed": self.run.config.seed, "on_spectrum": on_spectrum}
            spectra = compute_spectra(
                model, problem.loss_fn, data, self.settings, **options
            )
        except (torch.linalg.LinAlgError, numpy.linalg.LinAlgError) as error:
            raise ValueError(
                f"The Hessian at step {step} has no spectrum: the eigensolver "
                f"failed ({str(error).splitlines()[0]}). Its entries are probably "
                "not finite because training diverged; choose earlier steps "
                "with --steps."
            ) from None
        dim, seconds = spectra["hessian"].full.dim, time.perf_counter() - tic
        return SpectrumStep(
            step, self.settings, spectra, data.num_samples, dim, seconds
        )

    def write(self, step: int, result: SpectrumStep) -> tuple[list[Path], dict]:
        """Write the step's JSON file; the manifest keeps its summary."""
        dtype = next(self._prepare()[0].model.parameters()).dtype
        content = {
            "format": SPECTRUM_FORMAT,
            "format_version": SPECTRUM_FORMAT_VERSION,
            "step": step,
            "settings": self.stored,
            "num_samples": result.num_samples,
            "dim": result.dim,
            "dtype": str(dtype).removeprefix("torch."),
            "device": str(self.device),
            "seconds": result.seconds,
            "spectra": {name: s.to_dict() for name, s in result.spectra.items()},
        }
        path = self.run.write_json(self.run.path_for(STAGE, step, ".json"), content)
        return [path], {**result.summary, "settings": self.stored}

    def read_summary(self, step: int) -> dict[str, Any]:
        """The summary kept in the step's manifest entry."""
        info = dict((self.run.entry(STAGE, step) or {}).get("info", {}))
        info.pop("settings", None)
        return info


# ----------------------------------------------------------------- reading
def read_spectrum(run: RunFolder, step: int) -> SpectrumStep:
    """Read the spectra stored for a step.

    Args:
        run: The run folder.
        step: A step done by :func:`spectrum_run`.

    Returns:
        The stored spectra.

    Raises:
        MissingStepError: If the step is not done.
        ValueError: If the file is not a spectrum file of a known version.
    """
    if not run.is_done(STAGE, step):
        raise MissingStepError(
            f"No spectrum for step {step} in {str(run.path)!r}; done steps: "
            f"{run.done_steps(STAGE)}. Run `curvlab spectrum --run RUN_DIR`."
        )
    path = run.path_for(STAGE, step, ".json")
    data = run.read_json(path)
    if data.get("format") != SPECTRUM_FORMAT or data.get("format_version") != 1:
        raise ValueError(
            f"{path} is not a curvlab spectrum file of version "
            f"{SPECTRUM_FORMAT_VERSION}."
        )
    spectra = {k: LayerwiseSpectra.from_dict(v) for k, v in data["spectra"].items()}
    settings = SpectrumSettings(**data["settings"])
    sizes = (data[key] for key in ("num_samples", "dim", "seconds"))
    return SpectrumStep(data["step"], settings, spectra, *sizes)

r"""The records of layerwise spectra: one spectrum, a layerwise set, a split.

A spectrum is a discrete probability measure on the eigenvalue axis,

.. math::

    \mu = \sum_{j=1}^{n} w_j\, \delta_{\lambda_j}, \qquad \sum_j w_j = 1,

with the eigenvalues :math:`\lambda_j` of a :math:`D_l \times D_l` block as atoms
of mass :math:`w_j = 1/D_l` (exact spectra), or the Gauss quadrature nodes and
weights of stochastic Lanczos quadrature divided by the number of probes (SLQ),
so that :math:`D_l \int t\, d\mu` is the block's trace. Next to the measure a
:class:`BlockSpectrum` holds the extreme eigenvalues and the measure smoothed into
a density the way LayerHessians draws it
(:func:`~curvlab.subspace.spectra.smoothing.layerhessians_density`).
:class:`LayerwiseSpectra` holds the spectra of an operator's diagonal blocks next
to its full spectrum (Sankar et al. 2021), :class:`SplitSpectra` those of the
Hessian, its Gauss-Newton part and the residual (Sagun et al. 2017; Papyan 2019).
All three turn into JSON-ready data and back without loss.

References:
    - A. R. Sankar, Y. Khasbage, R. Vigneswaran, V. N. Balasubramanian (2021). A
      deeper look at the Hessian eigenspectrum of deep neural networks and its
      applications to regularization. AAAI. arXiv:2012.03801.
    - V. Papyan (2019). Measurements of three-level hierarchical structure in the
      outliers in the spectrum of deepnet Hessians. ICML. arXiv:1901.08244.
    - L. Sagun, U. Evci, V. U. Guney, Y. Dauphin, L. Bottou (2017). Empirical
      analysis of the Hessian of over-parametrized neural networks.
      arXiv:1706.04454.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from curvlab.subspace.spectra.distances import spectrum_distance
from curvlab.subspace.spectra.smoothing import _kernel_density

__all__ = ["BlockSpectrum", "LayerwiseSpectra", "SplitSpectra"]


@dataclass(frozen=True)
class BlockSpectrum:
    r"""The spectrum of one operator (a diagonal block or the full matrix).

    Attributes:
        name: The block's name (``"full"`` for the whole operator).
        param_names: The parameters of the block, in the order of its vector.
        dim: Its dimension :math:`D_l`.
        method: ``"exact"``, ``"lanczos"`` or ``"slq"`` (what was run; ``"auto"``
            resolved).
        nodes: ``(n,)`` float64 atoms of the spectral measure, ascending: all
            eigenvalues (``"exact"``) or the SLQ quadrature nodes of all probes
            (``"slq"``); ``None`` for ``"lanczos"``.
        weights: ``(n,)`` float64 masses of the atoms, summing to one:
            :math:`1/D_l` each for ``"exact"``, the Gauss quadrature weights
            divided by the number of probes for ``"slq"``.
        top_eigenvalues: ``(k,)`` the ``k`` eigenvalues of largest magnitude, by
            descending magnitude (``None`` when ``top_k = 0`` and not exact).
        bottom_eigenvalues: ``(k,)`` the ``k`` smallest (most negative)
            eigenvalues, ascending (``None`` when ``bottom_k = 0``).
        converged: Whether every Lanczos pair met its tolerance (``None`` when no
            Lanczos eigensolve ran).
        grid: ``(G,)`` grid of the smoothed density (:func:`layerhessians_density`);
            ``None`` without a measure.
        density: ``(G,)`` the smoothed density on ``grid``.
        kernel_width: Standard deviation of the smoothing Gaussian, in eigenvalue
            units.
        trace: :math:`\operatorname{tr}` of the block: exact, or
            :math:`D_l \int t\, d\mu` for SLQ (Hutchinson's estimate with the
            probes); ``None`` for ``"lanczos"``.
        num_matvecs: Operator columns spent (``D_l`` for a dense build).
        seconds: Wall time.
    """

    name: str
    param_names: tuple[str, ...]
    dim: int
    method: str
    nodes: Tensor | None = None
    weights: Tensor | None = None
    top_eigenvalues: Tensor | None = None
    bottom_eigenvalues: Tensor | None = None
    converged: bool | None = None
    grid: Tensor | None = None
    density: Tensor | None = None
    kernel_width: float | None = None
    trace: float | None = None
    num_matvecs: int = 0
    seconds: float = 0.0

    @property
    def has_measure(self) -> bool:
        """Whether the record holds a spectral measure (exact or SLQ)."""
        return self.nodes is not None

    @property
    def eigenvalues(self) -> Tensor | None:
        """All eigenvalues, ascending, for ``method="exact"``; else ``None``."""
        return self.nodes if self.method == "exact" else None

    def density_on(self, grid: Tensor) -> Tensor:
        """Evaluate the smoothed density (same kernel) on another grid.

        Args:
            grid: 1-D points.

        Returns:
            The density at ``grid``, float64.

        Raises:
            ValueError: Without a spectral measure (``method="lanczos"``).
        """
        self._need_measure()
        points = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
        return _kernel_density(points, self.nodes, self.weights, self.kernel_width)

    def _need_measure(self) -> None:
        if not self.has_measure:
            raise ValueError(
                f"Spectrum {self.name!r} ({self.method}) holds only extreme "
                "eigenvalues, no spectral measure. Use method 'exact' or 'slq'."
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data (tensors as lists of floats).

        Returns:
            A dict that :meth:`from_dict` turns back into an equal record
            (JSON keeps float64 values exactly); the uniform weights of an
            exact spectrum are left out (``None``).
        """
        out: dict[str, Any] = {
            "name": self.name,
            "param_names": list(self.param_names),
            "dim": self.dim,
            "method": self.method,
        }
        for key in _TENSOR_FIELDS:
            value = getattr(self, key)
            out[key] = None if value is None else value.tolist()
        if self.method == "exact":
            out["weights"] = None  # uniform 1/D; rebuilt by from_dict
        for key in ("converged", "kernel_width", "trace", "num_matvecs", "seconds"):
            out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockSpectrum:
        """Rebuild a record from :meth:`to_dict`'s output.

        Args:
            data: The dict.

        Returns:
            The record, tensors float64 on the CPU.
        """
        values = dict(data)
        for key in _TENSOR_FIELDS:
            if values.get(key) is not None:
                values[key] = torch.tensor(values[key], dtype=torch.float64)
        values["param_names"] = tuple(values["param_names"])
        if values["method"] == "exact" and values.get("weights") is None:
            dim = values["dim"]
            values["weights"] = torch.full((dim,), 1.0 / dim, dtype=torch.float64)
        return cls(**values)


_TENSOR_FIELDS = (
    "nodes",
    "weights",
    "top_eigenvalues",
    "bottom_eigenvalues",
    "grid",
    "density",
)


@dataclass(frozen=True)
class LayerwiseSpectra:
    """The spectra of an operator's diagonal blocks next to its full spectrum.

    Attributes:
        full: The full operator's spectrum (``None`` if not computed).
        blocks: The blocks' spectra by block name, in depth order.
    """

    full: BlockSpectrum | None
    blocks: dict[str, BlockSpectrum] = field(default_factory=dict)

    def distances(self, kind: str = "wasserstein") -> dict[str, float]:
        """Distance of every block's spectrum to the full one.

        Args:
            kind: One of :data:`DISTANCES` (see :func:`spectrum_distance`).

        Returns:
            Distances by block name.

        Raises:
            ValueError: If the full spectrum is missing.
        """
        if self.full is None:
            raise ValueError("The full spectrum was not computed (full=False).")
        return {
            name: spectrum_distance(self.full, block, kind)
            for name, block in self.blocks.items()
        }

    @property
    def num_matvecs(self) -> int:
        """Operator columns spent on all spectra."""
        spectra = ([self.full] if self.full else []) + list(self.blocks.values())
        return sum(s.num_matvecs for s in spectra)

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-ready data (see :meth:`BlockSpectrum.to_dict`).

        Returns:
            ``{"full": ..., "blocks": {name: ...}}``.
        """
        return {
            "full": None if self.full is None else self.full.to_dict(),
            "blocks": {name: s.to_dict() for name, s in self.blocks.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerwiseSpectra:
        """Rebuild from :meth:`to_dict`'s output.

        Args:
            data: The dict.

        Returns:
            The spectra.
        """
        full = data.get("full")
        return cls(
            full=None if full is None else BlockSpectrum.from_dict(full),
            blocks={
                name: BlockSpectrum.from_dict(s)
                for name, s in data.get("blocks", {}).items()
            },
        )


@dataclass(frozen=True)
class SplitSpectra:
    """Layerwise spectra of the Hessian, its Gauss-Newton part and the residual.

    Attributes:
        hessian: Spectra of :math:`H` and its blocks :math:`H_l`.
        ggn: Spectra of :math:`G` and its blocks :math:`G_l`.
        residual: Spectra of :math:`H - G` and its blocks :math:`H_l - G_l`.
    """

    hessian: LayerwiseSpectra
    ggn: LayerwiseSpectra
    residual: LayerwiseSpectra

    def items(self) -> list[tuple[str, LayerwiseSpectra]]:
        """Return ``[("hessian", ...), ("ggn", ...), ("residual", ...)]``."""
        return [
            ("hessian", self.hessian),
            ("ggn", self.ggn),
            ("residual", self.residual),
        ]

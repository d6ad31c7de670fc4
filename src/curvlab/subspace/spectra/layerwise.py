r"""Layerwise versus full spectra: the spectrum of every diagonal block and the whole.

Sankar et al. (2021) compare the spectrum of each layer Hessian :math:`H_l`
(:mod:`~curvlab.subspace.spectra.blocks`) with that of the full Hessian during
training and find the middle layers closest to it. :func:`layerwise_spectra`
computes those spectra for any curvature operator, each by one of three methods
(:func:`block_spectrum`):

- ``"exact"``: all eigenvalues, :func:`torch.linalg.eigvalsh` of the dense block
  (``block.to_dense()``, :math:`D_l` products), for :math:`D_l \le`
  ``max_exact_dim`` (default :data:`MAX_EXACT_DIM` = 8000, a 0.48 GiB float64
  matrix and a minute or two of ``eigvalsh``);
- ``"lanczos"``: the top ``top_k`` eigenvalues by magnitude (and the
  ``bottom_k`` most negative ones) by restarted Lanczos,
  :func:`curvlab.linalg.eigsh.eigsh`;
- ``"slq"``: a spectral density by stochastic Lanczos quadrature,
  :func:`curvlab.linalg.spectral_density`, optionally with Lanczos top
  eigenvalues;
- ``"auto"``: ``"exact"`` up to ``max_exact_dim``, ``"slq"`` above.

Exact and SLQ spectra are spectral measures
:math:`\mu = \sum_j w_j \delta_{\lambda_j}`
(:class:`~curvlab.subspace.spectra.records.BlockSpectrum`), smoothed into a
density the LayerHessians way (:mod:`~curvlab.subspace.spectra.smoothing`).

References:
    - A. R. Sankar, Y. Khasbage, R. Vigneswaran, V. N. Balasubramanian (2021). A
      deeper look at the Hessian eigenspectrum of deep neural networks and its
      applications to regularization. AAAI. arXiv:2012.03801. Layerwise
      spectra over training: ``yashkhasbage25/HTR``,
      ``LayerHessians/experiments/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from curvlab._limits import MAX_DENSE_DIM
from curvlab.subspace.spectra.blocks import (
    _param_names,
    _resolve_blocks,
    block_operator,
)
from curvlab.subspace.spectra.records import BlockSpectrum, LayerwiseSpectra
from curvlab.subspace.spectra.smoothing import _LH_POINTS, _LH_RESOLUTION, _lh_smooth

__all__ = ["MAX_EXACT_DIM", "METHODS", "block_spectrum", "layerwise_spectra"]

#: Largest block dimension whose dense matrix ``method="exact"`` builds and
#: ``"auto"`` picks exact eigenvalues for: :data:`curvlab._limits.MAX_DENSE_DIM`.
MAX_EXACT_DIM = MAX_DENSE_DIM

#: Spectrum methods of :func:`block_spectrum`.
METHODS = ("auto", "exact", "lanczos", "slq")


def _dense(op, max_exact_dim: int) -> Tensor:
    if isinstance(op, Tensor):
        return op
    return op.to_dense(max_dim=max_exact_dim)


def _symmetric_eigvalsh(matrix: Tensor) -> Tensor:
    A = matrix.detach().to(device="cpu", dtype=torch.float64)
    return torch.linalg.eigvalsh((A + A.mT) / 2)


def _by_magnitude(eigenvalues: Tensor, k: int) -> Tensor:
    order = torch.argsort(eigenvalues.abs(), descending=True, stable=True)
    return eigenvalues[order[:k]]


def block_spectrum(
    op,
    *,
    method: str = "auto",
    name: str = "full",
    param_names: Sequence[str] = (),
    top_k: int = 10,
    bottom_k: int = 0,
    max_exact_dim: int = MAX_EXACT_DIM,
    num_probes: int = 1,
    num_steps: int = _LH_RESOLUTION,
    tol: float = 1e-6,
    block_size: int = 1,
    max_matvecs: int | None = None,
    grid_points: int = _LH_POINTS,
    kernel_resolution: int = _LH_RESOLUTION,
    seed: int = 0,
) -> BlockSpectrum:
    r"""Compute the spectrum of one symmetric operator.

    ``"exact"`` materialises the matrix (:math:`D` products) and takes all
    eigenvalues with :func:`torch.linalg.eigvalsh` in float64 (of
    :math:`(A + A^\top)/2`, which removes the rounding asymmetry of the
    products). ``"lanczos"`` runs :func:`curvlab.linalg.eigsh.eigsh` for the
    ``top_k`` eigenvalues of largest magnitude (``which="LM"``) and, if
    ``bottom_k > 0``, the most negative ones (``which="SA"``); an operator too
    small for Lanczos (:math:`D < k + 2 b + 1`) is solved densely. ``"slq"`` runs
    :func:`curvlab.linalg.spectral_density` (``num_probes`` Rademacher probes,
    ``num_steps`` Lanczos steps each) and, for ``top_k``/``bottom_k > 0``, the same
    Lanczos eigensolves. Exact and SLQ results also get a density smoothed the
    LayerHessians way (:func:`layerhessians_density`, ``grid_points`` points, kernel
    width set by ``kernel_resolution``).

    Args:
        op: A symmetric :class:`~curvlab.operators.CurvatureOperator` or a dense
            ``(D, D)`` tensor.
        method: One of :data:`METHODS`; ``"auto"`` is ``"exact"`` for
            ``D <= max_exact_dim`` and ``"slq"`` above.
        name: Name of the record.
        param_names: Parameter names of the record.
        top_k: Eigenvalues of largest magnitude to report (capped at ``D``).
        bottom_k: Most negative eigenvalues to report (capped at ``D``).
        max_exact_dim: Largest ``D`` for which a dense matrix is built.
        num_probes: SLQ probes.
        num_steps: SLQ Lanczos steps per probe (LayerHessians: 128).
        tol: Relative residual tolerance of the Lanczos eigensolves.
        block_size: Columns per operator call in the Lanczos eigensolves.
        max_matvecs: Budget of each Lanczos eigensolve (``None``: eigsh's).
        grid_points: Points of the smoothed density's grid.
        kernel_resolution: :math:`M` of :func:`layerhessians_density`, which sets
            the kernel width; LayerHessians ties it to its 128 Lanczos steps.
        seed: Seed of the Lanczos start vectors and the SLQ probes.

    Returns:
        The :class:`BlockSpectrum`.

    Raises:
        ValueError: For an unknown method, ``"exact"`` above ``max_exact_dim``,
            ``"lanczos"`` with ``top_k = bottom_k = 0``, negative counts, or a
            grid or kernel resolution too small.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Got {method!r}.")
    for label, value in (("top_k", top_k), ("bottom_k", bottom_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{label} must be an int >= 0. Got {value!r}.")
    if grid_points < 2 or kernel_resolution < 10:
        raise ValueError(
            "grid_points must be >= 2 and kernel_resolution >= 10. Got "
            f"{grid_points} and {kernel_resolution}."
        )
    start = time.perf_counter()
    dim = op.shape[0]
    if method == "auto":
        method = "exact" if dim <= max_exact_dim else "slq"
    if method == "exact" and dim > max_exact_dim:
        raise ValueError(
            f"method='exact' builds the dense {dim}x{dim} matrix, above "
            f"max_exact_dim={max_exact_dim}. Use 'slq' or 'lanczos', or raise "
            "max_exact_dim."
        )
    if method == "lanczos" and top_k == 0 and bottom_k == 0:
        raise ValueError("method='lanczos' needs top_k > 0 or bottom_k > 0.")
    top_k, bottom_k = min(top_k, dim), min(bottom_k, dim)
    values: dict[str, Any] = {}
    matvecs = 0
    if method == "exact":
        eigenvalues = _symmetric_eigvalsh(_dense(op, max_exact_dim))
        matvecs += 0 if isinstance(op, Tensor) else dim
        values["nodes"] = eigenvalues
        values["weights"] = torch.full((dim,), 1.0 / dim, dtype=torch.float64)
        values["trace"] = float(eigenvalues.sum())
        values["top_eigenvalues"] = _by_magnitude(eigenvalues, top_k)
        if bottom_k:
            values["bottom_eigenvalues"] = eigenvalues[:bottom_k]
    else:
        if method == "slq":
            from curvlab.linalg.density import spectral_density

            sd = spectral_density(
                op, num_probes=num_probes, num_steps=num_steps, grid=2, seed=seed
            )
            matvecs += sd.num_matvecs
            keep = torch.arange(sd.nodes.shape[1]) < sd.num_nodes[:, None]
            nodes = sd.nodes[keep]
            weights = sd.weights[keep] / sd.num_probes
            order = torch.argsort(nodes, stable=True)
            values["nodes"], values["weights"] = nodes[order], weights[order]
            values["trace"] = sd.trace_estimate()
        extremes, extra, converged = _extremes(
            op, top_k, bottom_k, max_exact_dim, tol, block_size, max_matvecs, seed
        )
        values.update(extremes)
        values["converged"] = converged
        matvecs += extra
    if "nodes" in values:
        grid, density, width = _lh_smooth(
            values["nodes"],
            values["weights"],
            num_points=grid_points,
            resolution=kernel_resolution,
        )
        values.update(grid=grid, density=density, kernel_width=width)
    return BlockSpectrum(
        name=name,
        param_names=tuple(param_names),
        dim=dim,
        method=method,
        num_matvecs=matvecs,
        seconds=time.perf_counter() - start,
        **values,
    )


def _extremes(op, top_k, bottom_k, max_exact_dim, tol, block_size, max_matvecs, seed):
    """Top-|λ| and most negative eigenvalues by Lanczos (dense when too small)."""
    out: dict[str, Tensor] = {}
    if top_k == 0 and bottom_k == 0:
        return out, 0, None
    dim = op.shape[0]
    if max(top_k, bottom_k) + 2 * block_size >= dim:
        eigenvalues = _symmetric_eigvalsh(_dense(op, max_exact_dim))
        if top_k:
            out["top_eigenvalues"] = _by_magnitude(eigenvalues, top_k)
        if bottom_k:
            out["bottom_eigenvalues"] = eigenvalues[:bottom_k]
        return out, 0 if isinstance(op, Tensor) else dim, True
    from curvlab.linalg.eigsh import eigsh

    matvecs, converged = 0, True
    for key, k, which in (
        ("top_eigenvalues", top_k, "LM"),
        ("bottom_eigenvalues", bottom_k, "SA"),
    ):
        if k == 0:
            continue
        result = eigsh(
            op,
            k,
            which=which,
            tol=tol,
            block_size=block_size,
            max_matvecs=max_matvecs,
            seed=seed,
        )
        out[key] = result.eigenvalues.detach().to("cpu", torch.float64)
        matvecs += result.num_matvecs
        converged = converged and result.all_converged
    return out, matvecs, converged


def layerwise_spectra(
    operator,
    blocks: Mapping[str, Sequence[str]] | str | None = None,
    method: str = "auto",
    *,
    full: bool = True,
    on_spectrum: Callable[[BlockSpectrum], None] | None = None,
    **options: Any,
) -> LayerwiseSpectra:
    r"""Compute the spectra of an operator's diagonal blocks and the full spectrum.

    For the Hessian these are the layer Hessians :math:`H_l` of Sankar et al.
    (2021) next to :math:`H`. Each block is an operator on its parameters
    (:func:`block_operator`), so a block's products cost no more than the
    block's share of a full product.

    Args:
        operator: A symmetric curvature operator on a model, or a sum of such
            operators (``HessianOperator - GGNOperator``).
        blocks: ``None`` or ``"modules"`` for one block per module with its
            parameters (a bias grouped with its weight, see
            :func:`default_blocks`), ``"weights"`` for the LayerHessians
            convention (weights of Linear/conv layers only), or a dict block name
            -> parameter names. ``{}`` computes only the full spectrum.
        method: One of :data:`METHODS`, for every block and the full operator
            (``"auto"`` decides per block by its dimension).
        full: Also compute the full operator's spectrum.
        on_spectrum: Called with each :class:`BlockSpectrum` when it is done
            (progress).
        **options: Options of :func:`block_spectrum` (``top_k``, ``bottom_k``,
            ``max_exact_dim``, ``num_probes``, ``num_steps``, ``tol``,
            ``block_size``, ``max_matvecs``, ``grid_points``,
            ``kernel_resolution``, ``seed``).

    Returns:
        The :class:`LayerwiseSpectra`.

    Raises:
        ValueError: For unknown block parameters or invalid options.
        TypeError: For blocks of the wrong type or an operator without parameter
            names.

    Example:
        >>> import torch
        >>> from curvlab.operators import HessianOperator
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)
        ... ).double()
        >>> X, y = torch.randn(10, 4).double(), torch.randint(0, 2, (10,))
        >>> H = HessianOperator(model, torch.nn.CrossEntropyLoss(), [(X, y)])
        >>> spectra = layerwise_spectra(H, method="exact")
        >>> list(spectra.blocks), spectra.full.dim, spectra.blocks["2"].dim
        (['0', '2'], 23, 8)
    """
    resolved = _resolve_blocks(operator, blocks)
    names = _param_names(operator)

    def finish(spectrum: BlockSpectrum) -> BlockSpectrum:
        if on_spectrum is not None:
            on_spectrum(spectrum)
        return spectrum

    full_spectrum = None
    if full:
        full_spectrum = finish(
            block_spectrum(
                operator, method=method, name="full", param_names=names, **options
            )
        )
    out = {}
    for block_name, block_names in resolved.items():
        out[block_name] = finish(
            block_spectrum(
                block_operator(operator, block_names),
                method=method,
                name=block_name,
                param_names=block_names,
                **options,
            )
        )
    return LayerwiseSpectra(full=full_spectrum, blocks=out)

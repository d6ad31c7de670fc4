r"""The Hessian split into its Gauss-Newton part and the residual, layer by layer.

The Hessian of a loss :math:`\ell(f_\theta(x), y)` is

.. math::

    H = \underbrace{J^\top \nabla_f^2 \ell\, J}_{G}
        + \underbrace{\sum_c \partial_{f_c} \ell\, \nabla_\theta^2 f_c}_{H - G},

the generalised Gauss-Newton matrix :math:`G` (positive semi-definite for convex
losses) plus a residual that vanishes where the model fits the targets (Sagun et
al. 2017; Papyan 2019). A diagonal block splits the same way,
:math:`H_l = G_l + (H_l - G_l)`. :func:`ggn_residual_split` computes the
layerwise spectra (:mod:`~curvlab.subspace.spectra.layerwise`) of all three.

References:
    - V. Papyan (2019). Measurements of three-level hierarchical structure in the
      outliers in the spectrum of deepnet Hessians. ICML. arXiv:1901.08244.
    - L. Sagun, U. Evci, V. U. Guney, Y. Dauphin, L. Bottou (2017). Empirical
      analysis of the Hessian of over-parametrized neural networks.
      arXiv:1706.04454.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from curvlab.subspace.spectra.blocks import (
    _param_names,
    _resolve_blocks,
    block_operator,
)
from curvlab.subspace.spectra.layerwise import (
    MAX_EXACT_DIM,
    METHODS,
    _dense,
    block_spectrum,
)
from curvlab.subspace.spectra.records import (
    BlockSpectrum,
    LayerwiseSpectra,
    SplitSpectra,
)

__all__ = ["ggn_residual_split"]


def ggn_residual_split(
    hessian,
    ggn,
    blocks: Mapping[str, Sequence[str]] | str | None = None,
    method: str = "auto",
    *,
    full: bool = True,
    on_spectrum: Callable[[str, BlockSpectrum], None] | None = None,
    **options: Any,
) -> SplitSpectra:
    r"""Layerwise spectra of the Hessian, its Gauss-Newton part and the residual.

    The Hessian of a loss :math:`\ell(f_\theta(x), y)` splits into the GGN
    :math:`G = J^\top \nabla_f^2 \ell\, J` (positive semi-definite for convex
    losses) and the residual :math:`H - G = \sum_c \partial_{f_c} \ell\,
    \nabla_\theta^2 f_c`, which vanishes where the model fits the targets (Sagun
    et al. 2017; Papyan 2019). A diagonal block of the residual is
    :math:`H_l - G_l`. The residual operator is ``hessian - ggn`` (operator
    algebra, two products per column); with exact spectra the dense blocks of
    :math:`H` and :math:`G` are built once and subtracted, so the residual costs
    no products.

    Args:
        hessian: A :class:`~curvlab.operators.HessianOperator`.
        ggn: A :class:`~curvlab.operators.GGNOperator` on the same model, loss,
            data and parameters.
        blocks: As in :func:`layerwise_spectra`.
        method: As in :func:`layerwise_spectra`.
        full: Also compute the full spectra.
        on_spectrum: Called with ``("hessian" | "ggn" | "residual", spectrum)``
            as each spectrum is done.
        **options: Options of :func:`block_spectrum`.

    Returns:
        The :class:`SplitSpectra`.

    Raises:
        ValueError: If the operators act on different parameters, or for invalid
            blocks or options.
    """
    names = _param_names(hessian)
    if _param_names(ggn) != names:
        raise ValueError(
            f"hessian and ggn must act on the same parameters. Got {names} and "
            f"{_param_names(ggn)}."
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Got {method!r}.")
    resolved = _resolve_blocks(hessian, blocks)
    max_exact_dim = options.get("max_exact_dim", MAX_EXACT_DIM)
    residual_op = hessian - ggn
    jobs = ([("full", names)] if full else []) + list(resolved.items())
    results: dict[str, dict[str, BlockSpectrum]] = {
        "hessian": {},
        "ggn": {},
        "residual": {},
    }
    for block_name, block_names in jobs:
        H = block_operator(hessian, block_names)
        G = block_operator(ggn, block_names)
        dim = H.shape[0]
        chosen = method
        if chosen == "auto":
            chosen = "exact" if dim <= max_exact_dim else "slq"
        if chosen == "exact" and dim <= max_exact_dim:
            start = time.perf_counter()
            H_dense, G_dense = _dense(H, max_exact_dim), _dense(G, max_exact_dim)
            build = (time.perf_counter() - start) / 2
            ops = {"hessian": H_dense, "ggn": G_dense, "residual": H_dense - G_dense}
            built = {"hessian": (dim, build), "ggn": (dim, build), "residual": (0, 0)}
        else:
            ops = {
                "hessian": H,
                "ggn": G,
                "residual": block_operator(residual_op, block_names),
            }
            built = dict.fromkeys(ops, (0, 0.0))
        for kind, op in ops.items():
            spectrum = block_spectrum(
                op,
                method=chosen,
                name=block_name,
                param_names=block_names,
                **options,
            )
            extra_matvecs, extra_seconds = built[kind]
            spectrum = _with_cost(spectrum, extra_matvecs, extra_seconds)
            results[kind][block_name] = spectrum
            if on_spectrum is not None:
                on_spectrum(kind, spectrum)

    def collect(kind: str) -> LayerwiseSpectra:
        found = dict(results[kind])
        return LayerwiseSpectra(full=found.pop("full", None), blocks=found)

    return SplitSpectra(
        hessian=collect("hessian"), ggn=collect("ggn"), residual=collect("residual")
    )


def _with_cost(spectrum: BlockSpectrum, matvecs: int, seconds: float):
    if not matvecs and not seconds:
        return spectrum
    values = {k: getattr(spectrum, k) for k in spectrum.__dataclass_fields__}
    values["num_matvecs"] += matvecs
    values["seconds"] += seconds
    return BlockSpectrum(**values)

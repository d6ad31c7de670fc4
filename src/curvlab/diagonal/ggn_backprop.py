r"""Exact GGN diagonals by backpropagating a symmetric factor of the loss Hessian.

With :math:`c\,\nabla^2_f \ell_n = S_n S_n^\top` (``K`` columns per sample ``n``,
see :mod:`curvlab.diagonal.exact`), the GGN of a batch is
:math:`\sum_n J_n^\top S_n S_n^\top J_n`, and its diagonal is

.. math::
    \mathrm{diag}(G) = \sum_n \sum_{k=1}^{K} \big(J_n^\top S_n e_k\big)^{\odot 2}.

Instead of one vector-Jacobian product per sample and column, the factor is
propagated backwards through the network once, as a ``(K, B, *features)`` tensor,
with the transposed Jacobian of each module (Dangel, Kunstner & Hennig 2020,
"BackPACK: Packing more into backprop", ICLR, ``DiagGGNExact``/``DiagGGNMC``).
For a module :math:`y = f(x)`:

- Linear :math:`y = x W^\top + b`: :math:`S(x) = S(y)\,W`; convolutions: the
  transposed convolution of :math:`S(y)`;
- element-wise activations: :math:`S(x) = \sigma'(x) \odot S(y)`; eval-mode
  BatchNorm: :math:`S(x) = s \odot S(y)` with the per-channel scale :math:`s`;
- pooling: the transposed pooling (max pooling scatters to the arg-max);
  Flatten reshapes; Identity and eval-mode Dropout pass :math:`S` on;
- a residual block :math:`y = x + f(x)`: :math:`S(x) = S(y) + J_f^\top S(y)`,
  the transposed Jacobian :math:`(I + J_f)^\top`, so the block is exact too.

Each parameter's diagonal is the sum over samples and columns of the square of its
per-sample, per-column gradient. For a Linear layer on ``(B, in)`` inputs the
gradient :math:`S_{kbo}\, x_{bi}` factorises, so
:math:`\mathrm{diag}(W)_{oi} = \sum_{k,b} S_{kbo}^2\, x_{bi}^2`; a weight shared
over positions (convolutions, Linear on ``(B, ..., in)``, BatchNorm) sums the
gradient over the positions *before* squaring, from the unfolded input. The
cost is that of about ``K`` backward passes on the activations, without the
per-sample parameter gradients of the layers whose gradient factorises.

**Supported models**: those of :func:`curvlab.diagonal.hesscale` (same walk and
module types, see :mod:`curvlab.diagonal.backprop`), with every parameter used
by one module only (a shared weight's gradient sums over its uses before it is
squared). :func:`supported` says whether a model qualifies;
:func:`curvlab.diagonal.exact_ggn_diagonal` falls back to its generic
``torch.func`` method otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from curvlab._typing import TensorList
from curvlab.diagonal._rules import (
    RULES,
    AvgPoolRule,
    BatchNormRule,
    ConvRule,
    ElementwiseRule,
    FlattenRule,
    IdentityRule,
    LinearRule,
    MaxPoolRule,
    Rule,
    _conv_options,
    _conv_padding,
)
from curvlab.diagonal.backprop import (
    _Collector,
    _ResidualStep,
    _Step,
    _walk_backward,
    check_supported,
)

__all__ = ["factor_diagonal", "shares_parameters", "supported"]


class _FactorCollector(_Collector):
    """Parameter selection, results and the memory budget of the factor walk."""

    def __init__(self, params: Sequence[Tensor], budget: int):
        super().__init__(params, second_order=False)
        self.budget = budget


FactorRule = Callable[
    [Rule, nn.Module, Tensor, Tensor, object, Tensor, bool, _FactorCollector],
    Tensor | None,
]
"""``factor_rule(rule, module, x, y, ctx, S, need_input, collector) -> S(x)``.

``rule`` is the module's HesScale rule (for its helpers), ``S`` the factor at
the module's output, ``(K, B, *y.shape[1:])``. A factor rule adds its
parameters' diagonals to ``collector`` and returns the factor at the input
(``None`` if ``need_input`` is false)."""


# -------------------------------------------------------------------- helpers
def _shared_weight_diagonal(S: Tensor, cols: Tensor, budget: int) -> Tensor:
    r"""Sum of squared per-sample gradients of a weight shared over positions.

    The gradient of column ``k`` and sample ``b`` is :math:`S_{kb} C_b` per group
    ``g``, a sum over the positions ``l``; its square is summed over ``k`` and
    ``b``: :math:`\sum_{k,b} \big(\sum_l S_{kbgol} C_{bgli}\big)^2`.

    Args:
        S: Backpropagated factor ``(K, B, G, O, L)``.
        cols: Inputs per position ``(B, G, L, I)`` (unfolded for convolutions).
        budget: Entries of per-sample gradients held at once (at least one
            gradient).

    Returns:
        The sum, ``(G, O, I)``.
    """
    K, B, groups, out, _ = S.shape
    size = groups * out * cols.shape[-1]
    chunk = max(1, min(B, budget // size))
    total = None
    for b0 in range(0, B, chunk):
        bs = slice(b0, b0 + chunk)
        C = cols[bs].flatten(0, 1)  # (b G, L, I)
        for k in range(K):  # one matrix product per (sample, group)
            G = torch.bmm(S[k, bs].flatten(0, 1), C)  # (b G, O, I)
            part = (G * G).unflatten(0, (-1, groups)).sum(0)
            total = part if total is None else total.add_(part)
    return total


def _expanded_like(x: Tensor, K: int) -> Tensor:
    """A stride-0 stand-in for ``K`` copies of ``x`` (its shape is all that is read)."""
    return x.new_empty(()).expand(K * x.shape[0], *x.shape[1:])


# ---------------------------------------------------------------------- rules
def _linear(rule, module, x, y, ctx, S, need_input, collector):
    W, b = module.weight, module.bias
    K, B = S.shape[:2]
    if x.ndim == 2:  # the gradient S_kbo x_bi factorises
        if collector.selected(W) or collector.selected(b):
            squares = (S * S).sum(0)  # (B, out)
            if collector.selected(W):
                collector.add(W, squares.T @ (x * x))
            if collector.selected(b):
                collector.add(b, squares.sum(0))
    else:  # a weight shared over positions: sum over them before squaring
        Sp = S.reshape(K, B, -1, S.shape[-1])  # (K, B, P, out)
        if collector.selected(W):
            xp = x.reshape(B, 1, -1, x.shape[-1])  # (B, 1, P, in)
            St = Sp.transpose(-1, -2).unsqueeze(2)  # (K, B, 1, out, P)
            diag = _shared_weight_diagonal(St, xp, collector.budget)
            collector.add(W, diag.reshape(W.shape))
        if collector.selected(b):
            per_sample = Sp.sum(2)
            collector.add(b, (per_sample * per_sample).sum((0, 1)))
    return S @ W if need_input else None


def _unfold(module: nn.Module, x: Tensor) -> Tensor:
    """Unfolded input of a convolution, ``(B, groups, in/groups * kernel, L)``."""
    padding = _conv_padding(module)
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if x.ndim == 3:  # Conv1d as a convolution of height one
        x = x.unsqueeze(2)
        kernel, stride = (1, *kernel), (1, *stride)
        dilation, padding = (1, *dilation), [0, *padding]
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.reshape(x.shape[0], module.groups, -1, cols.shape[-1])


def _conv(rule, module, x, y, ctx, S, need_input, collector):
    W, b = module.weight, module.bias
    K, B = S.shape[:2]
    spatial = tuple(range(3, S.ndim))
    if collector.selected(W):
        cols = _unfold(module, x)  # (B, G, I, L)
        groups = module.groups
        Sg = S.reshape(K, B, groups, W.shape[0] // groups, -1)  # (K, B, G, O, L)
        diag = _shared_weight_diagonal(Sg, cols.transpose(-1, -2), collector.budget)
        collector.add(W, diag.reshape(W.shape))
    if collector.selected(b):
        per_sample = S.sum(spatial)
        collector.add(b, (per_sample * per_sample).sum((0, 1)))
    if not need_input:
        return None
    S_in = torch.ops.aten.convolution_backward(
        S.reshape(K * B, *S.shape[2:]),
        _expanded_like(x, K),
        W,
        None,
        *_conv_options(module),
        [True, False, False],
    )[0]
    return S_in.reshape(K, *x.shape)


def _batchnorm(rule, module, x, y, ctx, S, need_input, collector):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv_std = torch.rsqrt(module.running_var + module.eps).reshape(shape)
    positions = tuple(range(3, S.ndim))
    if collector.selected(module.weight):
        xhat = (x - module.running_mean.reshape(shape)) * inv_std
        per_sample = (S * xhat).sum(positions) if positions else S * xhat
        collector.add(module.weight, (per_sample * per_sample).sum((0, 1)))
    if collector.selected(module.bias):
        per_sample = S.sum(positions) if positions else S
        collector.add(module.bias, (per_sample * per_sample).sum((0, 1)))
    if not need_input:
        return None
    weight = module.weight
    return S * (inv_std if weight is None else inv_std * weight.reshape(shape))


def _identity(rule, module, x, y, ctx, S, need_input, collector):
    return S


def _flatten(rule, module, x, y, ctx, S, need_input, collector):
    return S.reshape(S.shape[0], *x.shape) if need_input else None


def _max_pool(rule, module, x, y, ctx, S, need_input, collector):
    if not need_input:
        return None
    K = S.shape[0]
    idx = ctx.reshape(*ctx.shape[:2], -1).unsqueeze(0).expand(K, -1, -1, -1)
    out = S.new_zeros(K, *x.shape[:2], math.prod(x.shape[2:]))
    out.scatter_add_(3, idx, S.reshape(idx.shape))
    return out.reshape(K, *x.shape)


def _avg_pool(rule, module, x, y, ctx, S, need_input, collector):
    if not need_input:
        return None
    K = S.shape[0]
    flat = rule._transpose(module, _expanded_like(x, K), S.flatten(0, 1))
    return flat.reshape(K, *x.shape)


def _elementwise(rule, module, x, y, ctx, S, need_input, collector):
    if not need_input:
        return None
    d1, _ = rule.derivatives(module, x, y)
    return S * d1


FACTOR_RULES: dict[type, FactorRule] = {
    LinearRule: _linear,
    ConvRule: _conv,
    BatchNormRule: _batchnorm,
    IdentityRule: _identity,
    FlattenRule: _flatten,
    MaxPoolRule: _max_pool,
    AvgPoolRule: _avg_pool,
    ElementwiseRule: _elementwise,
}
"""The factor rule of each HesScale rule class."""


def _factor_step(
    step: _Step, state: tuple, need_input: bool, collector: _FactorCollector
) -> tuple:
    (S,) = state
    factor_rule = FACTOR_RULES[type(step.rule)]
    return (
        factor_rule(
            step.rule, step.module, step.x, step.y, step.ctx, S, need_input, collector
        ),
    )


# --------------------------------------------------------------------- driver
def supported(model: nn.Module) -> bool:
    """Whether the factor backpropagation handles ``model`` exactly.

    Args:
        model: The model.

    Returns:
        ``True`` if :func:`curvlab.diagonal.check_supported` accepts the model,
        every rule has a factor rule and no parameter is used by two modules.
    """
    try:
        check_supported(model)
    except (NotImplementedError, ValueError):
        return False
    for _, module in model.named_modules(remove_duplicate=False):
        rule = RULES.get(type(module))
        if rule is not None and type(rule) not in FACTOR_RULES:
            return False
    return not shares_parameters(model)


def shares_parameters(model: nn.Module) -> bool:
    """Whether a parameter (or module) is used at two places of ``model``.

    Args:
        model: The model.

    Returns:
        ``True`` if a parameter tensor appears under two module paths.
    """
    seen: set[int] = set()
    for _, module in model.named_modules(remove_duplicate=False):
        for _, p in module.named_parameters(recurse=False, remove_duplicate=False):
            if id(p) in seen:
                return True
            seen.add(id(p))
    return False


def _per_sample_size(steps: list) -> int:
    """Largest number of entries of one sample's input or output of any step."""
    size = 1
    for step in steps:
        if isinstance(step, _ResidualStep):
            size = max(size, _per_sample_size(step.steps))
        else:
            size = max(size, step.x[0].numel(), step.y[0].numel())
    return size


def _slice_steps(steps: list, rows: slice) -> list:
    """The recorded steps restricted to the samples ``rows``."""
    out = []
    for step in steps:
        if isinstance(step, _ResidualStep):
            out.append(_ResidualStep(step.module, _slice_steps(step.steps, rows)))
        else:
            ctx = step.ctx[rows] if isinstance(step.ctx, Tensor) else step.ctx
            out.append(_Step(step.rule, step.module, step.x[rows], step.y[rows], ctx))
    return out


def factor_diagonal(
    steps: list, params: Sequence[Tensor], S: Tensor, *, budget: int = 2**24
) -> TensorList:
    r""":math:`\sum_n \sum_k (J_n^\top S_{k,n})^{\odot 2}` by backpropagating ``S``.

    Args:
        steps: The walk recorded by ``curvlab.diagonal.backprop._forward`` on the
            batch (for a model that :func:`supported` accepts).
        params: The selected parameters.
        S: The factor at the output, ``(K, B, *output.shape[1:])``.
        budget: Entries of backpropagated factors and of per-sample gradients
            held at once; the samples are processed in chunks that fit.

    Returns:
        The sums, shaped like ``params`` (no weighting across batches).
    """
    K, B = S.shape[:2]
    chunk = max(1, min(B, budget // (K * _per_sample_size(steps))))
    totals: dict[int, Tensor] = {}
    for start in range(0, B, chunk):
        rows = slice(start, start + chunk)
        part = steps if chunk >= B else _slice_steps(steps, rows)
        collector = _FactorCollector(params, budget)
        _walk_backward(part, (S[:, rows],), False, collector, _factor_step)
        for key, (value,) in collector.results.items():
            if key in totals:
                totals[key].add_(value)
            else:
                totals[key] = value
    return [
        torch.zeros_like(p) if id(p) not in totals else totals[id(p)].reshape(p.shape)
        for p in params
    ]

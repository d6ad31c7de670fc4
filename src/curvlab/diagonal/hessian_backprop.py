r"""Exact Hessian diagonals of MLP-like networks by Hessian backpropagation.

The loss of a batch sums over samples that do not interact, so the Hessian of the
loss with respect to one sample's intermediate output :math:`z` is a dense
``(n, n)`` matrix :math:`H_z` per sample, with ``n`` the number of entries of
:math:`z`. It is propagated backwards exactly (Dangel, Kunstner & Hennig 2020,
"BackPACK: Packing more into backprop", ICLR, ``DiagHessian``; Mizutani & Dreyfus
2008, "Second-order stagewise backpropagation for Hessian-matrix analyses and
investigation of negative curvature", Neural Networks), starting from
:math:`c\,\nabla^2_f \ell` and the gradient :math:`g = c\,\nabla_f \ell` at the
output:

.. math::
    H_x &= W^\top H_a W, \qquad g_x = W^\top g_a
        \quad\text{(Linear } a = W x + b\text{)}, \\
    H_x &= \mathrm{diag}(\sigma') H_y \mathrm{diag}(\sigma')
        + \mathrm{diag}(\sigma'' \odot g_y), \qquad g_x = \sigma' \odot g_y
        \quad\text{(element-wise } y = \sigma(x)\text{)},

with :math:`W` acting on the last axis at every position for Linear layers on
``(B, ..., in)`` inputs. The pre-activation is linear in the weights, so
:math:`\partial^2 L/\partial W_{oi}^2 = \sum_{p,q} [H_a]_{po,qo}\, x_{pi} x_{qi}`
(positions ``p, q``; just :math:`[H_a]_{oo} x_i^2` on ``(B, in)`` inputs) and
:math:`\partial^2 L/\partial b_o^2 = \sum_{p,q} [H_a]_{po,qo}`, summed over the
samples. Eval-mode BatchNorm is a per-channel affine map handled the same way;
Flatten, Identity and eval-mode Dropout leave :math:`H` alone.

One step costs :math:`O(B\,n^2 m)` for a Linear layer ``m -> n`` (the first
layer's input Hessian is never formed), against the ``D`` Hessian-vector products
of the generic method: exact and cheap for MLPs of moderate width.

**Supported models**: ``nn.Sequential`` (nested allowed) of ``Linear``, the
element-wise activations of :mod:`curvlab.diagonal.backprop` (``ReLU``,
``LeakyReLU``, ``Tanh``, ``Sigmoid``, ``ELU``, ``SELU``, ``Softplus``, ``GELU``,
``SiLU``), ``Flatten``, ``Identity``, ``Dropout`` and ``BatchNorm1d/2d`` in eval
mode, with no parameter used twice; losses ``CrossEntropyLoss``, ``MSELoss`` and
``BCEWithLogitsLoss``. Convolutions, pooling and residual blocks are not
supported (their per-sample Hessians are as large as the feature maps squared).
:func:`curvlab.diagonal.exact_hessian_diagonal` uses this method when
:func:`supported` accepts the model and every formed per-sample Hessian has at
most ``max_features`` rows, and its Hessian-vector products otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from curvlab._typing import TensorList
from curvlab.diagonal._rules import (
    RULES,
    BatchNormRule,
    ElementwiseRule,
    FlattenRule,
    IdentityRule,
    LinearRule,
)
from curvlab.diagonal.backprop import _Collector, _Step, _walk_backward
from curvlab.diagonal.ggn_backprop import shares_parameters
from curvlab.operators.losses import OutputSpaceLoss

__all__ = ["MAX_FEATURES", "hessian_diagonal", "supported"]

MAX_FEATURES = 4096
"""Default bound on the rows ``n`` of a formed per-sample Hessian (``n**2``
entries per sample, 128 MiB in float64 at the bound)."""

_RULES = (LinearRule, ElementwiseRule, IdentityRule, FlattenRule, BatchNormRule)


def supported(model: nn.Module) -> bool:
    """Whether Hessian backpropagation handles ``model`` (module types only).

    Args:
        model: The model.

    Returns:
        ``True`` for an ``nn.Sequential`` (or single module) of supported modules
        in supported configurations, none of whose parameters is used twice.
    """

    def walk(module: nn.Module) -> bool:
        if type(module) is nn.Sequential:
            return all(walk(child) for child in module)
        rule = RULES.get(type(module))
        return (
            rule is not None and isinstance(rule, _RULES) and rule.check(module) is None
        )

    return walk(model) and not shares_parameters(model)


# ----------------------------------------------------------------- the steps
def _linear(rule, module, x, H, g, need_input, collector):
    W, b = module.weight, module.bias
    B, (out, inp) = H.shape[0], W.shape
    P = math.prod(x.shape[1:-1])
    if collector.selected(W) or collector.selected(b):
        if P == 1:
            h = H.diagonal(dim1=1, dim2=2)  # (B, out)
            if collector.selected(W):
                xf = x.reshape(B, inp)
                collector.add(W, h.T @ (xf * xf))
            if collector.selected(b):
                collector.add(b, h.sum(0))
        else:
            # [H]_{po,qo} for every o: (B, P, Q, out)
            h = H.reshape(B, P, out, P, out).diagonal(dim1=2, dim2=4)
            if collector.selected(W):
                xp = x.reshape(B, P, inp)
                collector.add(W, torch.einsum("bpqo,bpi,bqi->oi", h, xp, xp))
            if collector.selected(b):
                collector.add(b, h.sum((0, 1, 2)))
    if not need_input:
        return None, None
    n, m = P * out, P * inp
    # J = I_P (x) W; H J, then (H J)^T J = J^T H J (H is symmetric)
    HJ = (H.reshape(B, n, P, out) @ W).reshape(B, n, m)
    H_in = (HJ.transpose(1, 2).reshape(B, m, P, out) @ W).reshape(B, m, m)
    g_in = (g.reshape(B, P, out) @ W).reshape(B, m)
    return H_in, g_in


def _batchnorm(rule, module, x, H, g, need_input, collector):
    B, C = x.shape[:2]
    L = math.prod(x.shape[2:])
    inv_std = torch.rsqrt(module.running_var + module.eps)
    if collector.selected(module.weight) or collector.selected(module.bias):
        # [H]_{cl,cm} for every channel c: (B, L, M, C)
        h = H.reshape(B, C, L, C, L).diagonal(dim1=1, dim2=3)
        if collector.selected(module.weight):
            xhat = (x.reshape(B, C, L) - module.running_mean[:, None]) * (
                inv_std[:, None]
            )
            collector.add(module.weight, torch.einsum("blmc,bcl,bcm->c", h, xhat, xhat))
        if collector.selected(module.bias):
            collector.add(module.bias, h.sum((0, 1, 2)))
    if not need_input:
        return None, None
    scale = inv_std if module.weight is None else inv_std * module.weight
    s = scale.repeat_interleave(L)  # per entry, channel-major like the features
    return s.unsqueeze(1) * H * s, g * s


def _pass(rule, module, x, H, g, need_input, collector):
    return H, g


_STEPS = {
    LinearRule: _linear,
    BatchNormRule: _batchnorm,
    IdentityRule: _pass,
    FlattenRule: _pass,
}


def _hessian_step(
    step: _Step, state: tuple, need_input: bool, collector: _Collector
) -> tuple:
    """Backpropagate ``(H, g)``, flattened per sample, through one module."""
    H, g = state
    if isinstance(step.rule, ElementwiseRule):
        if not need_input:
            return None, None
        B = H.shape[0]
        d1, d2 = step.rule.derivatives(step.module, step.x, step.y)
        d1 = d1.reshape(B, -1)
        H = d1.unsqueeze(2) * H * d1.unsqueeze(1)
        if d2 is not None:
            H.diagonal(dim1=1, dim2=2).add_(d2.reshape(B, -1) * g)
        return H, d1 * g
    function = _STEPS[type(step.rule)]
    return function(step.rule, step.module, step.x, H, g, need_input, collector)


# -------------------------------------------------------------------- driver
def _output_hessian(output_loss: OutputSpaceLoss, output: Tensor, c: float) -> Tensor:
    r"""Per-sample :math:`c\,\nabla^2_f \ell`, ``(B, K, K)`` over flattened outputs."""
    B, shape = output.shape[0], output.shape[1:]
    K = math.prod(shape)
    eye = torch.eye(K, dtype=output.dtype, device=output.device)
    columns = eye.reshape(K, 1, *shape).expand(K, B, *shape)
    HE = output_loss.hessian_matmat(output, columns)  # (K, B, *O)
    return (c * HE).reshape(K, B, K).permute(1, 2, 0)


def hessian_diagonal(
    steps: list,
    output_loss: OutputSpaceLoss,
    output: Tensor,
    y: Tensor,
    params: Sequence[Tensor],
    *,
    budget: int = 2**24,
    max_features: int | None = MAX_FEATURES,
) -> TensorList | None:
    r"""Exact Hessian diagonal of one batch's loss by Hessian backpropagation.

    Args:
        steps: The walk recorded by ``curvlab.diagonal.backprop._forward`` on the
            batch, for a model that :func:`supported` accepts.
        output_loss: The loss's output-space derivatives.
        output: The model output ``(B, *O)``.
        y: The targets.
        params: The selected parameters.
        budget: Entries of per-sample Hessians held at once; the samples are
            processed in chunks that fit (at least one sample).
        max_features: Largest number ``n`` of entries of a feature whose
            per-sample ``(n, n)`` Hessian is formed; ``None`` for no bound.

    Returns:
        The diagonal of the batch loss's Hessian, shaped like ``params``, or
        ``None`` if a formed Hessian would exceed ``max_features``.
    """
    collector = _Collector(params, second_order=True)
    selected = [collector.has_selected(step.module) for step in steps]
    if not any(selected):
        return [torch.zeros_like(p) for p in params]
    first = selected.index(True)
    size = max([output[0].numel()] + [step.y[0].numel() for step in steps[first:]])
    if max_features is not None and size > max_features:
        return None
    B = output.shape[0]
    c = output_loss.batch_scale(output)
    g = (c * output_loss.gradient(output, y)).reshape(B, -1)
    chunk = max(1, min(B, budget // (size * size)))
    for start in range(0, B, chunk):
        rows = slice(start, start + chunk)
        part = steps
        if chunk < B:
            part = [_Step(s.rule, s.module, s.x[rows], s.y[rows], s.ctx) for s in steps]
        H = _output_hessian(output_loss, output[rows], c)
        _walk_backward(part, (H, g[rows]), False, collector, _hessian_step)
    return [
        collector.results[id(p)][0].reshape(p.shape)
        if id(p) in collector.results
        else torch.zeros_like(p)
        for p in params
    ]

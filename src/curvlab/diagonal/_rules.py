r"""Per-module rules of the diagonal backpropagation (HesScale, HesScaleGN, BL89).

Every rule maps, for one module :math:`y = f(x)`, the per-sample gradient
:math:`g(y)` and the approximate per-sample Hessian diagonal :math:`\hat h(y)` of
the loss with respect to the module's output to those with respect to its input,
and returns the gradient and diagonal of the module's own parameters (summed over
the batch). Off-diagonal terms are dropped throughout (Elsayed & Mahmood 2022,
arXiv 2210.11639, §3):

- linear maps :math:`y = Ax` (Linear, convolution, pooling, eval-mode BatchNorm,
  Flatten): :math:`g(x) = A^\top g(y)` and
  :math:`\hat h(x) = \mathrm{diag}(A^\top \mathrm{diag}(\hat h(y)) A)
  = (A \odot A)^\top \hat h(y)`;
- element-wise activations :math:`y = \sigma(x)`: :math:`g(x) = \sigma'(x) g(y)` and
  :math:`\hat h(x) = \sigma'(x)^2 \hat h(y) + \sigma''(x) g(y)`, the second term
  left out for HesScaleGN.

For a weight shared over positions (convolutions, Linear on ``(B, ..., in)``)
the weight diagonal sums :math:`\hat h(y)\, x^2` over the positions, which drops
the cross terms between positions as well.

Rules are looked up by the exact module type (a subclass may change ``forward``),
so a module without a rule is reported instead of being handled wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ParamResult = tuple[Tensor, Tensor, Tensor]
"""A parameter, its gradient and its diagonal."""

_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717


@dataclass
class Backward:
    """What one rule hands back: input derivatives and parameter results."""

    g: Tensor | None
    h: Tensor | None
    params: list[ParamResult]


class Rule:
    """Forward and diagonal backward of one kind of module."""

    def check(self, module: nn.Module) -> str | None:
        """Return why ``module``'s configuration is unsupported, or ``None``."""
        del module
        return None

    def forward(self, module: nn.Module, x: Tensor) -> tuple[Tensor, Any]:
        """Return the output and what the backward needs besides input/output."""
        return module(x), None

    def backward(
        self,
        module: nn.Module,
        x: Tensor,
        y: Tensor,
        ctx: Any,
        g: Tensor,
        h: Tensor,
        *,
        second_order: bool,
        need_input: bool,
        selected: Callable[[Tensor | None], bool],
    ) -> Backward:
        """Backpropagate ``(g, h)`` from the output to the input and parameters."""
        raise NotImplementedError


# --------------------------------------------------------------------- linear
class LinearRule(Rule):
    r"""``nn.Linear``: :math:`y = x W^\top + b`."""

    def forward(self, module, x):
        return F.linear(x, module.weight, module.bias), None

    def backward(self, module, x, y, ctx, g, h, *, second_order, need_input, selected):
        W, b = module.weight, module.bias
        params = []
        if selected(W):
            xf = x.reshape(-1, x.shape[-1])
            gf, hf = g.reshape(-1, g.shape[-1]), h.reshape(-1, h.shape[-1])
            params.append((W, gf.T @ xf, hf.T @ (xf * xf)))
        if selected(b):
            dims = tuple(range(g.ndim - 1))
            params.append((b, g.sum(dims), h.sum(dims)))
        if not need_input:
            return Backward(None, None, params)
        return Backward(g @ W, h @ (W * W), params)


class ConvRule(Rule):
    r"""``nn.Conv1d`` and ``nn.Conv2d`` (zero padding, any stride/dilation/groups).

    The input diagonal is the transposed convolution of :math:`\hat h(y)` with the
    squared kernel, the weight diagonal the correlation of :math:`\hat h(y)` with
    the squared input; both come from ``aten.convolution_backward``.
    """

    def check(self, module):
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} (only 'zeros')"
        if _conv_padding(module) is None:
            return "padding='same' with an even total padding (asymmetric)"
        return None

    def forward(self, module, x):
        return module(x), None

    def backward(self, module, x, y, ctx, g, h, *, second_order, need_input, selected):
        W, b = module.weight, module.bias
        want_w, want_b = selected(W), selected(b)
        if not (need_input or want_w or want_b):
            return Backward(None, None, [])
        options = (*_conv_options(module), [need_input, want_w, want_b])
        bias_sizes = [W.shape[0]] if b is not None else None
        g_in, g_w, g_b = torch.ops.aten.convolution_backward(
            g, x, W, bias_sizes, *options
        )
        h_in, h_w, h_b = torch.ops.aten.convolution_backward(
            h, x * x if want_w else x, W * W, bias_sizes, *options
        )
        params = []
        if want_w:
            params.append((W, g_w, h_w))
        if want_b:
            params.append((b, g_b, h_b))
        return Backward(g_in, h_in, params)


def _conv_options(module) -> tuple:
    """``aten.convolution_backward``'s options of a convolution, before the mask."""
    dims = module.weight.ndim - 2
    return (
        list(module.stride),
        _conv_padding(module),
        list(module.dilation),
        False,
        [0] * dims,
        module.groups,
    )


def _conv_padding(module) -> list[int] | None:
    """Numeric symmetric padding of a convolution, ``None`` if asymmetric."""
    if module.padding == "valid":
        return [0] * len(module.kernel_size)
    if module.padding == "same":
        totals = [
            d * (k - 1)
            for d, k in zip(module.dilation, module.kernel_size, strict=True)
        ]
        if any(t % 2 for t in totals):
            return None
        return [t // 2 for t in totals]
    return list(module.padding)


class BatchNormRule(Rule):
    r"""``nn.BatchNorm1d/2d`` in eval mode: a per-channel affine map.

    With running statistics :math:`\mu, v` the map is
    :math:`y = \gamma \hat x + \beta` with
    :math:`\hat x = (x - \mu)/\sqrt{v + \epsilon}`, so :math:`g(x) = s\,g(y)` and
    :math:`\hat h(x) = s^2 \hat h(y)` with
    :math:`s = \gamma/\sqrt{v + \epsilon}`.
    """

    def check(self, module):
        if module.training:
            return "training mode (call model.eval(): batch statistics couple samples)"
        if module.running_mean is None:
            return "track_running_stats=False (normalises with batch statistics)"
        return None

    def forward(self, module, x):
        return module(x), None

    def backward(self, module, x, y, ctx, g, h, *, second_order, need_input, selected):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        inv_std = torch.rsqrt(module.running_var + module.eps).reshape(shape)
        scale = (
            inv_std if module.weight is None else inv_std * module.weight.reshape(shape)
        )
        sum_dims = (0, *range(2, x.ndim))
        params = []
        if selected(module.weight):
            xhat = (x - module.running_mean.reshape(shape)) * inv_std
            params.append(
                (
                    module.weight,
                    (g * xhat).sum(sum_dims),
                    (h * xhat * xhat).sum(sum_dims),
                )
            )
        if selected(module.bias):
            params.append((module.bias, g.sum(sum_dims), h.sum(sum_dims)))
        if not need_input:
            return Backward(None, None, params)
        return Backward(g * scale, h * (scale * scale), params)


# ------------------------------------------------------------ shape and no-ops
class IdentityRule(Rule):
    """Identity in the backward: ``nn.Identity`` and eval-mode Dropout."""

    def check(self, module):
        if isinstance(module, nn.modules.dropout._DropoutNd) and (
            module.training and module.p > 0
        ):
            return "training mode with p > 0 (random; call model.eval())"
        return None

    def forward(self, module, x):
        return x, None

    def backward(self, module, x, y, ctx, g, h, *, second_order, need_input, selected):
        return Backward(g, h, [])


class FlattenRule(Rule):
    """``nn.Flatten`` (``start_dim >= 1``): reshape back to the input."""

    def check(self, module):
        if module.start_dim == 0 or module.start_dim < -1:
            return f"start_dim={module.start_dim} (the batch axis must stay)"
        return None

    def backward(self, module, x, y, ctx, g, h, *, second_order, need_input, selected):
        return Backward(g.reshape(x.shape), h.reshape(x.shape), [])


# -------------------------------------------------------------------- pooling
class MaxPoolRule(Rule):
    r"""``nn.MaxPool1d/2d``: both derivatives are scattered to the arg-max.

    The Jacobian has one entry 1 per output, so :math:`A \odot A = A`.
    """

    def check(self, module):
        if module.return_indices:
            return "return_indices=True (the output is a tuple)"
        return None

    def forward(self, module, x):
        pool = F.max_pool1d if isinstance(module, nn.MaxPool1d) else F.max_pool2d
        return pool(
            x,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            ceil_mode=module.ceil_mode,
            return_indices=True,
        )

    def backward(self, module, x, y, ctx, g, h, *, second_order, need_input, selected):
        if not need_input:
            return Backward(None, None, [])
        idx = ctx.reshape(*ctx.shape[:2], -1)
        both = torch.stack([g, h]).reshape(2, *idx.shape)
        out = both.new_zeros(2, *x.shape[:2], math.prod(x.shape[2:]))
        out.scatter_add_(3, idx.unsqueeze(0).expand(2, *idx.shape), both)
        out = out.reshape(2, *x.shape)
        return Backward(out[0], out[1], [])


class AvgPoolRule(Rule):
    r"""``nn.AvgPool1d/2d`` and ``nn.AdaptiveAvgPool2d``.

    Output :math:`o` averages its window with weight :math:`1/d_o`, so
    :math:`(A \odot A)^\top \hat h = A^\top (\hat h / d)`. The divisors ``d``
    follow PyTorch's options (``count_include_pad``, ``divisor_override``,
    ``ceil_mode``; adaptive windows).
    """

    def forward(self, module, x):
        return module(x), None

    def _transpose(self, module, x, v):
        """Apply the transposed Jacobian of the pooling to ``v`` (output-shaped)."""
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return torch.ops.aten._adaptive_avg_pool2d_backward(v, x)
        k, s, p = _pool2d_options(module)
        x2 = x.unsqueeze(-2) if isinstance(module, nn.AvgPool1d) else x
        v2 = v.unsqueeze(-2) if isinstance(module, nn.AvgPool1d) else v
        divisor = getattr(module, "divisor_override", None)
        out = torch.ops.aten.avg_pool2d_backward(
            v2, x2, k, s, p, module.ceil_mode, module.count_include_pad, divisor
        )
        return out.squeeze(-2) if isinstance(module, nn.AvgPool1d) else out

    def _inverse_divisors(self, module, x, y) -> Tensor:
        """Return :math:`1/d_o` per output position, shaped ``y.shape[2:]``."""
        spatial = x.shape[2:]
        if isinstance(module, nn.AdaptiveAvgPool2d):
            sizes = [
                _adaptive_window_sizes(n_in, n_out, x)
                for n_in, n_out in zip(spatial, y.shape[2:], strict=True)
            ]
            return 1.0 / torch.outer(sizes[0], sizes[1])
        ones = x.new_ones(1, 1, *spatial)
        k, s, p = _pool2d_options(module)
        if isinstance(module, nn.AvgPool1d):
            ones = ones.unsqueeze(-2)
        divisor = getattr(module, "divisor_override", None)
        mean = F.avg_pool2d(
            ones, k, s, p, module.ceil_mode, module.count_include_pad, divisor
        )
        count = F.avg_pool2d(
            ones, k, s, p, module.ceil_mode, module.count_include_pad, 1
        )
        return (mean / count).reshape(y.shape[2:])

    def backward(self, module, x, y, ctx, g, h, *, second_order, need_input, selected):
        if not need_input:
            return Backward(None, None, [])
        scaled = h * self._inverse_divisors(module, x, y)
        return Backward(
            self._transpose(module, x, g), self._transpose(module, x, scaled), []
        )


def _pool2d_options(module) -> tuple[list[int], list[int], list[int]]:
    """Kernel, stride and padding of an average pooling as 2d lists."""
    if isinstance(module, nn.AvgPool1d):
        return (
            [1, module.kernel_size[0]],
            [1, module.stride[0]],
            [0, module.padding[0]],
        )
    pairs = [
        [v, v] if isinstance(v, int) else list(v)
        for v in (module.kernel_size, module.stride, module.padding)
    ]
    return pairs[0], pairs[1], pairs[2]


def _adaptive_window_sizes(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """Window sizes of adaptive pooling along one axis (PyTorch's formula)."""
    o = torch.arange(n_out)
    start = torch.div(o * n_in, n_out, rounding_mode="floor")
    end = torch.div((o + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    return (end - start).to(dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------- activations
def _relu(module, x, y):
    return (x > 0).to(x.dtype), None


def _leaky_relu(module, x, y):
    return torch.ones_like(x).masked_fill_(x <= 0, module.negative_slope), None


def _tanh(module, x, y):
    d1 = 1 - y * y
    return d1, -2 * y * d1


def _sigmoid(module, x, y):
    d1 = y * (1 - y)
    return d1, d1 * (1 - 2 * y)


def _elu(module, x, y):
    neg = y + module.alpha  # alpha * exp(x) where x <= 0
    return torch.where(x > 0, 1.0, neg), torch.where(x > 0, 0.0, neg)


def _selu(module, x, y):
    neg = y + _SELU_SCALE * _SELU_ALPHA  # scale * alpha * exp(x) where x <= 0
    return torch.where(x > 0, _SELU_SCALE, neg), torch.where(x > 0, 0.0, neg)


def _softplus(module, x, y):
    bx = module.beta * x
    s = torch.sigmoid(bx)
    linear = bx > module.threshold
    d1 = torch.where(linear, 1.0, s)
    d2 = torch.where(linear, 0.0, module.beta * s * (1 - s))
    return d1, d2


def _gelu(module, x, y):
    if module.approximate == "tanh":
        k, a = math.sqrt(2 / math.pi), 0.044715
        t = torch.tanh(k * (x + a * x**3))
        du = k * (1 + 3 * a * x * x)
        sech2 = 1 - t * t
        d1 = 0.5 * (1 + t) + 0.5 * x * sech2 * du
        d2 = sech2 * (du - x * t * du * du + 0.5 * x * (6 * k * a * x))
        return d1, d2
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    return cdf + x * pdf, pdf * (2 - x * x)


def _silu(module, x, y):
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s)), s * (1 - s) * (2 + x * (1 - 2 * s))


class ElementwiseRule(Rule):
    r"""Element-wise activation with first and second derivative functions.

    :math:`g(x) = \sigma' g(y)`, :math:`\hat h(x) = \sigma'^2 \hat h(y)
    + \sigma'' g(y)` (the :math:`\sigma''` term only when ``second_order``).
    """

    def __init__(self, derivatives):
        self.derivatives = derivatives

    def check(self, module):
        if isinstance(module, nn.GELU) and module.approximate not in ("none", "tanh"):
            return f"approximate={module.approximate!r}"
        return None

    def forward(self, module, x):
        # an in-place activation would overwrite the input the backward needs
        return module(x.clone() if getattr(module, "inplace", False) else x), None

    def backward(self, module, x, y, ctx, g, h, *, second_order, need_input, selected):
        if not need_input:
            return Backward(None, None, [])
        d1, d2 = self.derivatives(module, x, y)
        h_in = d1 * d1 * h
        if second_order and d2 is not None:
            h_in = h_in + d2 * g
        return Backward(d1 * g, h_in, [])


RULES: dict[type, Rule] = {
    nn.Linear: LinearRule(),
    nn.Conv1d: ConvRule(),
    nn.Conv2d: ConvRule(),
    nn.BatchNorm1d: BatchNormRule(),
    nn.BatchNorm2d: BatchNormRule(),
    nn.Identity: IdentityRule(),
    nn.Dropout: IdentityRule(),
    nn.Dropout1d: IdentityRule(),
    nn.Dropout2d: IdentityRule(),
    nn.Flatten: FlattenRule(),
    nn.MaxPool1d: MaxPoolRule(),
    nn.MaxPool2d: MaxPoolRule(),
    nn.AvgPool1d: AvgPoolRule(),
    nn.AvgPool2d: AvgPoolRule(),
    nn.AdaptiveAvgPool2d: AvgPoolRule(),
    nn.ReLU: ElementwiseRule(_relu),
    nn.LeakyReLU: ElementwiseRule(_leaky_relu),
    nn.Tanh: ElementwiseRule(_tanh),
    nn.Sigmoid: ElementwiseRule(_sigmoid),
    nn.ELU: ElementwiseRule(_elu),
    nn.SELU: ElementwiseRule(_selu),
    nn.Softplus: ElementwiseRule(_softplus),
    nn.GELU: ElementwiseRule(_gelu),
    nn.SiLU: ElementwiseRule(_silu),
}
"""The rule of each supported module type (exact type match)."""

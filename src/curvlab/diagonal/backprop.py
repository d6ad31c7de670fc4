r"""HesScale: approximate Hessian diagonals at the cost of one backward pass.

HesScale (Elsayed & Mahmood 2022) backpropagates, next to the gradient
:math:`g`, an approximate diagonal :math:`\hat h` of the Hessian of the loss with
respect to every intermediate output, keeping diagonals only. For the layers
:math:`a_l = W_l x_{l-1} + b_l`, :math:`x_l = \sigma(a_l)` of a network the
recursion is

.. math::
    \hat h(a_L) &= \mathrm{diag}\big(\nabla^2_{a_L} L\big)
        \quad\text{(exact at the output)}, \\
    \hat h(x_{l-1}) &= (W_l \odot W_l)^\top \hat h(a_l), \qquad
    \hat h(a_l) = \sigma'(a_l)^2 \odot \hat h(x_l) + \sigma''(a_l) \odot g(x_l), \\
    \hat h(W_l)_{oi} &= \sum_n \hat h(a_{l,o})^{(n)} \big(x^{(n)}_{l-1,i}\big)^2, \qquad
    \hat h(b_l)_o = \sum_n \hat h(a_{l,o})^{(n)},

per sample ``n``, with the loss's normalisation (``1/(B T)`` for ``mean``, ``T``
loss terms per sample) in :math:`\nabla^2_{a_L} L`. Three variants:

- ``"hessian"`` (HesScale): the recursion above. Because
  :math:`\partial^2 L / \partial W_{L,oi}^2 = [\nabla^2_{a_L}L]_{oo}\, x_{L-1,i}^2`,
  the last layer's weight and bias diagonals are exact (for a last Linear layer
  on ``(B, in)`` inputs; a weight shared over positions, as in a convolution,
  drops the cross terms between positions).
- ``"ggn"`` (HesScaleGN): the :math:`\sigma''` term is dropped, which
  approximates the diagonal of the generalized Gauss-Newton matrix instead
  (exact for the last layer too).
- ``"bl89"`` (Becker & LeCun 1989): the HesScale recursion started from the
  loss written as LogSoftmax followed by the negative log-likelihood, whose
  Hessian with respect to the log-probabilities is zero. LogSoftmax is treated
  element-wise (:math:`\sigma' = 1 - p`, :math:`\sigma'' = p^2 - p`), so the
  output diagonal is :math:`c\,(p_y - p_y^2)` at the true class and zero
  elsewhere: not exact even for the last layer. For ``MSELoss`` and
  ``BCEWithLogitsLoss``, whose output Hessians are diagonal, BL89 equals HesScale.

The gradient and the diagonal travel together in one backward walk that needs no
autograd graph, so :func:`hesscale_batch` costs about two gradient evaluations.

**Supported models.** ``nn.Sequential`` (nested allowed) of ``Linear``,
``Conv1d``, ``Conv2d``, ``ReLU``, ``LeakyReLU``, ``Tanh``, ``Sigmoid``, ``ELU``,
``SELU``, ``Softplus``, ``GELU``, ``SiLU``, ``Flatten``, ``MaxPool1d/2d``,
``AvgPool1d/2d``, ``AdaptiveAvgPool2d``, ``Identity``, ``Dropout`` (eval mode),
``BatchNorm1d/2d`` (eval mode, running statistics) and :class:`Residual`
blocks :math:`y = x + f(x)`, or one such module alone. Types are matched
exactly; any other module raises ``NotImplementedError`` naming it. For a
residual block the diagonals of the two branches add,
:math:`\hat h(x) = \hat h(y) + \hat h_f(x)`, dropping the cross term
:math:`2\,\hat h(y) \odot \mathrm{diag}(J_f)` along with all other off-diagonal
information. Losses: ``CrossEntropyLoss``, ``MSELoss``, ``BCEWithLogitsLoss``,
reduction ``mean`` or ``sum``.

References:
    - Elsayed & Mahmood (2022). HesScale: Scalable Computation of Hessian
      Diagonals. arXiv 2210.11639.
    - Elsayed, Farrahi, Dangel & Mahmood (2024). Revisiting Scalable Hessian
      Diagonal Approximations for Applications in Reinforcement Learning. ICML,
      arXiv 2406.03276.
    - Becker & LeCun (1989). Improving the convergence of back-propagation
      learning with second order methods. Proceedings of the 1988 Connectionist
      Models Summer School.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from curvlab._typing import TensorList
from curvlab.diagonal._common import check_eval_mode, prepare_batch
from curvlab.diagonal._rules import RULES, Rule
from curvlab.operators.losses import OutputSpaceLoss, loss_reduction
from curvlab.operators.params import resolve_params

VARIANTS = ("hessian", "ggn", "bl89")
"""Names of the backpropagated diagonals."""

_SUPPORTED_LOSSES = (nn.CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss)


class Residual(nn.Module):
    r"""A residual block :math:`y = x + f(x)` that HesScale can backpropagate.

    Args:
        block: The residual branch :math:`f`, itself a supported model (usually
            an ``nn.Sequential``); its output must have the input's shape.

    Example:
        >>> import torch
        >>> branch = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
        >>> block = Residual(branch)
        >>> x = torch.randn(2, 3)
        >>> torch.allclose(block(x), x + block.block(x))
        True
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x + block(x)``.

        Args:
            x: Input of shape ``(B, ...)``.

        Returns:
            The block's output plus its input.
        """
        return x + self.block(x)


@dataclass(frozen=True)
class HesScaleBatch:
    """Loss, gradient and backpropagated diagonal of one mini-batch.

    Attributes:
        loss: The batch loss as ``loss_fn`` reduces it (detached scalar).
        gradients: Gradient of the batch loss, shaped like the parameters.
        diagonals: The backpropagated Hessian (or GGN) diagonal, same shapes.
        params: The parameters, in the order of the lists.
        variant: ``"hessian"``, ``"ggn"`` or ``"bl89"``.
    """

    loss: Tensor
    gradients: TensorList
    diagonals: TensorList
    params: tuple[Tensor, ...]
    variant: str


# ------------------------------------------------------------------ the walk
@dataclass
class _Step:
    rule: Rule
    module: nn.Module
    x: Tensor
    y: Tensor
    ctx: Any


@dataclass
class _ResidualStep:
    module: Residual
    steps: list


def _describe(name: str, module: nn.Module) -> str:
    return f"{name or 'model'!r} ({type(module).__name__})"


def check_supported(model: nn.Module, name: str = "") -> None:
    """Check that HesScale has a rule for every module of ``model``.

    Args:
        model: The model.
        name: Qualified name of ``model`` inside the network (for messages).

    Raises:
        NotImplementedError: For a module without a rule.
        ValueError: For a supported module in an unsupported configuration.
    """
    kind = type(model)
    if kind is nn.Sequential:
        for child_name, child in model.named_children():
            check_supported(child, f"{name}.{child_name}" if name else child_name)
        return
    if kind is Residual:
        check_supported(model.block, f"{name}.block" if name else "block")
        return
    rule = RULES.get(kind)
    if rule is None:
        supported = ", ".join(
            ["Sequential", "curvlab.diagonal.Residual"]
            + sorted(t.__name__ for t in RULES)
        )
        raise NotImplementedError(
            f"HesScale has no backpropagation rule for module "
            f"{_describe(name, model)}. Supported module types (matched exactly): "
            f"{supported}. Write residual connections as "
            "curvlab.diagonal.Residual(block); exact_hessian_diagonal and "
            "exact_ggn_diagonal work for any model."
        )
    reason = rule.check(model)
    if reason is not None:
        raise ValueError(
            f"HesScale does not support module {_describe(name, model)} with {reason}."
        )


def _forward(module: nn.Module, x: Tensor, steps: list) -> Tensor:
    kind = type(module)
    if kind is nn.Sequential:
        for child in module:
            x = _forward(child, x, steps)
        return x
    if kind is Residual:
        sub: list = []
        fx = _forward(module.block, x, sub)
        if fx.shape != x.shape:
            raise ValueError(
                f"The block of a Residual must keep the shape of its input. Got "
                f"{tuple(x.shape)} -> {tuple(fx.shape)}."
            )
        steps.append(_ResidualStep(module, sub))
        return x + fx
    rule = RULES[kind]
    y, ctx = rule.forward(module, x)
    steps.append(_Step(rule, module, x, y, ctx))
    return y


class _Collector:
    """Selected parameters and the results gathered for them."""

    def __init__(self, params: Sequence[Tensor], second_order: bool):
        self.ids = {id(p) for p in params}
        self.second_order = second_order
        self.results: dict[int, list[Tensor]] = {}

    def selected(self, p: Tensor | None) -> bool:
        return p is not None and id(p) in self.ids

    def has_selected(self, module: nn.Module) -> bool:
        return any(id(p) in self.ids for p in module.parameters())

    def add(self, p: Tensor, *values: Tensor) -> None:
        """Store (or add to) the results of ``p``, e.g. its gradient and diagonal."""
        if id(p) in self.results:  # a parameter shared by two modules
            for total, value in zip(self.results[id(p)], values, strict=True):
                total.add_(value)
        else:
            self.results[id(p)] = list(values)


StepBackward = Callable[[_Step, tuple, bool, _Collector], tuple]
"""``apply(step, state, need_input, collector)``: one module's backward.

Maps the backpropagated tensors ``state`` at the module's output to those at its
input (``None`` entries when ``need_input`` is false) and hands the results for
the module's parameters to ``collector``."""


def _walk_backward(
    steps: list,
    state: tuple,
    need_input: bool,
    collector: _Collector,
    apply: StepBackward,
) -> tuple:
    r"""Walk ``steps`` backwards with ``apply``; return ``state`` at their input.

    The walk stops early once no earlier step holds a selected parameter (and
    the input is not needed). A :class:`Residual` step sends ``state`` through
    its block and adds the result to ``state`` itself, the transposed Jacobian
    :math:`(I + J_f)^\top` of :math:`y = x + f(x)` for the linear parts of the
    state.
    """
    has = [collector.has_selected(step.module) for step in steps]
    earlier = [False] * len(steps)
    for i in range(1, len(steps)):
        earlier[i] = earlier[i - 1] or has[i - 1]
    for i in reversed(range(len(steps))):
        step = steps[i]
        need = need_input or earlier[i]
        if not (need or has[i]):
            break
        if isinstance(step, _ResidualStep):
            block = _walk_backward(step.steps, state, need, collector, apply)
            if need:
                state = tuple(a + b for a, b in zip(state, block, strict=True))
            continue
        state = apply(step, state, need, collector)
    return state


def _hesscale_step(
    step: _Step, state: tuple, need_input: bool, collector: _Collector
) -> tuple:
    """HesScale's backward of one module: ``state`` is ``(g, h)``."""
    g, h = state
    out = step.rule.backward(
        step.module,
        step.x,
        step.y,
        step.ctx,
        g,
        h,
        second_order=collector.second_order,
        need_input=need_input,
        selected=collector.selected,
    )
    for p, grad, diag in out.params:
        collector.add(p, grad, diag)
    return out.g, out.h


def _backward(
    steps: list, g: Tensor, h: Tensor, need_input: bool, collector: _Collector
) -> tuple[Tensor, Tensor]:
    """Walk ``steps`` backwards; return ``(g, h)`` at their input if needed."""
    return _walk_backward(steps, (g, h), need_input, collector, _hesscale_step)


# ------------------------------------------------------------------ the loss
def _output_loss(loss_fn: nn.Module) -> OutputSpaceLoss:
    loss_reduction(loss_fn)
    if type(loss_fn) not in _SUPPORTED_LOSSES:
        raise NotImplementedError(
            "HesScale supports CrossEntropyLoss, MSELoss and BCEWithLogitsLoss. "
            f"Got {type(loss_fn).__name__}."
        )
    return OutputSpaceLoss(loss_fn)


def _output_derivatives(
    loss_fn: nn.Module,
    output_loss: OutputSpaceLoss,
    output: Tensor,
    y: Tensor,
    variant: str,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Loss, and its gradient and Hessian diagonal at the model output.

    Gradient and diagonal carry the factor ``c`` (``1/(B T)`` for ``mean``). The
    diagonal is :math:`p - p^2` (cross-entropy, class axis 1), :math:`2` (MSE) or
    :math:`s(1 - s)` (BCE with logits); for BL89 and cross-entropy it is
    :math:`p_y - p_y^2` at the true class and zero elsewhere. Cross-entropy
    computes the softmax once for all three.
    """
    c = output_loss.batch_scale(output)
    if output_loss.kind == "mse":
        g = c * output_loss.gradient(output, y)
        return loss_fn(output, y), g, torch.full_like(output, 2.0 * c)
    if output_loss.kind == "bce_with_logits":
        s = torch.sigmoid(output)
        return loss_fn(output, y), c * (s - y), c * s * (1 - s)
    log_p = torch.log_softmax(output, dim=1)
    loss = nn.functional.nll_loss(log_p, y, reduction=output_loss.reduction)
    p = log_p.exp()
    onehot = nn.functional.one_hot(y, output.shape[1]).movedim(-1, 1).to(p.dtype)
    h = c * (p - p * p)
    if variant == "bl89":
        h = h * onehot
    return loss, c * (p - onehot), h


def _check_output(output_loss: OutputSpaceLoss, output: Tensor, y: Tensor) -> None:
    if output_loss.kind == "cross_entropy":
        if output.ndim < 2:
            raise ValueError(
                "CrossEntropyLoss needs batched logits (B, C, ...). Got output "
                f"shape {tuple(output.shape)}."
            )
        if y.is_floating_point() or y.shape != output.shape[:1] + output.shape[2:]:
            raise ValueError(
                "CrossEntropyLoss needs integer class labels of shape "
                f"{tuple(output.shape[:1] + output.shape[2:])}. Got "
                f"{y.dtype} labels of shape {tuple(y.shape)}."
            )
    elif y.shape != output.shape:
        raise ValueError(
            f"{output_loss.kind} targets must have the output's shape "
            f"{tuple(output.shape)}. Got {tuple(y.shape)}."
        )


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}. Got {variant!r}.")


def _batch_diagonal(
    model: nn.Module,
    loss_fn: nn.Module,
    output_loss: OutputSpaceLoss,
    X: Tensor,
    y: Tensor,
    params: Sequence[Tensor],
    variant: str,
) -> tuple[Tensor, TensorList, TensorList]:
    """One forward and one diagonal backward walk on a batch."""
    with torch.no_grad():
        steps: list = []
        output = _forward(model, X, steps)
        _check_output(output_loss, output, y)
        loss, g, h = _output_derivatives(loss_fn, output_loss, output, y, variant)
        collector = _Collector(params, second_order=variant != "ggn")
        _backward(steps, g, h, False, collector)
    grads, diags = [], []
    for p in params:
        grad, diag = collector.results.get(id(p), (None, None))
        grads.append(torch.zeros_like(p) if grad is None else grad.reshape(p.shape))
        diags.append(torch.zeros_like(p) if diag is None else diag.reshape(p.shape))
    return loss.detach(), grads, diags


def _setup(model, loss_fn, variant, params):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module. Got {type(model)}.")
    _check_variant(variant)
    output_loss = _output_loss(loss_fn)
    _, tensors = resolve_params(model, params)
    check_eval_mode(model)
    check_supported(model)
    return output_loss, tensors


# ---------------------------------------------------------------- public API
def hesscale_batch(
    model: nn.Module,
    loss_fn: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    variant: str = "hessian",
    params: Sequence[Tensor | str] | None = None,
    accumulate_grad: bool = True,
) -> HesScaleBatch:
    r"""Loss, gradient and HesScale diagonal of one batch, in one pass.

    One forward pass stores each module's input; one backward walk carries the
    gradient and the diagonal together (module docstring), without an autograd
    graph. The diagonal is that of the batch loss as ``loss_fn`` reduces it.
    Like ``loss.backward()``, the gradient is added to ``p.grad`` of every
    selected parameter that requires grad (set ``accumulate_grad=False`` to
    leave ``.grad`` alone), so this call replaces forward and backward in a
    training loop (see :mod:`curvlab.optim.adahesscale`).

    Args:
        model: A supported model (module docstring) without Dropout or
            BatchNorm in training mode.
        loss_fn: ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss``
            (``mean`` or ``sum``).
        X: Inputs ``(B, ...)``; floating-point inputs are cast to the
            parameters' dtype and device.
        y: Class labels or targets.
        variant: ``"hessian"`` (HesScale), ``"ggn"`` (HesScaleGN) or ``"bl89"``.
        params: ``None`` for all trainable parameters, or a list of the model's
            parameter tensors or names; sets the order of the lists.
        accumulate_grad: Add the gradient to ``p.grad``.

    Returns:
        A :class:`HesScaleBatch` with ``loss``, ``gradients``, ``diagonals``.

    Raises:
        NotImplementedError: For an unsupported module or loss.
        ValueError: For an unknown variant, Dropout/BatchNorm in training mode,
            bad targets or a bad parameter selection.
        TypeError: If ``model`` is not a module or ``X``/``y`` are not tensors.

    Example:
        >>> import torch
        >>> from curvlab.operators import HessianOperator
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2)).double()
        >>> X, y = torch.randn(5, 3).double(), torch.randint(0, 2, (5,))
        >>> loss_fn = torch.nn.CrossEntropyLoss()
        >>> batch = hesscale_batch(model, loss_fn, X, y, accumulate_grad=False)
        >>> exact = HessianOperator(model, loss_fn, [(X, y)]).to_dense().diagonal()
        >>> flat = torch.cat([d.flatten() for d in batch.diagonals])
        >>> torch.allclose(flat, exact)  # a single linear layer: exact
        True
    """
    output_loss, tensors = _setup(model, loss_fn, variant, params)
    X, y = prepare_batch((X, y), 0, tensors[0])
    loss, grads, diags = _batch_diagonal(
        model, loss_fn, output_loss, X, y, tensors, variant
    )
    if accumulate_grad:
        for p, grad in zip(tensors, grads, strict=True):
            if not p.requires_grad:
                continue
            if p.grad is None:
                p.grad = grad.clone()
            else:
                p.grad.add_(grad)
    return HesScaleBatch(loss, grads, diags, tuple(tensors), variant)


def hesscale(
    model: nn.Module,
    loss_fn: nn.Module,
    data: Iterable,
    *,
    variant: str = "hessian",
    params: Sequence[Tensor | str] | None = None,
) -> TensorList:
    r"""HesScale diagonal of the loss over a whole data set.

    The data-set loss is :math:`\sum_b w_b L_b` with :math:`w_b = B_b / N` for
    ``mean`` and :math:`w_b = 1` for ``sum``, as for the curvature operators,
    so the result does not depend on how the data are batched. ``.grad`` is not
    touched.

    Args:
        model: A supported model in eval mode (see :func:`hesscale_batch`).
        loss_fn: ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss``.
        data: Iterable of ``(X, y)`` batches, iterated once.
        variant: ``"hessian"`` (HesScale), ``"ggn"`` (HesScaleGN) or ``"bl89"``.
        params: ``None`` for all trainable parameters, or a list of the model's
            parameter tensors or names.

    Returns:
        The diagonal, a list shaped like the selected parameters.

    Raises:
        NotImplementedError: For an unsupported module or loss.
        ValueError: For an unknown variant, modules in training mode, bad
            targets, a bad parameter selection or empty data.
        TypeError: If ``model`` is not a module or a batch is not ``(X, y)``.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
        ... ).double()
        >>> X, y = torch.randn(6, 3).double(), torch.randint(0, 2, (6,))
        >>> loss_fn = torch.nn.CrossEntropyLoss()
        >>> whole = hesscale(model, loss_fn, [(X, y)])
        >>> halves = hesscale(model, loss_fn, [(X[:2], y[:2]), (X[2:], y[2:])])
        >>> all(torch.allclose(a, b) for a, b in zip(whole, halves))
        True
    """
    output_loss, tensors = _setup(model, loss_fn, variant, params)
    reduction = loss_reduction(loss_fn)
    total: TensorList | None = None
    num_data = 0
    for index, batch in enumerate(data):
        X, y = prepare_batch(batch, index, tensors[0])
        _, _, diags = _batch_diagonal(
            model, loss_fn, output_loss, X, y, tensors, variant
        )
        weight = X.shape[0] if reduction == "mean" else 1.0
        num_data += X.shape[0]
        if total is None:
            total = [weight * d for d in diags]
        else:
            for t, d in zip(total, diags, strict=True):
                t.add_(d, alpha=weight)
    if total is None:
        raise ValueError("data must yield at least one (X, y) batch. Got none.")
    if reduction == "mean":
        total = [t / num_data for t in total]
    return total

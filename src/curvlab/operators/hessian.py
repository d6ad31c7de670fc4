r"""The Hessian of the data-set loss, by automatic differentiation twice.

Per batch, the Hessian-vector product is the derivative of the gradient along
``v`` (Pearlmutter 1994, "Fast exact multiplication by the Hessian", Neural
Computation):

.. math::
    H v = \nabla_\theta \big( \nabla_\theta L(\theta)^\top v \big)
        = \frac{\partial}{\partial \epsilon} \nabla_\theta L(\theta + \epsilon v)
          \Big|_{\epsilon = 0}.

Two ways to compute it, chosen by ``mode``:

- ``"reverse"`` (default): reverse-over-reverse. One forward and one backward
  pass that records its own graph, then a second backward pass per column; the
  ``k`` columns of a matmat share the first two passes and run the second as one
  batched backward (``is_grads_batched``, which vectorizes with ``vmap``). This is
  PyHessian's double-backward product; measured on CPU it is the fastest for small
  and medium networks (``benchmarks/RESULTS.md``).
- ``"forward"``: forward-over-reverse, ``torch.func.jvp`` of ``torch.func.grad``,
  the ``k`` columns vectorized with ``torch.func.vmap`` (the primal passes run once,
  the tangents are batched). Needs no autograd graph of the backward pass, and is
  what ``compile=True`` compiles.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from curvlab._typing import TensorList
from curvlab.operators.empirical_risk import EmpiricalRiskOperator


class HessianOperator(EmpiricalRiskOperator):
    """Hessian of the data-set loss with respect to the selected parameters.

    Takes the arguments of
    :class:`~curvlab.operators.empirical_risk.EmpiricalRiskOperator` and ``mode``,
    ``"reverse"`` (double backward, the default) or ``"forward"``
    (forward-over-reverse; used whenever ``compile=True``); both give the same
    matrix. Works with any loss function that has a ``reduction`` of ``"mean"``
    or ``"sum"``.

    Raises:
        ValueError: For an unknown ``mode``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2).double()
        >>> X, y = torch.randn(8, 3).double(), torch.randint(0, 2, (8,))
        >>> op = HessianOperator(model, torch.nn.CrossEntropyLoss(), [(X, y)])
        >>> op.shape
        (8, 8)
    """

    is_psd = False

    def __init__(self, model, loss_fn, data, params=None, *, mode="reverse", **options):
        if mode not in ("reverse", "forward"):
            raise ValueError(f"mode must be 'reverse' or 'forward'. Got {mode!r}.")
        self.mode = mode
        super().__init__(model, loss_fn, data, params, **options)

    def _constructor_options(self) -> dict:
        return {**super()._constructor_options(), "mode": self.mode}

    def _matmat_batch(
        self, X: Tensor, y: Tensor, M: TensorList, index: int
    ) -> TensorList:
        if self.mode == "reverse" and not self.compile:
            return _double_backward_columns(
                self.model, self.loss_fn, self.param_names, X, y, M
            )
        params = self._param_dict()
        columns = tuple(m.movedim(-1, 0) for m in M)
        product = self._batch_function(_hessian_columns)
        loss_fn = _forward_ad_safe(self.loss_fn)
        out = product(
            self.model,
            loss_fn,
            tuple(params),
            tuple(params.values()),
            X,
            y,
            columns,
        )
        return [o.movedim(0, -1) for o in out]


def _double_backward_columns(model, loss_fn, names, X, y, M) -> TensorList:
    """Hessian of one batch's loss times columns ``(*p.shape, k)``, double backward.

    Differentiates with respect to the model's own parameter tensors when they all
    require grad (no re-parametrization of the module, and ``.grad`` stays
    untouched), else with respect to detached copies through ``functional_call``.
    """
    named = dict(model.named_parameters())
    tensors = [named[n] for n in names]
    with torch.enable_grad():
        if all(t.requires_grad for t in tensors):
            leaves, output = tensors, model(X)
        else:
            leaves = [t.detach().requires_grad_() for t in tensors]
            output = functional_call(model, dict(zip(names, leaves, strict=True)), (X,))
        gradient = torch.autograd.grad(loss_fn(output, y), leaves, create_graph=True)
        connected = [i for i, g in enumerate(gradient) if g.requires_grad]
        out = [torch.zeros_like(m) for m in M]
        if not connected:  # the loss is linear in every selected parameter
            return out
        k = M[0].shape[-1]
        columns = [M[i].movedim(-1, 0) for i in connected]
        if k == 1:
            columns = [c[0] for c in columns]
        products = torch.autograd.grad(
            [gradient[i] for i in connected],
            leaves,
            grad_outputs=columns,
            is_grads_batched=k > 1,
            allow_unused=True,
        )
    for i, product in enumerate(products):
        if product is not None:
            out[i] = product.unsqueeze(-1) if k == 1 else product.movedim(0, -1)
    return out


def _forward_ad_safe(loss_fn):
    """Return a loss callable equal to ``loss_fn`` whose Hessian jvp torch supports.

    In torch 2.13, ``jvp`` of ``grad`` through ``MSELoss(reduction="mean")`` fails
    with "ZeroTensors are immutable"; the same value computed as the mean of the
    unreduced loss differentiates fine.
    """
    if isinstance(loss_fn, nn.MSELoss) and loss_fn.reduction == "mean":
        return _mean_squared_error
    return loss_fn


def _mean_squared_error(output: Tensor, target: Tensor) -> Tensor:
    return nn.functional.mse_loss(output, target, reduction="none").mean()


def _hessian_columns(model, loss_fn, names, primals, X, y, columns):
    """Hessian of one batch's loss times ``k`` columns, each entry ``(k, *p.shape)``."""

    def loss(*theta):
        return loss_fn(
            functional_call(model, dict(zip(names, theta, strict=True)), (X,)), y
        )

    gradient = grad(loss, argnums=tuple(range(len(primals))))

    def hvp(*v):
        return jvp(gradient, primals, v)[1]

    if columns[0].shape[0] == 1:
        return tuple(o.unsqueeze(0) for o in hvp(*(c[0] for c in columns)))
    return vmap(hvp)(*columns)

r"""The Hessian of the data-set loss, by forward-over-reverse differentiation.

Per batch, the Hessian-vector product is the directional derivative of the
gradient,

.. math::
    H v = \frac{\partial}{\partial \epsilon} \nabla_\theta L(\theta + \epsilon v)
    \Big|_{\epsilon = 0},

computed with ``torch.func.jvp`` of ``torch.func.grad``. The ``k`` columns of a
matmat are vectorized with ``torch.func.vmap``: the primal forward and backward
passes run once per batch, only the tangent computations are batched.
(Pearlmutter 1994, "Fast exact multiplication by the Hessian", Neural Computation.)
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from curvlab._typing import TensorList
from curvlab.operators.empirical_risk import EmpiricalRiskOperator


class HessianOperator(EmpiricalRiskOperator):
    """Hessian of the data-set loss with respect to the selected parameters.

    See :class:`~curvlab.operators.empirical_risk.EmpiricalRiskOperator` for the
    arguments. Works with any loss function that has a ``reduction`` of
    ``"mean"`` or ``"sum"``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2).double()
        >>> X, y = torch.randn(8, 3).double(), torch.randint(0, 2, (8,))
        >>> op = HessianOperator(model, torch.nn.CrossEntropyLoss(), [(X, y)])
        >>> op.shape
        (8, 8)
    """

    is_psd = False

    def _matmat_batch(
        self, X: Tensor, y: Tensor, M: TensorList, index: int
    ) -> TensorList:
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

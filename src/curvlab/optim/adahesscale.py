r"""AdaHesScale and AdaHesScaleGN: Adam with a squared Hessian diagonal.

AdaHesScale (Elsayed & Mahmood 2022, arXiv 2210.11639, Alg. 2) replaces Adam's
squared gradient by the squared HesScale diagonal :math:`\hat h_t`:

.. math::
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, \hat h_t^{\,2}, \\
    \theta_t &= \theta_{t-1} - \frac{\eta}{1 - \beta_1^t}\,
        \frac{m_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}.

AdaHesScaleGN is the same update with the HesScaleGN diagonal. With
``weight_decay`` :math:`\lambda > 0` the loss gains :math:`\frac\lambda2\lVert
\theta\rVert^2`, so :math:`g_t \leftarrow g_t + \lambda\theta` and
:math:`\hat h_t \leftarrow \hat h_t + \lambda`.

**The change to a training loop.** :func:`curvlab.diagonal.hesscale_batch`
replaces the forward and backward pass: it computes the loss, writes the gradient
to ``p.grad`` as ``loss.backward()`` would, and returns the diagonal, which goes
to ``step``:

.. code-block:: python

    optimizer = AdaHesScale(model.parameters(), lr=1e-3)
    for X, y in loader:
        optimizer.zero_grad()
        # was: loss = loss_fn(model(X), y); loss.backward()
        batch = hesscale_batch(model, loss_fn, X, y, variant=optimizer.variant)
        optimizer.step(diagonals=batch)

``diagonals`` takes the :class:`~curvlab.diagonal.HesScaleBatch` itself (matched
to the optimizer's parameters by identity, and its ``variant`` checked against
the optimizer's), a dict from parameter to diagonal, or a list with one entry per
parameter of the optimizer's groups in order. The gradient is read from
``p.grad``, so gradient clipping between the two calls works as with Adam;
parameters whose ``grad`` is ``None`` are skipped. A closure returning a
``HesScaleBatch`` works too: ``optimizer.step(lambda: hesscale_batch(...))``.

Defaults: ``lr=1e-3`` as in ``torch.optim.Adam``. The reference implementation
(``mohmdelsayed/HesScale``, ``optimizers/adahesscale.py``) defaults to ``1e-5``
and its README example uses ``4e-4``; as the step is about
:math:`\eta\, g/|\hat h|`, a Newton-like scale, the best ``lr`` depends on the
problem more than Adam's does.

Example:
    >>> import torch
    >>> from curvlab.diagonal import hesscale_batch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(
    ...     torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ... )
    >>> loss_fn = torch.nn.CrossEntropyLoss()
    >>> X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> optimizer = AdaHesScale(model.parameters(), lr=0.01)
    >>> first = loss_fn(model(X), y).item()
    >>> for _ in range(50):
    ...     optimizer.zero_grad()
    ...     batch = hesscale_batch(model, loss_fn, X, y, variant=optimizer.variant)
    ...     optimizer.step(diagonals=batch)
    >>> loss_fn(model(X), y).item() < first
    True

References:
    - Elsayed & Mahmood (2022). HesScale: Scalable Computation of Hessian
      Diagonals. arXiv 2210.11639.
    - Kingma & Ba (2015). Adam: A Method for Stochastic Optimization. ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from curvlab.diagonal.backprop import HesScaleBatch
from curvlab.optim._checks import adam_defaults, update_moments


class AdaHesScale(Optimizer):
    r"""Adam with the squared HesScale diagonal as second moment.

    Args:
        params: Parameters or parameter groups, as for ``torch.optim.Adam``.
        lr: Learning rate :math:`\eta`.
        betas: Decay rates :math:`(\beta_1, \beta_2)` of the two averages.
        eps: :math:`\epsilon` added to the denominator.
        weight_decay: L2 penalty :math:`\lambda` (added to gradient and diagonal).

    Attributes:
        variant: The diagonal to feed (``hesscale_batch(..., variant=...)``).

    Raises:
        ValueError: For a negative ``lr``, ``eps`` or ``weight_decay``, or betas
            outside ``[0, 1)``.
    """

    variant = "hessian"

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, adam_defaults(lr, betas, eps, weight_decay))

    def _all_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _match(
        self, diagonals: HesScaleBatch | Mapping | Sequence[Tensor]
    ) -> dict[int, Tensor]:
        """Map ``id(p)`` to the diagonal of each parameter ``p``.

        Raises:
            ValueError: If the diagonals do not fit the optimizer's parameters.
            TypeError: If ``diagonals`` has an unsupported type.
        """
        params = self._all_params()
        if isinstance(diagonals, HesScaleBatch):
            if diagonals.variant != self.variant:
                raise ValueError(
                    f"{type(self).__name__} expects the {self.variant!r} diagonal. "
                    f"Got a HesScaleBatch with variant {diagonals.variant!r}; call "
                    "hesscale_batch(..., variant=optimizer.variant), or pass "
                    "batch.diagonals to use another diagonal on purpose."
                )
            found = {
                id(p): d
                for p, d in zip(diagonals.params, diagonals.diagonals, strict=True)
            }
        elif isinstance(diagonals, Mapping):
            found = {id(p): d for p, d in diagonals.items()}
        elif isinstance(diagonals, Sequence) and not isinstance(diagonals, Tensor):
            if len(diagonals) != len(params):
                raise ValueError(
                    f"diagonals must hold one tensor per optimizer parameter "
                    f"({len(params)}, in the order of the parameter groups). Got "
                    f"{len(diagonals)}. Pass the HesScaleBatch itself to match by "
                    "parameter."
                )
            found = {id(p): d for p, d in zip(params, diagonals, strict=True)}
        else:
            raise TypeError(
                "diagonals must be a HesScaleBatch, a dict {parameter: diagonal} "
                f"or a list of tensors. Got {type(diagonals).__name__}."
            )
        for index, p in enumerate(params):
            if p.grad is None:
                continue
            d = found.get(id(p))
            if d is None:
                raise ValueError(
                    f"No diagonal for optimizer parameter {index} (shape "
                    f"{tuple(p.shape)}), which has a gradient. Compute the "
                    "diagonal for all parameters the optimizer updates."
                )
            if d.shape != p.shape:
                raise ValueError(
                    f"The diagonal for optimizer parameter {index} has shape "
                    f"{tuple(d.shape)}; the parameter has {tuple(p.shape)}."
                )
        return found

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], HesScaleBatch | Tensor] | None = None,
        *,
        diagonals: HesScaleBatch | Mapping | Sequence[Tensor] | None = None,
    ):
        """Take one AdaHesScale step.

        Args:
            closure: Optional callable that recomputes the batch; if it returns a
                ``HesScaleBatch`` and ``diagonals`` is ``None``, its diagonals are
                used. Called with gradients enabled.
            diagonals: The Hessian diagonal of the current batch loss: a
                ``HesScaleBatch``, a dict from parameter to tensor, or a list
                aligned with the optimizer's parameters.

        Returns:
            The closure's loss, or ``None`` without a closure.

        Raises:
            ValueError: If no diagonal is given or it does not fit.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                result = closure()
            if isinstance(result, HesScaleBatch):
                loss = result.loss
                if diagonals is None:
                    diagonals = result
            else:
                loss = result
        if diagonals is None:
            raise ValueError(
                f"{type(self).__name__}.step needs the Hessian diagonal: "
                "step(diagonals=hesscale_batch(model, loss_fn, X, y, "
                "variant=optimizer.variant))."
            )
        found = self._match(diagonals)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                diag = found[id(p)].to(dtype=p.dtype, device=p.device)
                if decay != 0:
                    grad = grad + decay * p
                    diag = diag + decay
                t, exp_avg, exp_avg_sq = update_moments(
                    self.state[p], p, grad, diag, group["betas"], "exp_avg_sq"
                )
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**t))
        return loss


class AdaHesScaleGN(AdaHesScale):
    """AdaHesScale with the HesScaleGN (Gauss-Newton) diagonal.

    Same arguments and update as :class:`AdaHesScale`; feed it
    ``hesscale_batch(..., variant="ggn")`` (``variant=optimizer.variant``).
    """

    variant = "ggn"

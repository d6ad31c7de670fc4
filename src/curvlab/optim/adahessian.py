r"""AdaHessian: Adam with a Hutchinson estimate of the Hessian diagonal.

AdaHessian (Yao, Gholami, Shen, Mustafa, Keutzer & Mahoney 2021, AAAI,
Algorithm 1 and Eqs. 9-12) estimates the Hessian diagonal of the mini-batch loss
with one Rademacher probe :math:`z` (entries :math:`\pm 1`) per step, through a
Hessian-vector product (the gradient of :math:`g^\top z`):

.. math::
    D_t = z \odot H_t z, \qquad \mathbb E[D_t] = \operatorname{diag}(H_t).

For a convolution kernel of shape ``(out, in, k1, ...)`` the estimate is averaged
over the kernel's spatial entries (the paper's spatial averaging, Eq. 10: each
``(out, in)`` block of :math:`b = k_1 \cdots` entries takes the mean of its
:math:`D` entries); tensors with at most two dimensions are left as they are.
With that :math:`D^{(s)}_t`, gradient :math:`g_t`, decay rates
:math:`\beta_1, \beta_2`, Hessian power :math:`k \in [0, 1]`, step size
:math:`\eta`, :math:`\epsilon` and weight decay :math:`\lambda`:

.. math::
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, D^{(s)}_t \odot D^{(s)}_t, \\
    \theta_t &= \theta_{t-1} - \eta \left(\frac{m_t / (1 - \beta_1^t)}
        {\bigl(\sqrt{v_t / (1 - \beta_2^t)}\bigr)^k + \epsilon}
        + \lambda\, \theta_{t-1}\right).

:math:`k = 1` is the paper's default; weight decay is decoupled (AdamW style),
and :math:`\epsilon` is added after the power, as in the authors' code
(``amirgholami/adahessian``, ``image_classification/optim_adahessian.py``).
That code averages :math:`|z \odot Hz|` over a kernel instead of the signed
:math:`z \odot Hz` of Eq. 10; the two agree for tensors that are not averaged
(all of an MLP's).

**The change to a training loop.** The Hessian-vector product needs the graph of
the gradient. Either hand ``step`` a closure that returns the mini-batch loss
*without* calling ``backward`` (the optimizer differentiates it, writes
``p.grad`` and keeps the graph only for the product), or call
``loss.backward(create_graph=True)`` yourself and then ``step()``:

.. code-block:: python

    optimizer = AdaHessian(model.parameters(), lr=0.15)
    for X, y in loader:
        optimizer.zero_grad()
        optimizer.step(lambda: loss_fn(model(X), y))

The probes come from ``generator`` when one is given, else from PyTorch's global
generator (so ``torch.manual_seed`` and a saved RNG state make a run
reproducible); the generator's state is not part of ``state_dict``.

Example:
    The estimated diagonal rescales each coordinate: on a quadratic whose
    curvatures differ a hundredfold, both coordinates move alike.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    >>> optimizer = AdaHessian([w], lr=0.1)
    >>> for _ in range(10):
    ...     optimizer.zero_grad()
    ...     _ = optimizer.step(lambda: (torch.tensor([1.0, 100.0]) * w**2).sum())
    >>> w.detach()
    tensor([ 0.2315, -0.2315])

References:
    - Yao, Z., Gholami, A., Shen, S., Mustafa, M., Keutzer, K., & Mahoney, M. W.
      (2021). ADAHESSIAN: An Adaptive Second Order Optimizer for Machine
      Learning. AAAI.
    - Hutchinson, M. F. (1990). A stochastic estimator of the trace of the
      influence matrix for Laplacian smoothing splines. Communications in
      Statistics - Simulation and Computation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from curvlab.optim._checks import adam_defaults, update_moments

__all__ = ["AdaHessian", "hutchinson_hessian_diagonal"]


def _rademacher(p: Tensor, generator: torch.Generator | None) -> Tensor:
    bits = torch.randint(0, 2, p.shape, generator=generator, device=p.device)
    return bits.to(p.dtype).mul_(2).sub_(1)


def hutchinson_hessian_diagonal(
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    *,
    generator: torch.Generator | None = None,
    spatial_average: bool = True,
    retain_graph: bool = False,
) -> list[Tensor]:
    r"""One-probe Hutchinson estimate :math:`z \odot Hz` of the Hessian diagonal.

    Args:
        grads: Gradients of a scalar loss with respect to ``params``, computed
            with ``create_graph=True``.
        params: The parameters.
        generator: Source of the Rademacher probe :math:`z`; ``None`` uses
            PyTorch's global generator. Probes are drawn parameter by parameter.
        spatial_average: Average each estimate over the dimensions after the
            second (a convolution kernel's spatial entries, AdaHessian's Eq. 10).
        retain_graph: Keep the graph after the product.

    Returns:
        One tensor per parameter, shaped like it (zero where the gradient does not
        depend on the parameter).

    Raises:
        ValueError: If a gradient carries no graph or shapes differ.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> (g,) = torch.autograd.grad(0.5 * theta @ A @ theta, [theta],
        ...                            create_graph=True)
        >>> rng = torch.Generator().manual_seed(0)
        >>> estimates = [
        ...     hutchinson_hessian_diagonal([g], [theta], generator=rng,
        ...                                 retain_graph=True)[0]
        ...     for _ in range(2000)
        ... ]
        >>> torch.stack(estimates).mean(0).round(decimals=1)  # diag(A) = (2, 3)
        tensor([2., 3.], dtype=torch.float64)
    """
    if len(grads) != len(params):
        raise ValueError(
            f"grads and params must have equal lengths. Got {len(grads)} and "
            f"{len(params)}."
        )
    for index, (g, p) in enumerate(zip(grads, params, strict=True)):
        if g.grad_fn is None:
            raise ValueError(
                f"The gradient of parameter {index} carries no graph: compute it "
                "with create_graph=True (loss.backward(create_graph=True)), or "
                "pass AdaHessian.step a closure that returns the loss."
            )
        if g.shape != p.shape:
            raise ValueError(
                f"Gradient {index} has shape {tuple(g.shape)}; its parameter has "
                f"{tuple(p.shape)}."
            )
    probes = [_rademacher(p, generator) for p in params]
    products = torch.autograd.grad(
        list(grads),
        list(params),
        grad_outputs=probes,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    out = []
    for p, z, hz in zip(params, probes, products, strict=True):
        if hz is None:
            out.append(torch.zeros_like(p))
            continue
        d = (z * hz).detach()
        if spatial_average and d.ndim > 2:
            d = d.mean(dim=tuple(range(2, d.ndim)), keepdim=True).expand_as(d)
        out.append(d.contiguous())
    return out


class AdaHessian(Optimizer):
    r"""Adam whose second moment is the squared Hutchinson Hessian diagonal.

    Args:
        params: Parameters or parameter groups, as for ``torch.optim.Adam``.
        lr: Learning rate :math:`\eta` (the authors' default 0.15).
        betas: Decay rates :math:`(\beta_1, \beta_2)` of the two averages.
        eps: :math:`\epsilon` added to the denominator (the authors' 1e-4).
        weight_decay: Decoupled weight decay :math:`\lambda`.
        hessian_power: The power :math:`k \in [0, 1]` of the denominator.
        generator: Source of the Rademacher probes; ``None``: PyTorch's global
            generator.

    Attributes:
        needs_loss_graph: ``True``: ``step`` takes a closure returning the loss
            (or gradients made with ``create_graph=True``), not a plain
            ``loss.backward()``.

    Raises:
        ValueError: For a negative ``lr``, ``eps`` or ``weight_decay``, betas
            outside ``[0, 1)`` or a Hessian power outside ``[0, 1]``.
    """

    needs_loss_graph = True

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        hessian_power: float = 1.0,
        *,
        generator: torch.Generator | None = None,
    ):
        defaults = adam_defaults(lr, betas, eps, weight_decay)
        if not 0.0 <= hessian_power <= 1.0:
            raise ValueError(f"hessian_power must lie in [0, 1]. Got {hessian_power}.")
        defaults["hessian_power"] = hessian_power
        super().__init__(params, defaults)
        self.generator = generator

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Take one AdaHessian step.

        Args:
            closure: Returns the mini-batch loss with its graph, not yet
                differentiated; the optimizer writes its gradient to ``p.grad``.
                Without a closure, ``p.grad`` must come from
                ``loss.backward(create_graph=True)``.

        Returns:
            The closure's loss (detached), or ``None`` without a closure.

        Raises:
            ValueError: If the gradients carry no graph, or the closure returns
                no scalar tensor.
        """
        params = [
            p for group in self.param_groups for p in group["params"] if p.requires_grad
        ]
        loss = None
        with torch.enable_grad():
            if closure is not None:
                loss = closure()
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise ValueError(
                        "AdaHessian's closure must return the scalar loss tensor. "
                        f"Got {type(loss).__name__}."
                    )
                grads = torch.autograd.grad(
                    loss, params, create_graph=True, allow_unused=True
                )
                used = [
                    (p, g) for p, g in zip(params, grads, strict=True) if g is not None
                ]
            else:
                used = [(p, p.grad) for p in params if p.grad is not None]
                if any(g.grad_fn is None for _, g in used):
                    raise ValueError(
                        "AdaHessian needs the gradient's graph for its "
                        "Hessian-vector product: call "
                        "loss.backward(create_graph=True), or pass step a closure "
                        "that returns the loss."
                    )
            # a gradient without a graph (a loss linear in p) has zero curvature
            curved = [(p, g) for p, g in used if g.grad_fn is not None]
            diagonals = {id(p): torch.zeros_like(p) for p, _ in used}
            if curved:
                estimates = hutchinson_hessian_diagonal(
                    [g for _, g in curved],
                    [p for p, _ in curved],
                    generator=self.generator,
                )
                for (p, _), d in zip(curved, estimates, strict=True):
                    diagonals[id(p)] = d
        with torch.no_grad():
            for p, g in used:
                p.grad = g.detach()
            self._update(diagonals)
        return None if loss is None else loss.detach()

    def _update(self, diagonals: dict[int, Tensor]) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            power = group["hessian_power"]
            for p in group["params"]:
                if p.grad is None or id(p) not in diagonals:
                    continue
                t, exp_avg, exp_sq = update_moments(
                    self.state[p],
                    p,
                    p.grad.detach(),
                    diagonals[id(p)],
                    group["betas"],
                    "exp_hessian_diag_sq",
                )
                denom = (exp_sq / (1 - beta2**t)).sqrt_().pow_(power).add_(eps)
                update = exp_avg / (1 - beta1**t) / denom
                if decay != 0:
                    update.add_(p, alpha=decay)
                p.sub_(update, alpha=lr)

"""Argument checks and Adam's moment update, shared by the optimizers."""

from __future__ import annotations

import torch
from torch import Tensor


def adam_defaults(lr: float, betas, eps: float, weight_decay: float) -> dict:
    """Check Adam's hyperparameters and return them as an optimizer's defaults.

    Args:
        lr: Learning rate, ``>= 0``.
        betas: Two decay rates in ``[0, 1)``.
        eps: Added to the denominator, ``>= 0``.
        weight_decay: Decoupled weight decay, ``>= 0``.

    Returns:
        ``{"lr", "betas", "eps", "weight_decay"}`` with ``betas`` as a tuple.

    Raises:
        ValueError: If a value is out of range.
    """
    if not lr >= 0.0:
        raise ValueError(f"lr must be non-negative. Got {lr}.")
    if not eps >= 0.0:
        raise ValueError(f"eps must be non-negative. Got {eps}.")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be non-negative. Got {weight_decay}.")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1). Got {betas}.")
    return {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}


def update_moments(
    state: dict, p: Tensor, grad: Tensor, diag: Tensor, betas, sq_key: str
) -> tuple[int, Tensor, Tensor]:
    r"""Update Adam's moments of the gradient and of a curvature diagonal in place.

    :math:`m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t` and :math:`v_t = \beta_2
    v_{t-1} + (1 - \beta_2) d_t \odot d_t`, both zero before the first step.

    Args:
        state: The optimizer's state of parameter ``p``; the first call fills in
            ``step``, ``exp_avg`` and ``sq_key``.
        p: The parameter.
        grad: Its gradient :math:`g_t`.
        diag: Its curvature diagonal :math:`d_t`.
        betas: The decay rates :math:`(\beta_1, \beta_2)`.
        sq_key: The state's name for :math:`v_t`.

    Returns:
        The step count :math:`t` after this update, :math:`m_t` and :math:`v_t`.
    """
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p)
        state[sq_key] = torch.zeros_like(p)
    state["step"] += 1
    exp_avg, exp_sq = state["exp_avg"], state[sq_key]
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_sq.mul_(beta2).addcmul_(diag, diag, value=1 - beta2)
    return state["step"], exp_avg, exp_sq

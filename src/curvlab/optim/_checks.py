"""Argument checks shared by the optimizers."""

from __future__ import annotations


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

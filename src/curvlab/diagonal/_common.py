"""Checks and data handling shared by the diagonal computations."""

from __future__ import annotations

from torch import Tensor, nn


def check_eval_mode(model: nn.Module) -> None:
    """Refuse Dropout or BatchNorm modules in training mode.

    Args:
        model: The model.

    Raises:
        ValueError: If a Dropout with ``p > 0`` or a BatchNorm is in training mode.
    """
    for name, module in model.named_modules():
        random = (
            isinstance(module, nn.modules.dropout._DropoutNd)
            and module.training
            and module.p > 0
        )
        coupled = isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            module.training
        )
        if random or coupled:
            why = (
                "is random in training mode"
                if random
                else "normalises with batch statistics in training mode, which "
                "couples the samples"
            )
            raise ValueError(
                f"Module {name!r} ({type(module).__name__}) {why}. Hessian "
                "diagonals are computed for the model in eval mode: call "
                "model.eval() first (and model.train() afterwards to keep training)."
            )


def prepare_batch(batch, index: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Check an ``(X, y)`` batch and move it to the parameters' device and dtype.

    Floating-point inputs and targets take the parameters' dtype; integer labels
    keep theirs.

    Args:
        batch: What the data yielded.
        index: Position of the batch (for messages).
        like: A parameter whose device and dtype the batch should have.

    Returns:
        ``X`` and ``y``.

    Raises:
        TypeError: If the batch is not an ``(X, y)`` pair of tensors.
        ValueError: If ``X`` has no samples.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            f"data must yield (X, y) pairs. Batch {index} is a "
            f"{type(batch).__name__}"
            + (f" of length {len(batch)}." if hasattr(batch, "__len__") else ".")
        )
    X, y = batch
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise TypeError(
            f"Batch {index} must hold tensors (X, y). Got ({type(X).__name__}, "
            f"{type(y).__name__})."
        )
    if X.ndim == 0 or X.shape[0] == 0:
        raise ValueError(f"Batch {index} has no samples: X has shape {tuple(X.shape)}.")
    X = X.to(like.device)
    if X.is_floating_point():
        X = X.to(like.dtype)
    y = y.to(like.device)
    if y.is_floating_point():
        y = y.to(like.dtype)
    return X, y

"""Checks and data handling shared by the diagonal computations."""

from __future__ import annotations

from torch import Tensor, nn

from curvlab.operators._checks import check_batch_samples
from curvlab.operators.empirical_risk import prepare_batch as _prepare_batch


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
    """Check an ``(X, y)`` batch with samples; move it to ``like``'s device and dtype.

    Args:
        batch: What the data yielded.
        index: Position of the batch (for messages).
        like: A parameter whose device and dtype the batch should have.

    Returns:
        ``X`` and ``y`` (see :func:`curvlab.operators.empirical_risk.prepare_batch`).

    Raises:
        TypeError: If the batch is not an ``(X, y)`` pair of tensors.
        ValueError: If ``X`` has no samples.
    """
    X, y = _prepare_batch(batch, index, like.dtype, like.device)
    check_batch_samples(X, index)
    return X, y

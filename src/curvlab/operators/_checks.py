"""Input checks for operator products, collected in one place.

Public entry points call these once at the boundary; private methods trust their
inputs. Each message says what was expected and what arrived.
"""

from __future__ import annotations

import torch
from torch import Tensor

from curvlab._checks import check_columns


def check_flat_input(X: Tensor, dim: int, dtype: torch.dtype, device: torch.device):
    """Check a flat ``(D,)`` or ``(D, k)`` input of an operator with ``D = dim``.

    Args:
        X: The input.
        dim: The operator's dimension ``D``.
        dtype: The operator's dtype.
        device: The operator's device.

    Raises:
        TypeError: If ``X`` is not a tensor.
        ValueError: If the shape, dtype or device does not match.
    """
    also = " or a list of tensors shaped like the parameters"
    check_columns(X, dim, also=also)
    check_dtype_device(X, dtype, device)


def check_list_input(
    X: list[Tensor], shapes: tuple[torch.Size, ...], dtype, device
) -> bool:
    """Check a parameter-shaped list input; return whether it carries a column axis.

    Args:
        X: Tensors shaped ``(*p.shape,)`` or ``(*p.shape, k)``, one per parameter.
        shapes: The parameter shapes.
        dtype: The operator's dtype.
        device: The operator's device.

    Returns:
        ``True`` when the entries carry a trailing column axis.

    Raises:
        TypeError: If an entry is not a tensor.
        ValueError: If the number of entries, a shape, the dtype or device mismatch.
    """
    if len(X) != len(shapes):
        raise ValueError(
            f"List input must have one tensor per parameter ({len(shapes)}). "
            f"Got {len(X)}."
        )
    expected = [tuple(s) for s in shapes]
    for x in X:
        if not isinstance(x, Tensor):
            raise TypeError(f"List input entries must be tensors. Got {type(x)}.")
        check_dtype_device(x, dtype, device)
    got = [tuple(x.shape) for x in X]
    if got == expected:
        return False
    k = {g[-1] if len(g) else None for g in got}
    if [g[:-1] for g in got] == expected and len(k) == 1:
        return True
    raise ValueError(
        f"List input must have shapes {expected} (or each with one trailing column "
        f"axis of the same size k). Got {got}."
    )


def check_dtype_device(
    X: Tensor, dtype: torch.dtype, device: torch.device, name: str = "Input"
):
    """Check that a tensor has the operator's dtype and device.

    Args:
        X: The tensor.
        dtype: Expected dtype.
        device: Expected device.
        name: The tensor's name in messages.

    Raises:
        ValueError: If either mismatches.
    """
    if X.dtype != dtype:
        raise ValueError(
            f"{name} must have the operator's dtype {dtype}. Got {X.dtype}. "
            "Convert it with `.to(op.dtype)`."
        )
    if X.device != device:
        raise ValueError(
            f"{name} must be on the operator's device {device}. Got {X.device}. "
            "Move it with `.to(op.device)`."
        )


def check_finite(tensor: Tensor, what: str):
    """Raise if a tensor holds NaN or Inf.

    Args:
        tensor: The tensor to check.
        what: How to name the tensor in the message.

    Raises:
        ValueError: If it holds a non-finite value.
    """
    if tensor.is_floating_point() or tensor.is_complex():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(
                f"{what} must be finite. Got {bad} NaN/Inf value(s) of "
                f"{tensor.numel()}."
            )


def check_batch_samples(X: Tensor, index: int):
    """Raise unless the inputs ``X`` of batch ``index`` hold at least one sample.

    Args:
        X: The batch's inputs, samples along the first axis.
        index: Position of the batch in the data (for the message).

    Raises:
        ValueError: If ``X`` is a scalar or has no samples.
    """
    if X.ndim == 0 or X.shape[0] == 0:
        raise ValueError(f"Batch {index} has no samples: X has shape {tuple(X.shape)}.")

"""Argument checks shared by every layer: one wording for one kind of mistake.

Public entry points validate their arguments once, at the boundary (STYLE.md §6),
with messages that say what was expected and what arrived.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ["check_choice", "check_columns", "check_int", "check_nonneg"]


def check_int(
    name: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    hint: str = "",
) -> int:
    """Return ``value`` as an ``int`` if it is one in ``[low, high]``.

    Args:
        name: The argument's name, for the message.
        value: The value (``bool`` is refused; NumPy integers are accepted).
        low: Smallest allowed value, ``None`` for no bound.
        high: Largest allowed value, ``None`` for no bound.
        hint: Text appended to the range in the message (why the bounds).

    Returns:
        ``int(value)``.

    Raises:
        TypeError: If ``value`` is not an integer.
        ValueError: If it lies outside the bounds.

    Example:
        >>> check_int("k", 3, 1, 10)
        3
        >>> check_int("k", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: k must be >= 1. Got 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int. Got {type(value).__name__}.")
    if high is not None and (value > high or (low is not None and value < low)):
        raise ValueError(f"{name} must lie in [{low}, {high}]{hint}. Got {value}.")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}{hint}. Got {value}.")
    return int(value)


def check_nonneg(name: str, value: Any) -> float:
    """Return ``value`` as a ``float`` if it is a finite real number ``>= 0``.

    Args:
        name: The argument's name, for the message.
        value: The value: a real number (``bool`` is refused) or a tensor holding
            one.

    Returns:
        ``float(value)``.

    Raises:
        TypeError: If ``value`` is not a real number.
        ValueError: If it is negative, NaN or infinite.

    Example:
        >>> check_nonneg("damping", 1e-3)
        0.001
    """
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number >= 0. Got {type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0. Got {value}.")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``.

    Args:
        name: The argument's name, for the message.
        value: The value.
        choices: The allowed values.

    Returns:
        ``value``.

    Raises:
        ValueError: If ``value`` is not among ``choices``.

    Example:
        >>> check_choice("split", "test", ("train", "test"))
        'test'
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}. Got {value!r}.")
    return value


def check_columns(
    X: Any, rows: int, name: str = "Input", size: str = "D", *, also="", detail=""
) -> Tensor:
    """Return ``X`` if it is a ``(rows,)`` or ``(rows, k)`` tensor.

    Args:
        X: The value.
        rows: The number of rows it must have.
        name: Its name in messages.
        size: The symbol of ``rows`` in messages (``"D"``, ``"N*C"``).
        also: Other accepted forms, appended to the type message.
        detail: Appended to ``rows`` in the shape message.

    Returns:
        ``X``.

    Raises:
        TypeError: If ``X`` is not a tensor.
        ValueError: If its shape does not match.

    Example:
        >>> import torch
        >>> check_columns(torch.zeros(3, 2), 4)
        Traceback (most recent call last):
        ...
        ValueError: Input must have shape (D,) or (D, k) with D=4. Got (3, 2).
    """
    if not isinstance(X, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape ({size},) or ({size}, k) with "
            f"{size}={rows}{also}. Got {type(X).__name__}."
        )
    if X.ndim not in (1, 2) or X.shape[0] != rows:
        raise ValueError(
            f"{name} must have shape ({size},) or ({size}, k) with {size}={rows}"
            f"{detail}. Got {tuple(X.shape)}."
        )
    return X

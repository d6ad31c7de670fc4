"""Reproducible random streams keyed by ``(seed, *index)``.

The numbers of a stream never depend on which other streams were drawn, in which
order, or on which worker.

Streams are keyed with NumPy's ``SeedSequence`` (which mixes the key into
independent states) and drawn on the CPU, then moved to the target device, so a
measurement is bit-identical on any device and any number of workers, the property
that lets sketches be measured in blocks and solved later (skerch's
``measurements.py`` follows the same rule).
"""

from __future__ import annotations

import numpy
import torch

from curvlab._seeds import derive_seed


def generator(seed: int | torch.Generator, *index: int) -> torch.Generator:
    """Return a CPU generator for the stream ``(seed, *index)``.

    Args:
        seed: A non-negative int, or a ``torch.Generator`` which is returned as is
            (its state then decides, and ``index`` must be empty).
        *index: Further non-negative ints naming the stream (e.g. a block number).

    Returns:
        A ``torch.Generator`` on the CPU.

    Raises:
        TypeError: If ``seed`` is neither an int nor a generator.
        ValueError: If an int is negative, or ``index`` is given with a generator.
    """
    if isinstance(seed, torch.Generator):
        if index:
            raise ValueError(
                "Pass an int seed to key streams by index; a torch.Generator is "
                "used as is."
            )
        return seed
    key = (seed, *index)
    if not all(
        isinstance(k, int | numpy.integer) and not isinstance(k, bool) for k in key
    ):
        raise TypeError(f"seed and indices must be ints. Got {key!r}.")
    if any(k < 0 for k in key):
        raise ValueError(f"seed and indices must be non-negative. Got {key!r}.")
    value = derive_seed(*(int(k) for k in key), bits=63)
    return torch.Generator().manual_seed(value)


def gaussian(shape, gen: torch.Generator, *, dtype, device) -> torch.Tensor:
    """Standard normal entries drawn on the CPU in float64 and moved.

    Args:
        shape: Output shape.
        gen: CPU generator (see :func:`generator`).
        dtype: Target dtype.
        device: Target device.

    Returns:
        The tensor.
    """
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    return x.to(dtype=dtype, device=device)


def rademacher(shape, gen: torch.Generator, *, dtype, device) -> torch.Tensor:
    """Entries ``±1`` with equal probability, drawn on the CPU and moved.

    Args:
        shape: Output shape.
        gen: CPU generator.
        dtype: Target dtype.
        device: Target device.

    Returns:
        The tensor.
    """
    x = torch.randint(0, 2, shape, generator=gen, dtype=torch.int8) * 2 - 1
    return x.to(dtype=dtype, device=device)

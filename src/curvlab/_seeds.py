"""The one seed derivation of curvlab, below every layer so that all can use it.

:mod:`curvlab.linalg._random` builds its reproducible streams on it; the
operators (Monte-Carlo labels), the diagonals and the experiments (batch orders,
data subsets, random masks) derive their seeds with it too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy

__all__ = ["derive_seed"]


def derive_seed(*entropy: int, spawn_key: Sequence[int] = (), bits: int = 64) -> int:
    """The one way curvlab derives a seed from a key: NumPy's ``SeedSequence``.

    Every stream of random numbers in curvlab (test matrices, probes, random
    masks, Monte-Carlo labels, batch orders, data subsets) is seeded by this
    function, so its numbers depend on its key alone.

    Args:
        *entropy: Non-negative ints, e.g. ``(seed, index)``.
        spawn_key: ``SeedSequence``'s spawn key (training's streams use it).
        bits: 64, or 63 for a seed that must stay below ``2**63``.

    Returns:
        ``(s0 << 32 | s1)`` of the sequence's first two 32-bit words, masked to
        ``bits`` bits.

    Example:
        >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(1, 0)
        True
        >>> derive_seed(3, 7, bits=63) < 2**63
        True
    """
    words = numpy.random.SeedSequence(list(entropy), spawn_key=tuple(spawn_key))
    state = words.generate_state(2)
    return (int(state[0]) << 32 | int(state[1])) & (2**bits - 1)

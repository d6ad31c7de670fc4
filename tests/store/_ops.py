"""Picklable operator factories for the store tests (run in worker processes)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch


def matrix(D: int, seed: int = 0) -> torch.Tensor:
    """A symmetric float64 test matrix with a planted, decaying spectrum."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64)).Q
    values = 1.0 / torch.arange(1, D + 1, dtype=torch.float64) ** 1.5
    values[1::3] *= -1
    return (Q * values) @ Q.T


class Maker:
    """Builds the operator; logs the pid of every build to ``log``.

    With ``kill_after``, the operator SIGKILLs its own process at its
    ``kill_after``-th product (once per ``marker`` file: the first process to
    create the marker dies, later ones do not). With ``poison``, it kills its
    process every time a product includes that test column.
    """

    def __init__(self, D, seed=0, log=None, kill_after=None, marker=None, poison=None):
        self.D, self.seed, self.log = D, seed, log
        self.kill_after, self.marker, self.poison = kill_after, marker, poison

    def __call__(self):
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()}\n")
        return Op(matrix(self.D, self.seed), self)


class Op:
    def __init__(self, A, maker):
        self.A, self.maker = A, maker
        self.shape, self.dtype, self.device = A.shape, A.dtype, A.device
        self.calls = 0

    def __matmul__(self, X):
        self.calls += 1
        m = self.maker
        if m.kill_after is not None and self.calls >= m.kill_after:
            marker = Path(m.marker) if m.marker else None
            if marker is None or not marker.exists():
                if marker is not None:
                    marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
        if m.poison is not None and any(
            torch.equal(X[:, j], m.poison) for j in range(X.shape[1])
        ):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.A @ X


def measure_in_process(root, indices, maker):
    """Entry point of a spawned writer process."""
    from curvlab import store as st

    torch.set_num_threads(1)
    st.measure(st.open(root), maker, indices=indices, progress=False, block_size=2)

"""Symmetric test matrices with controlled spectra.

For tests, examples and benchmarks of the algorithms in :mod:`curvlab.linalg`: each
function returns ``(matrix, eigenvalues)`` with ``matrix = Q diag(eigenvalues) Q^T``
for a Haar-random orthogonal ``Q`` (QR of a Gaussian matrix with the signs of R's
diagonal fixed), eigenvalues sorted by descending magnitude. The spectra follow the
families of Tropp et al. (2017, "Fixed-rank approximation of a positive-semidefinite
matrix from streaming data", §7.1) used by skerch's ``synthmat.py``: exactly low
rank, low rank plus noise, polynomial and exponential decay; and an indefinite
variant with alternating signs, since Hessians are indefinite.

Each family takes the size ``dim`` (``D``), the number ``rank`` of leading
eigenvalues, a parameter of its own, the ``seed`` of ``Q`` and the keywords
``dtype`` and ``device`` of the result; it raises a ``ValueError`` unless
``0 < rank <= dim``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from curvlab.linalg._random import gaussian, generator


def random_orthogonal(
    dim: int, *, seed: int = 0, dtype=torch.float64, device="cpu"
) -> Tensor:
    """Return a Haar-distributed random orthogonal ``(dim, dim)`` matrix.

    Args:
        dim: Size.
        seed: Random seed.
        dtype: Dtype of the result.
        device: Device of the result.

    Returns:
        The orthogonal matrix.
    """
    G = gaussian((dim, dim), generator(seed), dtype=torch.float64, device="cpu")
    Q, R = torch.linalg.qr(G)
    Q = Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, 1.0)
    return Q.to(dtype=dtype, device=device)


def from_spectrum(
    eigenvalues: Tensor, *, seed: int = 0, dtype=torch.float64, device="cpu"
) -> tuple[Tensor, Tensor]:
    """Return ``Q diag(eigenvalues) Q^T`` for a random orthogonal ``Q``.

    Args:
        eigenvalues: ``(D,)`` eigenvalues (any order).
        seed: Random seed for ``Q``.
        dtype: Dtype of the result.
        device: Device of the result.

    Returns:
        The symmetric matrix and its eigenvalues sorted by descending magnitude.

    Raises:
        ValueError: If ``eigenvalues`` is not a non-empty vector.
    """
    if eigenvalues.ndim != 1 or eigenvalues.numel() == 0:
        raise ValueError(
            f"eigenvalues must be a non-empty vector. Got {tuple(eigenvalues.shape)}."
        )
    lam = eigenvalues.to(torch.float64).cpu()
    lam = lam[torch.argsort(lam.abs(), descending=True, stable=True)]
    Q = random_orthogonal(lam.numel(), seed=seed)
    A = (Q * lam) @ Q.T
    A = (A + A.T) / 2
    return A.to(dtype=dtype, device=device), lam.to(dtype=dtype, device=device)


def _check(dim: int, rank: int):
    if not 0 < rank <= dim:
        raise ValueError(f"Need 0 < rank <= dim. Got rank={rank}, dim={dim}.")


def _unit_then(dim: int, rank: int, tail, seed: int, kw: dict):
    """``rank`` unit eigenvalues, then ``tail(j)`` at ``j = 1, ..., D - rank``."""
    _check(dim, rank)
    i = torch.arange(dim, dtype=torch.float64)
    lam = torch.where(i < rank, 1.0, tail(i - rank + 1))
    return from_spectrum(lam, seed=seed, **kw)


def low_rank(dim: int, rank: int, *, seed: int = 0, **kw) -> tuple[Tensor, Tensor]:
    """Exactly rank-``rank`` PSD matrix: eigenvalues 1 (``rank`` times), then 0."""
    return _unit_then(dim, rank, torch.zeros_like, seed, kw)


def low_rank_plus_noise(
    dim: int, rank: int, noise: float = 1e-2, *, seed: int = 0, **kw
) -> tuple[Tensor, Tensor]:
    """Rank ``rank`` unit spectrum on a flat floor: eigenvalues ``1`` then ``noise``.

    This is the spectrum of Tropp et al.'s ``diag(1, ..., 1, 0, ...) + ξ/D W W^T`` in
    expectation, made deterministic so that tests know the exact eigenvalues.

    ``noise`` is the floor eigenvalue of the remaining ``D - rank`` directions.
    """
    return _unit_then(dim, rank, lambda j: torch.full_like(j, float(noise)), seed, kw)


def polynomial_decay(
    dim: int, rank: int, power: float = 1.0, *, seed: int = 0, **kw
) -> tuple[Tensor, Tensor]:
    """Eigenvalues ``1`` (``rank`` times), then ``(i - rank + 2)^(-power)``.

    ``power`` is the decay exponent (0.5 slow, 1 medium, 2 fast in Tropp et al.).
    """
    return _unit_then(dim, rank, lambda j: (j + 1).clamp(min=1) ** (-power), seed, kw)


def exponential_decay(
    dim: int, rank: int, rate: float = 0.25, *, seed: int = 0, **kw
) -> tuple[Tensor, Tensor]:
    """Eigenvalues ``1`` (``rank`` times), then ``10^(-rate (i - rank + 1))``.

    ``rate`` is in decades lost per eigenvalue (0.01 slow, 0.1 medium, 0.5 fast).
    """
    return _unit_then(dim, rank, lambda j: 10.0 ** (-rate * j), seed, kw)


def indefinite(
    dim: int, rank: int, decay: float = 0.5, *, seed: int = 0, **kw
) -> tuple[Tensor, Tensor]:
    """Indefinite: magnitudes ``decay^i`` with alternating signs over a small bulk.

    The leading ``rank`` eigenvalues are ``+1, -decay, +decay^2, ...``; the remaining
    ``D - rank`` are ``±1e-3 decay^rank`` of alternating sign.
    Like a Hessian: a few large curvatures of both signs above a small bulk.

    ``decay`` is the ratio of consecutive magnitudes, in (0, 1].

    Raises:
        ValueError: If ``decay`` is outside (0, 1] (or ``rank`` out of range).
    """
    _check(dim, rank)
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1]. Got {decay}.")
    i = torch.arange(dim, dtype=torch.float64)
    sign = 1.0 - 2.0 * (i % 2)
    magnitude = torch.where(i < rank, decay**i, 1e-3 * decay**rank)
    return from_spectrum(sign * magnitude, seed=seed, **kw)

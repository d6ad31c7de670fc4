"""Subspaces with known principal angles, shared by the subspace tests."""

from __future__ import annotations

import torch
from torch import Tensor

# Tolerances against float64 truth, by dtype. Angles and overlaps of
# well-conditioned inputs are exact up to rounding (~1e-15 relative in float64,
# ~1e-7 in float32) times a small factor for the SVDs; the margins below are
# three orders of magnitude above what the tests observe.
ATOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_basis(D: int, k: int, seed: int, dtype=torch.float64) -> Tensor:
    """A uniformly random (Haar) orthonormal ``(D, k)`` basis."""
    G = torch.randn(D, k, generator=generator(seed), dtype=torch.float64)
    return torch.linalg.qr(G).Q.to(dtype)


def random_orthogonal(k: int, seed: int) -> Tensor:
    """A random ``(k, k)`` orthogonal matrix (a change of basis)."""
    return random_basis(k, k, seed)


def planted_pair(D: int, angles: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Bases ``U, V`` whose principal angles are ``angles`` (``2k <= D``).

    ``U = Q[:, :k]`` and ``V[:, i] = cos(a_i) Q[:, i] + sin(a_i) Q[:, k + i]``
    for a random orthonormal ``Q``; both are rotated by random changes of basis.
    """
    angles = angles.to(torch.float64)
    k = angles.numel()
    Q = random_basis(D, 2 * k, seed)
    U = Q[:, :k]
    V = Q[:, :k] * torch.cos(angles) + Q[:, k:] * torch.sin(angles)
    return U @ random_orthogonal(k, seed + 1), V @ random_orthogonal(k, seed + 2)


def mask_matrix(mask: Tensor, D: int, dtype=torch.float64) -> Tensor:
    """The dense ``(D, k)`` 0/1 matrix with columns ``e_i``, ``i`` in the mask."""
    M = torch.zeros(D, mask.numel(), dtype=dtype, device=mask.device)
    M[mask, torch.arange(mask.numel(), device=mask.device)] = 1.0
    return M

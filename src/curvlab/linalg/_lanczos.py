r"""The engine of :func:`~curvlab.linalg.eigsh`: block Krylov-Schur iteration.

The iteration keeps an orthonormal basis ``V`` (``D x j``), the projected matrix
``H = V^T A V`` (``j x j``, symmetric) and a residual block: an orthonormal ``Q``
(``D x b``) orthogonal to ``V`` and a coupling ``C`` (``b x j``) such that

.. math::

    A V = V H + Q C

holds to rounding. A Ritz pair ``(θ, V y)`` with ``H y = θ y`` then has the residual
``A V y - θ V y = Q C y``, of norm ``||C y||``: the residuals of all Ritz pairs cost
one small matrix product, no operator product.

*Expansion* appends ``Q`` to ``V``, multiplies ``W = A Q`` (``b`` columns, one call
to the operator), orthogonalises ``W`` against the whole basis twice (classical
Gram-Schmidt twice, "twice is enough"), and splits the rest into the next ``Q`` and
its coupling ``R``. The new rows and columns of ``H`` are ``C`` (known from the
relation) and the symmetrised diagonal block ``Q^T A Q``.

*Restart* (thick restart, Krylov-Schur) diagonalises ``H = Y Θ Y^T`` and keeps the
``p`` wanted Ritz vectors: ``V <- V Y_p``, ``H <- Θ_p``, ``C <- C Y_p``. The relation
still holds, with an arrowhead ``H`` once the expansion resumes.

Breakdown: a column of ``W`` that is, after orthogonalisation, rounding noise of its
norm before (the DGKS test of Daniel, Gragg, Kaufman and Stewart, 1976, as in
ARPACK's ``dsaitr``) spans no new direction. It gets a zero coupling and a fresh
random direction orthogonal to everything, so the iteration goes on in the rest of
the space (an invariant subspace was found).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from curvlab.linalg._operator import CountedOperator
from curvlab.linalg._random import gaussian

#: DGKS threshold: a pass of Gram-Schmidt that keeps less than this fraction of the
#: norm removed so much that the remainder may be rounding noise (ARPACK's 0.717).
DGKS = 0.717


@dataclass
class KrylovSchurOutput:
    """Raw output of :func:`krylov_schur` (the public record is built from it)."""

    eigenvalues: Tensor
    eigenvectors: Tensor
    residual_norms: Tensor
    converged: Tensor
    num_restarts: int
    num_fresh: int


def _norms(W: Tensor) -> Tensor:
    return torch.linalg.vector_norm(W, dim=0)


def _fresh(basis: list[Tensor], gen: torch.Generator, like: Tensor) -> Tensor:
    """A random unit vector orthogonal to the columns of every tensor in ``basis``."""
    w = gaussian((like.shape[0],), gen, dtype=like.dtype, device=like.device)
    for _ in range(2):
        for B in basis:
            if B.shape[1]:
                w = w - B @ (B.mT @ w)
    return w / torch.linalg.vector_norm(w)


def orthonormalize(
    W: Tensor, V: Tensor, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Orthonormalise the block ``W`` against the orthonormal ``V`` and itself.

    Args:
        W: ``(D, b)`` block.
        V: ``(D, j)`` orthonormal basis (``j`` may be 0).
        gen: Generator for fresh directions.

    Returns:
        ``(Q, R, h, num_fresh)``: ``Q`` ``(D, b)`` orthonormal and orthogonal to
        ``V``; ``R`` ``(b, b)`` upper triangular with ``W - V h = Q R`` to rounding;
        ``h`` ``(j, b)`` the coefficients of ``W`` on ``V``; ``num_fresh`` the
        number of columns of ``Q`` that are fresh random directions (zero diagonal
        of ``R``) because ``W`` spanned nothing new there.
    """
    b = W.shape[1]
    h = V.mT @ W
    W = W - V @ h
    n1 = _norms(W)
    h2 = V.mT @ W
    W = W - V @ h2
    h = h + h2
    n2 = _norms(W)
    dead = torch.zeros(b, dtype=torch.bool)
    suspect = (n2 <= DGKS * n1).cpu()
    if bool(suspect.any()):
        # A second pass removed much of the norm: a third decides (DGKS).
        idx = torch.nonzero(suspect).flatten().to(W.device)
        Ws = W[:, idx]
        h3 = V.mT @ Ws
        Ws = Ws - V @ h3
        h[:, idx] = h[:, idx] + h3
        n3 = _norms(Ws)
        W[:, idx] = Ws
        dead[suspect] = (n3 <= DGKS * n2[idx]).cpu()

    Q = torch.zeros_like(W)
    R = W.new_zeros(b, b)
    num_fresh = 0
    for i in range(b):
        Qp = Q[:, :i]
        if not dead[i]:
            w = W[:, i]
            m0 = torch.linalg.vector_norm(w)
            c = Qp.mT @ w
            w = w - Qp @ c
            m1 = torch.linalg.vector_norm(w)
            if i and bool(m1 <= DGKS * m0):
                # Cancellation inside the block: orthogonalise against everything.
                w = w - V @ (V.mT @ w)
                c2 = Qp.mT @ w
                w = w - Qp @ c2
                c = c + c2
                m2 = torch.linalg.vector_norm(w)
                dead_i = bool(m2 <= DGKS * m1)
                m1 = m2
            else:
                dead_i = not bool(m1 > 0)
            R[:i, i] = c
            if not dead_i:
                R[i, i] = m1
                Q[:, i] = w / m1
                continue
        Q[:, i] = _fresh([V, Qp], gen, W)
        num_fresh += 1
    return Q, R, h, num_fresh


def start_block(
    A: CountedOperator, b: int, v0: Tensor | None, gen: torch.Generator
) -> tuple[Tensor, int]:
    """Return the orthonormal start block ``(D, b)``: ``v0``'s columns, then random.

    Returns:
        The block and the number of fresh random columns needed for a ``v0`` that
        is rank deficient.
    """
    cols = [] if v0 is None else [v0.reshape(A.dim, -1).to(A.dtype).to(A.device)]
    num_given = 0 if v0 is None else cols[0].shape[1]
    if num_given < b:
        cols.append(
            gaussian((A.dim, b - num_given), gen, dtype=A.dtype, device=A.device)
        )
    W = torch.cat(cols, dim=1)
    Q, _, _, num_fresh = orthonormalize(W, A.zeros(A.dim, 0), gen)
    return Q, num_fresh


def order_ritz(theta: Tensor, which: str) -> Tensor:
    """Indices sorting Ritz values as ``which`` wants them, the wanted first."""
    if which == "LM":
        key = -theta.abs()
    elif which == "LA":
        key = -theta
    else:  # "SA"
        key = theta
    return torch.argsort(key, stable=True)


def num_kept(k: int, ncv: int, b: int) -> int:
    """Number ``p`` of Ritz vectors a restart keeps: ``k + 0.6 (ncv - k)``.

    Rounded down so that whole blocks fill the basis again; at least ``k`` and at
    most ``ncv - b``. Keeping Ritz vectors beyond the ``k`` wanted ones deflates the
    nearby unwanted eigenvalues, at the price of fewer new vectors per cycle. Over
    polynomially and exponentially decaying, indefinite and Hessian spectra
    (``D`` = 400 and 3190, ``k`` = 5, 10, 16, ``which`` LM and LA, 8 start vectors
    each, ``ncv = max(2k + 1, 20)``) keeping 60% of the free space spent 0.89 times
    ARPACK's products on average and at worst 1.06 times in a single run (50%:
    0.92 and 1.10; 75%: 0.88 and 1.09).
    """
    p = k + int(0.6 * (ncv - k))
    p = ncv - b * max(1, (ncv - p) // b)
    return max(min(p, ncv - b), k)


def krylov_schur(
    A: CountedOperator,
    k: int,
    *,
    which: str,
    tol: float,
    max_matvecs: int,
    block_size: int,
    ncv: int,
    v0: Tensor | None,
    gen: torch.Generator,
) -> KrylovSchurOutput:
    """Run the block Krylov-Schur iteration (see the module docstring).

    Arguments are validated by :func:`~curvlab.linalg.eigsh`.

    Returns:
        The ``k`` wanted Ritz pairs in ``which`` order and their diagnostics.
    """
    b = block_size
    dtype, device = A.dtype, A.device
    eps23 = torch.finfo(dtype).eps ** (2 / 3)
    V = A.zeros(A.dim, ncv)
    H = A.zeros(ncv, ncv)
    C = A.zeros(b, ncv)
    Q, num_fresh = start_block(A, b, v0, gen)
    j, num_restarts, num_steps = 0, 0, 0
    # First test of convergence once the basis is as large as ARPACK's default (a
    # smaller one can miss copies of a repeated eigenvalue), then after every block.
    j_check = min(ncv, max(2 * k + 1, 20))

    def ritz(j: int):
        theta, Y = torch.linalg.eigh(H[:j, :j])
        order = order_ritz(theta, which)
        theta, Y = theta[order], Y[:, order]
        res = _norms(C[:, :j] @ Y)
        anorm = theta.abs().max()
        bound = tol * torch.maximum(theta.abs(), eps23 * anorm)
        return theta, Y, res, res <= bound

    while True:
        if A.num_matvecs + b > max_matvecs:
            break
        V[:, j : j + b] = Q
        num_steps += 1
        W = A.apply(Q, step=f"Lanczos step {num_steps} (restart {num_restarts})")
        Qn, R, h, fresh = orthonormalize(W, V[:, : j + b], gen)
        num_fresh += fresh
        diag = h[j : j + b]
        H[j : j + b, j : j + b] = (diag + diag.mT) / 2
        H[:j, j : j + b] = C[:, :j].mT
        H[j : j + b, :j] = C[:, :j]
        C.zero_()
        C[:, j : j + b] = R
        Q = Qn
        j += b
        full = j + b > ncv
        if j < max(k, j_check) and not full:
            continue
        theta, Y, res, conv = ritz(j)
        if bool(conv[:k].all()):
            break
        if full:
            p = num_kept(k, ncv, b)
            V[:, :p] = V[:, :j] @ Y[:, :p]
            V[:, p:] = 0
            H.zero_()
            H[:p, :p] = torch.diag(theta[:p])
            C[:, :p] = C[:, :j] @ Y[:, :p]
            C[:, p:] = 0
            j = p
            num_restarts += 1

    theta, Y, res, conv = ritz(j)
    X = V[:, :j] @ Y[:, :k]
    # Deterministic signs: the entry of largest magnitude of each vector is positive.
    pivot = X.abs().argmax(dim=0)
    sign = torch.sign(X[pivot, torch.arange(k, device=device)])
    X = X * torch.where(sign == 0, 1.0, sign).to(dtype)
    return KrylovSchurOutput(
        eigenvalues=theta[:k].clone(),
        eigenvectors=X,
        residual_norms=res[:k].clone(),
        converged=conv[:k].clone(),
        num_restarts=num_restarts,
        num_fresh=num_fresh,
    )


def default_ncv(k: int, block_size: int) -> int:
    """ARPACK's ``max(2k + 1, 20)`` for one column; ``k + 12 b`` or more for blocks.

    A block Krylov space of ``m`` columns has polynomial degree ``m / b`` only, so
    blocks need a larger basis. For the top 10 of the ``digits_mlp`` Hessian and of
    polynomially and exponentially decaying spectra (``D`` = 3000, blocks of 4 and
    8), ``k + 12 b`` spent 12-36% fewer products than ``k + 6 b`` and 1-8% fewer
    than ``k + 10 b``; ``k + 16 b`` saves a few percent more for a third more memory.
    """
    ncv = max(2 * k + 1, 20)
    if block_size > 1:
        ncv = max(ncv, k + 12 * block_size)
    return ncv

r"""Randomized Nyström preconditioning for damped PSD systems (Frangella et al. 2023).

To solve :math:`(A + \mu I) x = b` for a positive semi-definite :math:`A` (a GGN,
a Fisher, a KFAC approximation) by CG, take a rank-:math:`\ell` randomized
Nyström approximation :math:`\hat A = U \hat\Lambda U^\top`
(:func:`curvlab.linalg.nystrom`, with :math:`\hat\lambda_1 \ge \dots \ge
\hat\lambda_\ell \ge 0`) and precondition with

.. math::
    P^{-1} = (\hat\lambda_\ell + \mu)\, U (\hat\Lambda + \mu I)^{-1} U^\top
    + (I - U U^\top).

:math:`P^{-1}` maps the captured eigendirections of :math:`A + \mu I` to about
:math:`\hat\lambda_\ell + \mu` and leaves the rest alone, and (Frangella, Tropp &
Udell 2023, Prop. 5.3)

.. math::
    \kappa\bigl(P^{-1/2}(A + \mu I)P^{-1/2}\bigr) \le
    \frac{\hat\lambda_\ell + \mu + \|A - \hat A\|}{\mu}.

Their Theorem 5.1 makes it a constant: with the effective dimension
:math:`d_{\mathrm{eff}}(\mu) = \operatorname{tr}(A (A + \mu I)^{-1}) = \sum_i
\lambda_i / (\lambda_i + \mu)` and a Gaussian sketch of rank
:math:`\ell = 2\lceil 1.5\, d_{\mathrm{eff}}(\mu)\rceil + 1`, the expected
condition number is below 28. ``rank="auto"`` follows this rule without knowing
:math:`d_{\mathrm{eff}}`: it starts at ``initial_rank`` and doubles the sketch
(reusing the measurements taken: Gaussian test columns depend only on their
index) until :math:`\ell \ge 2\lceil 1.5\, \hat d_{\mathrm{eff}}\rceil + 1`,
with :math:`\hat d_{\mathrm{eff}} = \sum_{i \le \ell} \hat\lambda_i /
(\hat\lambda_i + \mu)` from the current sketch, or until ``max_rank``.
:math:`\hat d_{\mathrm{eff}}` never exceeds :math:`d_{\mathrm{eff}}`
(:math:`\hat A \preceq A`), and approaches it once the sketch resolves the
eigenvalues above :math:`\mu`.

The preconditioner is an operator (:class:`NystromPreconditioner`): it goes to
:func:`curvlab.linalg.cg` as ``preconditioner=`` and to
:class:`~curvlab.operators.InverseOperator` as an option.

References:
    - Frangella, Z., Tropp, J. A., & Udell, M. (2023). Randomized Nyström
      preconditioning. SIAM Journal on Matrix Analysis and Applications 44(2)
      (arXiv 2110.02820), Eq. (5.3), Prop. 5.3, Thm. 5.1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from curvlab._typing import TensorList
from curvlab.linalg._operator import CountedOperator
from curvlab.linalg.sketch import measure, nystrom, sketch_plan, solve
from curvlab.linalg.solvers import check_damping
from curvlab.operators.base import CurvatureOperator

__all__ = ["NystromPreconditioner", "nystrom_preconditioner"]

#: Test matrices whose column ``j`` does not depend on the number of columns,
#: so that ``rank="auto"`` can extend a sketch instead of retaking it.
_EXTENSIBLE = ("gaussian", "rademacher")


class NystromPreconditioner(CurvatureOperator):
    r"""The inverse Nyström preconditioner :math:`P^{-1}` as an operator.

    Args:
        eigenvalues: ``(l,)`` non-negative Nyström eigenvalues, descending.
        eigenvectors: ``(D, l)`` orthonormal columns.
        damping: :math:`\mu \ge 0` of the system :math:`A + \mu I`.
        param_shapes: Parameter shapes splitting ``D`` (default ``[(D,)]``).
        num_matvecs: Products with :math:`A` spent to build it.
        rule: How the rank was chosen (``"given"``, ``"effective dimension"``,
            ``"max_rank"``).

    Attributes:
        effective_dimension: :math:`\hat d_{\mathrm{eff}}(\mu)` from the sketch.

    Raises:
        ValueError: If the shapes do not match, or :math:`\hat\lambda_\ell + \mu
            \le 0` (no damping and no positive eigenvalue).

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([4.0, 2.0, 1.0, 1.0]).double())
        >>> U = torch.eye(4).double()[:, :2]
        >>> P = NystromPreconditioner(torch.tensor([4.0, 2.0]).double(), U, 1.0)
        >>> torch.diagonal(P.to_dense() @ (A + torch.eye(4)))  # spectrum 3, 3, 2, 2
        tensor([3., 3., 2., 2.], dtype=torch.float64)
    """

    is_psd = True

    def __init__(
        self,
        eigenvalues: Tensor,
        eigenvectors: Tensor,
        damping: float,
        *,
        param_shapes=None,
        num_matvecs: int = 0,
        rule: str = "given",
    ):
        damping = check_damping(damping)
        if eigenvectors.ndim != 2 or eigenvalues.shape != eigenvectors.shape[1:]:
            raise ValueError(
                "eigenvalues (l,) and eigenvectors (D, l) must match. Got "
                f"{tuple(eigenvalues.shape)} and {tuple(eigenvectors.shape)}."
            )
        dim = eigenvectors.shape[0]
        super().__init__(
            param_shapes or [(dim,)],
            dtype=eigenvectors.dtype,
            device=eigenvectors.device,
        )
        if self.shape[0] != dim:
            raise ValueError(
                f"param_shapes add up to D={self.shape[0]}, the eigenvectors have "
                f"D={dim}."
            )
        keep = (
            eigenvalues > 0
            if damping == 0
            else torch.ones_like(eigenvalues, dtype=bool)
        )
        eigenvalues, eigenvectors = eigenvalues[keep], eigenvectors[:, keep]
        if eigenvalues.numel() == 0:
            raise ValueError(
                "The Nyström preconditioner needs damping > 0 or a positive "
                "eigenvalue. Got damping=0 and none."
            )
        self.eigenvalues = eigenvalues
        self.eigenvectors = eigenvectors
        self.damping = damping
        self.num_matvecs = num_matvecs
        self.rule = rule
        self.effective_dimension = float((eigenvalues / (eigenvalues + damping)).sum())
        self._weights = (eigenvalues[-1] + damping) / (eigenvalues + damping) - 1.0

    @property
    def rank(self) -> int:
        r""":math:`\ell`, the number of eigenpairs used."""
        return int(self.eigenvalues.numel())

    def _matmat(self, M: TensorList) -> TensorList:
        X = self._flatten(M)
        U = self.eigenvectors
        # P^{-1} X = X + U diag((l_min + mu) / (l + mu) - 1) U^T X
        return self._unflatten(X + U @ (self._weights[:, None] * (U.mT @ X)))

    def __repr__(self) -> str:
        return (
            f"NystromPreconditioner(D={self.shape[0]}, rank={self.rank}, "
            f"damping={self.damping}, rule={self.rule!r})"
        )


def _theorem_rank(effective_dimension: float) -> int:
    return 2 * math.ceil(1.5 * effective_dimension) + 1


def nystrom_preconditioner(
    op,
    damping: float,
    rank: int | str = "auto",
    *,
    initial_rank: int = 16,
    max_rank: int | None = None,
    test_matrix: str = "gaussian",
    seed: int = 0,
) -> NystromPreconditioner:
    r"""Build the randomized Nyström preconditioner of :math:`A + \mu I`.

    Args:
        op: Symmetric positive semi-definite ``(D, D)`` operator (GGN, Fisher,
            KFAC; one that declares ``is_psd=False`` is refused).
        damping: :math:`\mu \ge 0`, the damping of the system CG will solve
            (``> 0`` for ``rank="auto"``).
        rank: The sketch size :math:`\ell` (``1 <= rank < D``), or ``"auto"``:
            the effective-dimension rule of the module docstring.
        initial_rank: First sketch size of ``"auto"``.
        max_rank: Largest sketch of ``"auto"``; default
            ``min(D - 1, max(initial_rank, D // 10))``.
        test_matrix: ``"gaussian"`` (default, the paper's), ``"rademacher"`` or,
            for a given rank, ``"ssrft"``.
        seed: Seed of the test matrix.

    Returns:
        The preconditioner, with ``num_matvecs`` (products with ``op``: the
        final rank), ``rank``, ``rule`` and ``effective_dimension``.

    Raises:
        ValueError: If a size is out of range, the damping is negative, NaN or
            (for ``"auto"``) zero, ``op`` declares ``is_psd=False``, or
            ``"auto"`` is asked with an SSRFT test matrix.
        TypeError: If an argument has the wrong type.

    Example:
        >>> from curvlab.linalg import cg, synthetic
        >>> A, _ = synthetic.polynomial_decay(200, 5, 2.0, seed=0)
        >>> b = torch.ones(200, dtype=torch.float64)
        >>> P = nystrom_preconditioner(A, 1e-3, rank=60)
        >>> plain = cg(A, b, 1e-3, tol=1e-8)
        >>> fast = cg(A, b, 1e-3, tol=1e-8, preconditioner=P)
        >>> fast.num_iters < plain.num_iters / 2
        True
    """
    mu = check_damping(damping)
    dim = CountedOperator(op, symmetric=True, what="op").dim
    shapes = getattr(op, "param_shapes", None)
    if rank != "auto":
        result = nystrom(op, rank, test_matrix=test_matrix, seed=seed)
        return NystromPreconditioner(
            result.eigenvalues,
            result.eigenvectors,
            mu,
            param_shapes=shapes,
            num_matvecs=result.num_matvecs,
            rule="given",
        )
    if mu == 0:
        raise ValueError(
            "rank='auto' chooses the rank from the effective dimension at the "
            "damping, which needs damping > 0. Got damping=0.0; pass a rank."
        )
    if test_matrix not in _EXTENSIBLE:
        raise ValueError(
            f"rank='auto' extends its sketch, which needs test_matrix in "
            f"{_EXTENSIBLE}. Got {test_matrix!r}."
        )
    if max_rank is None:
        max_rank = min(dim - 1, max(initial_rank, dim // 10))
    _check_rank("max_rank", max_rank, dim)
    _check_rank("initial_rank", initial_rank, dim)
    ell = min(initial_rank, max_rank)
    Y = None
    while True:
        plan = sketch_plan(
            op, ell, method="nystrom", test_matrix=test_matrix, seed=seed
        )
        start = 0 if Y is None else Y.shape[1]
        new = measure(op, plan, range(start, ell))
        Y = new if Y is None else torch.cat([Y, new], dim=1)
        result = solve(plan, Y)
        values = result.eigenvalues
        deff = float((values / (values + mu)).sum())
        if ell >= _theorem_rank(deff):
            rule = "effective dimension"
            break
        if ell >= max_rank:
            rule = "max_rank"
            break
        ell = min(2 * ell, max_rank)
    return NystromPreconditioner(
        values,
        result.eigenvectors,
        mu,
        param_shapes=shapes,
        num_matvecs=Y.shape[1],
        rule=rule,
    )


def _check_rank(name: str, value, dim: int):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int. Got {type(value).__name__}.")
    if not 1 <= value < dim:
        raise ValueError(f"{name} must lie in [1, D - 1] with D={dim}. Got {value}.")

r"""Inverse products: conjugate gradients and the Neumann series.

Both solve the damped system :math:`(A + \delta I) X = B` for a symmetric operator
:math:`A` (a curvature operator, a tensor, or any object with ``shape``, ``dtype``,
``device`` and ``@``), damping :math:`\delta \ge 0`, and ``k`` right-hand sides
at once: every iteration multiplies all columns that are still running in one
product, so the ``k`` solves share each pass over the data.

- :func:`cg`: conjugate gradients (Hestenes & Stiefel 1952), a block of ``k``
  independent CG recurrences, optionally preconditioned by any operator that
  approximates :math:`(A + \delta I)^{-1}` (a Nyström preconditioner from
  :mod:`curvlab.linalg.preconditioners`, a KFAC inverse, ...). Column ``j`` stops
  once :math:`\|b_j - (A + \delta I) x_j\| \le \max(\mathrm{tol}\,\|b_j\|,
  \mathrm{atol})`. CG needs :math:`A + \delta I` positive definite; it checks the
  curvature :math:`p^\top (A + \delta I) p` of every search direction and
  reports a non-positive one (an indefinite Hessian without enough damping)
  instead of returning a meaningless iterate.
- :func:`neumann`: the truncated, scaled Neumann series

  .. math::
      (A + \delta I)^{-1} B \approx \alpha \sum_{j=0}^{K-1}
      \bigl(I - \alpha (A + \delta I)\bigr)^j B,

  convergent iff :math:`0 < \alpha\lambda < 2` for every eigenvalue
  :math:`\lambda` of :math:`A + \delta I` (Lorraine, Vicol & Duvenaud 2020 use it
  for implicit differentiation). The term :math:`v_j = (I - \alpha(A + \delta
  I))^j B` is also the residual of the sum of the terms before it, so residuals
  come for free, and a growing term norm (impossible when the series converges,
  since :math:`\|(I - \alpha(A + \delta I)) v\| < \|v\|` then) raises
  :class:`NeumannDivergenceError`.

A budget that runs out is a result, not an error: the record says
``converged=False`` and carries the residual norms (and :func:`cg` warns).
Residual norms are those of the recurrences (CG's updated residual, Neumann's
next term), which equal the true residuals up to rounding.

References:
    - Hestenes, M. R., & Stiefel, E. (1952). Methods of conjugate gradients for
      solving linear systems. Journal of Research of the National Bureau of
      Standards 49(6).
    - Lorraine, J., Vicol, P., & Duvenaud, D. (2020). Optimizing millions of
      hyperparameters by implicit differentiation. AISTATS.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from curvlab._checks import check_columns, check_nonneg
from curvlab.linalg._operator import CountedOperator, check_product_shape
from curvlab.operators._checks import check_dtype_device

__all__ = [
    "CGResult",
    "NegativeCurvatureError",
    "NeumannDivergenceError",
    "NeumannResult",
    "cg",
    "check_damping",
    "neumann",
]

#: Columns of the right-hand side are solved at once; ``(D, k)`` work arrays.
_ON_NEGATIVE = ("raise", "stop")


class NegativeCurvatureError(ValueError):
    r"""CG met a direction with :math:`p^\top (A + \delta I) p \le 0`."""


class NeumannDivergenceError(ValueError):
    """The Neumann series grew instead of shrinking: it does not converge."""


@dataclass(frozen=True)
class _SolveResult:
    """Solution and residual norms, the fields every solver's result starts with."""

    solution: Tensor
    residual_norms: Tensor
    rhs_norms: Tensor

    @property
    def relative_residuals(self) -> Tensor:
        r""":math:`\|r_j\| / \|b_j\|` (``0`` for a zero right-hand side)."""
        return self.residual_norms / self.rhs_norms.clamp_min(
            torch.finfo(self.rhs_norms.dtype).tiny
        )


@dataclass(frozen=True)
class CGResult(_SolveResult):
    r"""The outcome of :func:`cg`.

    Attributes:
        solution: ``(D,)`` or ``(D, k)``, shaped like the right-hand side.
        residual_norms: ``(k,)`` norms :math:`\|b_j - (A + \delta I) x_j\|` (the
            updated residual of the recurrence).
        rhs_norms: ``(k,)`` norms :math:`\|b_j\|`.
        iterations: ``(k,)`` iterations each column ran.
        converged_columns: ``(k,)`` whether each column met its tolerance.
        negative_curvature: ``(k,)`` whether a column stopped at a direction of
            non-positive curvature (only with ``on_negative_curvature="stop"``).
        converged: Whether every column met its tolerance.
        num_iters: Iterations of the block (the largest of ``iterations``).
        num_matvecs: Columns multiplied by the operator (one column = one product).
    """

    iterations: Tensor
    converged_columns: Tensor
    negative_curvature: Tensor
    converged: bool
    num_iters: int
    num_matvecs: int


@dataclass(frozen=True)
class NeumannResult(_SolveResult):
    r"""The outcome of :func:`neumann`.

    Attributes:
        solution: ``(D,)`` or ``(D, k)``, shaped like the right-hand side.
        residual_norms: ``(k,)`` norms :math:`\|b_j - (A + \delta I) x_j\|`.
        rhs_norms: ``(k,)`` norms :math:`\|b_j\|`.
        num_terms: ``(k,)`` terms of the series summed per column.
        converged_columns: ``(k,)`` whether each column met its tolerance.
        converged: Whether every column met its tolerance.
        scale: The scale :math:`\alpha` used.
        num_matvecs: Columns multiplied by the operator, the scale's estimate
            included.
    """

    num_terms: Tensor
    converged_columns: Tensor
    converged: bool
    scale: float
    num_matvecs: int


# ----------------------------------------------------------------------- checks
def check_damping(damping) -> float:
    r"""Return the damping :math:`\delta` as a float after checking it.

    Args:
        damping: A finite real number ``>= 0`` (or a 0-dim tensor holding one).

    Returns:
        The damping.

    Raises:
        TypeError: If it is not a real number.
        ValueError: If it is negative, NaN or infinite.
    """
    return check_nonneg("damping", damping)


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int. Got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}. Got {value}.")
    return value


def symmetric_operator(op, what: str = "op") -> CountedOperator:
    """Wrap a symmetric operator for the solvers, refusing declared asymmetry.

    Args:
        op: A square operator.
        what: Its name in messages.

    Returns:
        The counted operator.

    Raises:
        ValueError: If ``op`` declares ``is_symmetric=False`` or is not square.
        TypeError: If ``op`` is not an operator.
    """
    if getattr(op, "is_symmetric", True) is False:
        raise ValueError(
            f"{what} must be symmetric: CG and the Neumann series solve symmetric "
            f"systems. Got {type(op).__name__} with is_symmetric=False."
        )
    return CountedOperator(op, what=what)


def check_rhs(B, A: CountedOperator, what: str = "B") -> Tensor:
    """Check a right-hand side against the operator; return it as ``(D, k)``.

    Args:
        B: ``(D,)`` or ``(D, k)`` tensor.
        A: The operator.
        what: Its name in messages.

    Returns:
        ``B`` with a column axis.

    Raises:
        TypeError: If ``B`` is not a tensor.
        ValueError: If its shape, dtype or device does not match, or it holds
            NaN/Inf.
    """
    D = A.dim
    check_columns(B, D, what)
    check_dtype_device(B, A.dtype, A.device, what)
    if not bool(torch.isfinite(B).all()):
        raise ValueError(f"{what} must be finite. Got NaN or Inf entries.")
    return B.unsqueeze(1) if B.ndim == 1 else B


class _Preconditioner:
    """Applies a preconditioner to ``(D, k)`` blocks, checking what comes back."""

    def __init__(self, M, A: CountedOperator):
        missing = [a for a in ("shape",) if not hasattr(M, a)]
        if missing or not hasattr(M, "__matmul__"):
            raise TypeError(
                "preconditioner must have a shape and support `preconditioner @ X` "
                f"on (D, k) tensors. Got {type(M).__name__}."
            )
        if tuple(M.shape) != (A.dim, A.dim):
            raise ValueError(
                f"preconditioner must have shape ({A.dim}, {A.dim}) like the "
                f"operator. Got {tuple(M.shape)}."
            )
        self.M = M

    def __call__(self, R: Tensor) -> Tensor:
        Z = check_product_shape(
            self.M @ R, R.shape, "preconditioner", f"shaped like X {tuple(R.shape)}"
        )
        if not bool(torch.isfinite(Z).all()):
            raise FloatingPointError("The preconditioner returned NaN or Inf.")
        return Z


# ----------------------------------------------------------------------------- CG
def cg(
    op,
    B: Tensor,
    damping: float = 0.0,
    *,
    tol: float = 1e-6,
    atol: float = 0.0,
    max_iters: int | None = None,
    preconditioner=None,
    x0: Tensor | None = None,
    on_negative_curvature: str = "raise",
    warn: bool = True,
) -> CGResult:
    r"""Solve :math:`(A + \delta I) X = B` by (preconditioned) conjugate gradients.

    Runs ``k`` independent CG recurrences, one per column of ``B``, and multiplies
    the search directions of all columns still running in one product per
    iteration. With a preconditioner :math:`M \approx (A + \delta I)^{-1}`
    (symmetric positive definite), each column runs

    .. math::
        \alpha = \frac{r^\top z}{p^\top (A + \delta I) p},\quad
        x \mathrel{+}= \alpha p,\quad r \mathrel{-}= \alpha (A + \delta I) p,\quad
        z = M r,\quad p = z + \frac{r^\top z}{r_{\mathrm{old}}^\top
        z_{\mathrm{old}}}\, p.

    Args:
        op: Symmetric ``(D, D)`` operator: a curvature operator, a tensor, or any
            object with ``shape``, ``dtype``, ``device`` and ``@``.
        B: Right-hand sides, ``(D,)`` or ``(D, k)``, on the operator's dtype and
            device.
        damping: :math:`\delta \ge 0`, added to the operator.
        tol: Relative tolerance: column ``j`` stops at
            :math:`\|r_j\| \le \max(\mathrm{tol}\,\|b_j\|, \mathrm{atol})`.
        atol: Absolute tolerance.
        max_iters: Iteration budget (default ``10 D``, SciPy's). When it runs
            out the result says ``converged=False`` and a ``RuntimeWarning``
            is issued.
        preconditioner: ``None``, or an operator approximating
            :math:`(A + \delta I)^{-1}` that supports ``@`` on ``(D, k)``
            tensors (``NystromPreconditioner``, a KFAC inverse, a tensor); it
            must be symmetric positive definite.
        x0: Starting guess shaped like ``B`` (default zeros).
        on_negative_curvature: ``"raise"`` (default) raises
            :class:`NegativeCurvatureError` at the first direction with
            :math:`p^\top (A + \delta I) p \le 0`; ``"stop"`` stops that column
            at its current iterate (the truncated-CG answer) and flags it in
            ``negative_curvature``.
        warn: Warn when the budget runs out (the result says so either way).

    Returns:
        The solution, per-column residual norms, iterations and flags.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``B`` or ``x0`` has the wrong shape, dtype or device, the
            damping is negative or NaN, ``op`` is not symmetric, or the
            preconditioner is not positive definite.
        NegativeCurvatureError: If ``A + δI`` is not positive definite along a
            search direction (``on_negative_curvature="raise"``).
        FloatingPointError: If a product is not finite.

    Warns:
        RuntimeWarning: If some column did not converge within ``max_iters`` (and
            ``warn``).

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
        >>> b = torch.ones(5, dtype=torch.float64)
        >>> result = cg(A, b, damping=1.0)
        >>> torch.allclose(result.solution, b / (A.diagonal() + 1.0)), result.converged
        (True, True)
    """
    A = symmetric_operator(op)
    delta = check_damping(damping)
    Bm = check_rhs(B, A)
    tol = check_nonneg("tol", tol)
    atol = check_nonneg("atol", atol)
    max_iters = (
        10 * A.dim if max_iters is None else _check_count("max_iters", max_iters, 0)
    )
    if on_negative_curvature not in _ON_NEGATIVE:
        raise ValueError(
            f"on_negative_curvature must be one of {_ON_NEGATIVE}. "
            f"Got {on_negative_curvature!r}."
        )
    precond = None if preconditioner is None else _Preconditioner(preconditioner, A)
    is_psd = A.is_psd

    def apply(P: Tensor, step: str) -> Tensor:
        out = A.apply(P, step=step)
        return out + delta * P if delta else out

    k = Bm.shape[1]
    if x0 is None:
        X = torch.zeros_like(Bm)
        R = Bm.clone()
    else:
        X = check_rhs(x0, A, "x0")
        if X.shape != Bm.shape:
            raise ValueError(
                f"x0 must have the shape of B {tuple(B.shape)}. Got {tuple(x0.shape)}."
            )
        X = X.clone()
        R = Bm - apply(X, "cg initial residual")
    rhs_norms = Bm.norm(dim=0)
    threshold = torch.clamp(tol * rhs_norms, min=atol)
    res = R.norm(dim=0)
    done = res <= threshold
    negative = torch.zeros(k, dtype=torch.bool, device=Bm.device)
    iterations = torch.zeros(k, dtype=torch.long, device=Bm.device)
    P = torch.zeros_like(Bm)
    rz = torch.zeros(k, dtype=Bm.dtype, device=Bm.device)
    start = (~done).nonzero().squeeze(1)
    if start.numel():
        Z = precond(R[:, start]) if precond else R[:, start]
        rz[start] = _check_rz((R[:, start] * Z).sum(0), precond)
        P[:, start] = Z

    for it in range(1, max_iters + 1):
        active = (~done & ~negative).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        Pa = P[:, active]
        Qa = apply(Pa, f"cg iteration {it}")
        pq = (Pa * Qa).sum(0)
        bad = ~(pq > 0)
        if bool(bad.any()):
            column = int(active[bad][0])
            if on_negative_curvature == "raise":
                raise NegativeCurvatureError(
                    _negative_message(float(pq[bad][0]), column, it, delta, is_psd)
                )
            negative[active[bad]] = True
            keep = ~bad
            active, Pa, Qa, pq = active[keep], Pa[:, keep], Qa[:, keep], pq[keep]
            if active.numel() == 0:
                continue
        alpha = rz[active] / pq
        X[:, active] += alpha * Pa
        Ra = R[:, active] - alpha * Qa
        R[:, active] = Ra
        iterations[active] += 1
        res_a = Ra.norm(dim=0)
        res[active] = res_a
        finished = res_a <= threshold[active]
        done[active] = finished
        cont = ~finished
        if bool(cont.any()):
            idx = active[cont]
            Rc = Ra[:, cont]
            Zc = precond(Rc) if precond else Rc
            rz_new = _check_rz((Rc * Zc).sum(0), precond)
            beta = rz_new / rz[idx]
            P[:, idx] = Zc + beta * Pa[:, cont]
            rz[idx] = rz_new

    converged = bool(done.all())
    if warn and not converged and not bool(negative.any()):
        worst = float((res / rhs_norms.clamp_min(torch.finfo(res.dtype).tiny)).max())
        warnings.warn(
            f"cg did not converge within max_iters={max_iters}: "
            f"{int((~done).sum())} of {k} column(s) above tolerance, largest "
            f"relative residual {worst:.3e} (tol={tol}). Raise max_iters, add "
            "damping or use a preconditioner.",
            RuntimeWarning,
            stacklevel=2,
        )
    solution = X.squeeze(1) if B.ndim == 1 else X
    return CGResult(
        solution=solution,
        residual_norms=res,
        rhs_norms=rhs_norms,
        iterations=iterations,
        converged_columns=done,
        negative_curvature=negative,
        converged=converged,
        num_iters=int(iterations.max()) if k else 0,
        num_matvecs=A.num_matvecs,
    )


def _check_rz(rz: Tensor, precond) -> Tensor:
    if precond is not None and not bool((rz > 0).all()):
        raise ValueError(
            "The preconditioner must be symmetric positive definite: r^T M r = "
            f"{float(rz.min()):.3e} <= 0 for a residual r. Got a preconditioner "
            "that is not positive definite (check its damping)."
        )
    return rz


def _negative_message(pq: float, column: int, it: int, delta: float, is_psd: bool):
    kind = (
        "the operator declares is_psd=True, so this is rounding on a singular "
        "system: add damping"
        if is_psd
        else "the operator is indefinite (e.g. a Hessian away from a minimum): add "
        "damping above the magnitude of its most negative eigenvalue, or use a "
        "PSD curvature (GGN, Fisher)"
    )
    return (
        f"CG met non-positive curvature p^T (A + damping I) p = {pq:.3e} in column "
        f"{column} at iteration {it}: expected A + damping I positive definite, "
        f"got damping={delta} and {kind}. Pass on_negative_curvature='stop' to get "
        "the iterate before this direction instead."
    )


# ------------------------------------------------------------------------ Neumann
def neumann(
    op,
    B: Tensor,
    damping: float = 0.0,
    *,
    scale: float | None = None,
    num_terms: int = 100,
    tol: float = 0.0,
    power_steps: int = 20,
) -> NeumannResult:
    r"""Approximate :math:`(A + \delta I)^{-1} B` by the truncated Neumann series.

    .. math::
        X_K = \alpha \sum_{j=0}^{K-1} v_j,\quad v_0 = B,\quad
        v_{j+1} = v_j - \alpha (A + \delta I) v_j,\quad
        B - (A + \delta I) X_K = v_K .

    Each term costs one product, and the residual of the partial sum is the next
    term, so column ``j`` stops as soon as :math:`\|v\| \le \mathrm{tol}
    \|b_j\|` (``tol=0``: always ``num_terms`` terms). The series converges iff
    :math:`0 < \alpha\lambda < 2` for every eigenvalue :math:`\lambda` of
    :math:`A + \delta I`, at the rate :math:`\max_\lambda |1 - \alpha\lambda|`
    per term, which is slow when :math:`\delta` and the small eigenvalues are
    small; prefer :func:`cg` for accuracy. Then every term is shorter than the
    one before; a term that grows by more than :math:`\sqrt{\epsilon}` of the
    dtype, or a NaN, raises :class:`NeumannDivergenceError`.

    Args:
        op: Symmetric ``(D, D)`` operator.
        B: ``(D,)`` or ``(D, k)`` right-hand sides.
        damping: :math:`\delta \ge 0`.
        scale: :math:`\alpha > 0`. ``None`` takes :math:`1/\hat\lambda` with
            :math:`\hat\lambda` the Rayleigh quotient after ``power_steps``
            power iterations on :math:`A + \delta I` (that many extra products):
            it lies below :math:`\lambda_{\max}`, and once above
            :math:`\lambda_{\max}/2` the series converges.
        num_terms: ``K >= 1``, terms at most (one product each).
        tol: Relative residual at which a column stops, ``>= 0``.
        power_steps: Power iterations for the default scale.

    Returns:
        The approximation, residual norms, terms used and the scale.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``B`` has the wrong shape, dtype or device, or an argument
            is out of range.
        NeumannDivergenceError: If the series diverges for this scale and damping.
        FloatingPointError: If a product is not finite.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
        >>> b = torch.ones(3, dtype=torch.float64)
        >>> result = neumann(A, b, scale=0.4, num_terms=200, tol=1e-12)
        >>> torch.allclose(result.solution, b / A.diagonal()), result.converged
        (True, True)
    """
    A = symmetric_operator(op)
    delta = check_damping(damping)
    Bm = check_rhs(B, A)
    num_terms = _check_count("num_terms", num_terms, 1)
    tol = check_nonneg("tol", tol)
    power_steps = _check_count("power_steps", power_steps, 1)

    def apply(V: Tensor, step: str) -> Tensor:
        out = A.apply(V, step=step)
        return out + delta * V if delta else out

    if scale is None:
        top = _rayleigh_max(apply, A, power_steps)
        if not top > 0:
            raise NeumannDivergenceError(
                "The Neumann series needs A + damping I positive definite; power "
                f"iteration found the Rayleigh quotient {top:.3e} <= 0. Add damping."
            )
        scale = 1.0 / top
    scale = check_nonneg("scale", scale)
    if scale == 0:
        raise ValueError("scale must be > 0. Got 0.0.")

    k = Bm.shape[1]
    V = Bm.clone()
    X = scale * V
    rhs_norms = Bm.norm(dim=0)
    prev = rhs_norms.clone()
    res = rhs_norms.clone()
    terms = torch.ones(k, dtype=torch.long, device=Bm.device)
    done = rhs_norms == 0
    slack = 1.0 + math.sqrt(torch.finfo(Bm.dtype).eps)
    for j in range(1, num_terms + 1):
        active = (~done).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        Va = V[:, active]
        Va = Va - scale * apply(Va, f"neumann term {j}")
        norms = Va.norm(dim=0)
        growing = ~(norms <= prev[active] * slack)
        if bool(growing.any()):
            column = int(active[growing][0])
            raise NeumannDivergenceError(
                f"The Neumann series diverges: term {j} of column {column} has norm "
                f"{float(norms[growing][0]):.3e}, above the previous term's "
                f"{float(prev[column]):.3e}. It needs 0 < scale * lambda < 2 for "
                f"every eigenvalue lambda of A + damping I; got scale={scale:.3e}, "
                f"damping={delta}. Lower the scale (below 2 / lambda_max) or add "
                "damping if A is indefinite."
            )
        V[:, active] = Va
        res[active] = norms
        prev[active] = norms
        stop = norms <= tol * rhs_norms[active]
        done[active] = stop
        grow = active[~stop]
        if j < num_terms and grow.numel():
            X[:, grow] += scale * V[:, grow]
            terms[grow] += 1
    converged_columns = res <= tol * rhs_norms
    solution = X.squeeze(1) if B.ndim == 1 else X
    return NeumannResult(
        solution=solution,
        residual_norms=res,
        rhs_norms=rhs_norms,
        num_terms=terms,
        converged_columns=converged_columns,
        converged=bool(converged_columns.all()),
        scale=float(scale),
        num_matvecs=A.num_matvecs,
    )


def _rayleigh_max(apply, A: CountedOperator, steps: int) -> float:
    """Rayleigh quotient after ``steps`` power iterations from a seeded start."""
    from curvlab.linalg._random import gaussian, generator

    v = gaussian((A.dim, 1), generator(0), dtype=A.dtype, device=A.device)
    v = v / v.norm()
    quotient = 0.0
    for step in range(steps):
        w = apply(v, f"neumann scale estimate {step + 1}")
        quotient = float((v * w).sum())
        norm = w.norm()
        if not norm > 0:
            break
        v = w / norm
    return quotient

r"""A-posteriori error certificates and scree bounds for low-rank approximations.

**Error estimate** (Tropp, Yurtsever, Udell & Cevher 2019, §6; skerch's
``a_posteriori.py``). For any approximation :math:`\hat A` of :math:`A`
(``m x n``) and ``p`` independent standard Gaussian probes
:math:`\omega_j \in \mathbb{R}^n`, drawn independently of :math:`\hat A`,

.. math::

    \widehat{\mathrm{err}}^2 = \frac1p \sum_{j=1}^{p} \|(A - \hat A)\omega_j\|^2,
    \qquad \mathbb{E}\, \widehat{\mathrm{err}}^2 = \|A - \hat A\|_F^2,

and the same average of :math:`\|A \omega_j\|^2` estimates :math:`\|A\|_F^2`
(Hutchinson's estimator of :math:`\operatorname{tr}(E^\top E)`). The cost is ``p``
products with :math:`A`. For real Gaussian probes and any :math:`\varepsilon > 0`
(TYUC2019 §6.4, the formulas skerch's ``apost_error_bounds`` implements):

.. math::

    \mathbb{P}\big[\widehat{\mathrm{err}}^2 \le (1 - \varepsilon)\,
    \|A - \hat A\|_F^2\big] \le \big[e^{\varepsilon} (1 - \varepsilon)\big]^{p/2},
    \qquad
    \mathbb{P}\big[\widehat{\mathrm{err}}^2 \ge (1 + \varepsilon)\,
    \|A - \hat A\|_F^2\big] \le \big[e^{-\varepsilon} (1 + \varepsilon)\big]^{p/2}

(the first is 0 for :math:`\varepsilon \ge 1`). For ``p = 30``: 0.568 / 0.668 at
:math:`\varepsilon = 0.25`, 0.0552 / 0.2422 at 0.5, 0 / 0.0100 at 1. The bounds do
not depend on the dimension.

**Scree bounds** (TYUC2019 §6.5). The scree curve
:math:`\mathrm{scree}(r) = \|A - [\![A]\!]_r\|_F^2 / \|A\|_F^2` (energy left
after the best rank-``r`` approximation) tells which rank suffices. With the
tail energies of the approximation's values :math:`\lambda_i` (by magnitude),
:math:`t_r = (\sum_{i > r} \lambda_i^2)^{1/2}`,

.. math::

    \mathrm{lower}(r) = \Big(\frac{t_r}{\|A\|_F}\Big)^2, \qquad
    \mathrm{upper}(r) = \Big(\frac{t_r + \|A - \hat A\|_F}{\|A\|_F}\Big)^2.

The upper bound holds whenever the error is exact:
:math:`\|A - [\![A]\!]_r\|_F \le \|A - [\![\hat A]\!]_r\|_F \le \|A - \hat A\|_F
+ t_r`. The lower one is TYUC2019's proxy (the sketch's own tail), not a
guarantee. :func:`a_posteriori_error` normalises by the *estimated*
:math:`\|A\|_F` from the same probes (papers' convention); skerch divides by
:math:`\|\hat A\|_F`, so its lower curve starts at 1.

References:
    - Tropp, Yurtsever, Udell & Cevher (2019). Streaming low-rank matrix
      approximation with an application to scientific simulation. SIAM J. Sci.
      Comput. 41(4) (arXiv 1902.08651), §6.
    - Martinsson & Tropp (2020). Randomized numerical linear algebra:
      foundations and algorithms. Acta Numerica 29 (trace and norm estimation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from curvlab.linalg.sketch import LinearMap, SketchedEigh, SketchedSVD
from curvlab.linalg.ssrft import GaussianTestMatrix

__all__ = [
    "APosterioriError",
    "a_posteriori_bounds",
    "a_posteriori_error",
    "scree_bounds",
]

#: Stream number of the probes: sketches use 0-2, so a probe stream never
#: coincides with a sketch stream, even under the same seed.
PROBE_ROLE = 0xA905

#: Margins at which :func:`a_posteriori_error` reports the probability bounds.
DEFAULT_EPSILONS = (0.1, 0.25, 0.5, 1.0)


def a_posteriori_bounds(num_probes: int, epsilon: float) -> tuple[float, float]:
    r"""Probabilities that the error estimate is off by a factor ``1 ± ε``.

    Args:
        num_probes: ``p >= 1`` Gaussian probes.
        epsilon: Relative margin ``ε > 0``.

    Returns:
        ``(under, over)``: bounds on
        :math:`\mathbb{P}[\widehat{\mathrm{err}}^2 \le (1-\varepsilon)
        \mathrm{err}^2]`, namely :math:`[e^\varepsilon (1-\varepsilon)]^{p/2}`
        (0 for :math:`\varepsilon \ge 1`), and on
        :math:`\mathbb{P}[\widehat{\mathrm{err}}^2 \ge (1+\varepsilon)
        \mathrm{err}^2]`, namely :math:`[e^{-\varepsilon}(1+\varepsilon)]^{p/2}`
        (TYUC2019 §6.4).

    Raises:
        ValueError: If ``num_probes < 1`` or ``epsilon <= 0``.
        TypeError: If ``num_probes`` is not an int.

    Example:
        >>> [round(b, 4) for b in a_posteriori_bounds(30, 0.5)]
        [0.0552, 0.2422]
    """
    if isinstance(num_probes, bool) or not isinstance(num_probes, int):
        raise TypeError(f"num_probes must be an int. Got {type(num_probes).__name__}.")
    if num_probes < 1:
        raise ValueError(f"num_probes must be at least 1. Got {num_probes}.")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive. Got {epsilon}.")
    half = num_probes / 2
    under = (math.exp(epsilon) * (1 - epsilon)) ** half if epsilon < 1 else 0.0
    over = (math.exp(-epsilon) * (1 + epsilon)) ** half
    return under, over


def scree_bounds(values: Tensor, error: float, norm: float) -> tuple[Tensor, Tensor]:
    r"""Lower and upper scree bounds for ranks ``0..k`` (TYUC2019 §6.5).

    Args:
        values: ``(k,)`` eigenvalues or singular values of the approximation, by
            descending magnitude.
        error: :math:`\|A - \hat A\|_F` (not squared), e.g. from
            :func:`a_posteriori_error`.
        norm: :math:`\|A\|_F` (not squared), exact or estimated.

    Returns:
        ``(lower, upper)``, each ``(k + 1,)``: entry ``r`` bounds
        :math:`\|A - [\![A]\!]_r\|_F^2 / \|A\|_F^2` (module docstring).

    Raises:
        ValueError: If ``values`` is not a vector sorted by descending magnitude,
            ``error < 0`` or ``norm <= 0``.

    Example:
        >>> values = torch.tensor([2.0, 1.0], dtype=torch.float64)
        >>> lo, hi = scree_bounds(values, 1.0, 5**0.5)
        >>> [round(x, 6) for x in lo.tolist()], [round(x, 6) for x in hi.tolist()]
        ([1.0, 0.2, 0.0], [2.094427, 0.8, 0.2])
    """
    if values.ndim != 1:
        raise ValueError(f"values must be a vector. Got shape {tuple(values.shape)}.")
    mags = values.abs()
    if bool((mags[1:] > mags[:-1]).any()):
        raise ValueError("values must be sorted by descending magnitude.")
    if error < 0:
        raise ValueError(f"error must be non-negative. Got {error}.")
    if not norm > 0:
        raise ValueError(f"norm must be positive. Got {norm}.")
    squares = torch.cat([mags**2, mags.new_zeros(1)])
    tails = squares.flip(0).cumsum(0).flip(0).clamp(min=0).sqrt()
    return (tails / norm) ** 2, ((tails + error) / norm) ** 2


@dataclass(frozen=True)
class APosterioriError:
    r"""An a-posteriori certificate for :math:`\hat A \approx A`.

    Attributes:
        error_sq: Estimate of :math:`\|A - \hat A\|_F^2`.
        error: Its square root.
        op_norm_sq: Estimate of :math:`\|A\|_F^2` from the same probes.
        approx_norm_sq: :math:`\|\hat A\|_F^2`, exact.
        relative_error: ``error / sqrt(op_norm_sq)``.
        samples: ``(p,)`` per-probe :math:`\|(A - \hat A)\omega_j\|^2`.
        bounds: ``(ε, P[under], P[over])`` for ``ε`` in ``epsilons``
            (:func:`a_posteriori_bounds`).
        scree_lower: ``(k + 1,)`` lower scree bounds, normalised by the estimated
            :math:`\|A\|_F` (:func:`scree_bounds`).
        scree_upper: ``(k + 1,)`` upper scree bounds.
        num_probes: ``p``.
        num_matvecs: Products with the operator (``p``).
        seed: Seed of the probes.
    """

    error_sq: float
    error: float
    op_norm_sq: float
    approx_norm_sq: float
    relative_error: float
    samples: Tensor
    bounds: tuple[tuple[float, float, float], ...]
    scree_lower: Tensor
    scree_upper: Tensor
    num_probes: int
    num_matvecs: int
    seed: int


def _pair(approx) -> tuple[Tensor, Tensor]:
    """``(values, vectors)`` of an eigendecomposition, by descending magnitude."""
    if isinstance(approx, SketchedEigh):
        values, vectors = approx.eigenvalues, approx.eigenvectors
    elif isinstance(approx, tuple | list) and len(approx) == 2:
        values, vectors = approx
    elif hasattr(approx, "eigenvalues") and hasattr(approx, "eigenvectors"):
        values, vectors = approx.eigenvalues, approx.eigenvectors
    elif hasattr(approx, "eigvals") and hasattr(approx, "eigvecs"):
        values, vectors = approx.eigvals, approx.eigvecs
    else:
        raise TypeError(
            "approx must be a SketchedEigh, a SketchedSVD, an (eigenvalues, "
            "eigenvectors) pair or have those attributes. Got "
            f"{type(approx).__name__}."
        )
    if not (
        isinstance(values, Tensor)
        and isinstance(vectors, Tensor)
        and values.ndim == 1
        and vectors.ndim == 2
        and vectors.shape[1] == len(values)
    ):
        raise ValueError(
            "approx needs eigenvalues (k,) and eigenvectors (D, k). Got "
            f"{tuple(getattr(values, 'shape', ()))} and "
            f"{tuple(getattr(vectors, 'shape', ()))}."
        )
    order = torch.argsort(values.abs(), descending=True, stable=True)
    return values[order], vectors[:, order]


def _low_rank(approx):
    """``(values, apply, norm_sq, shape)`` of a decomposition.

    ``norm_sq`` is the exact squared Frobenius norm, also for vectors that are
    not orthonormal (through their Gram matrices).
    """
    if isinstance(approx, SketchedSVD):
        U, S, V = approx.U, approx.S, approx.V
        gram = ((U.mT @ U) * S) @ ((V.mT @ V) * S).mT
        return S, approx.__matmul__, float(gram.diagonal().sum()), (len(U), len(V))
    values, vectors = _pair(approx)

    def apply(X):
        return vectors @ (values[:, None] * (vectors.mT @ X))

    G = (vectors.mT @ vectors) * values
    return values, apply, float((G * G.mT).sum()), (len(vectors), len(vectors))


def a_posteriori_error(
    op,
    approx,
    *,
    num_probes: int = 30,
    seed: int = 0,
    rank: int | None = None,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
) -> APosterioriError:
    r"""Estimate :math:`\|A - \hat A\|_F` with Gaussian probes, with its bounds.

    The probes come from the stream ``(seed, PROBE_ROLE)``, which no sketch
    uses, so they are independent of the sketch even under the same ``seed``
    (the estimate is unbiased only if they are).

    Args:
        op: The operator :math:`A` (square, or ``(m, n)`` for an SVD).
        approx: :class:`~curvlab.linalg.SketchedEigh`,
            :class:`~curvlab.linalg.SketchedSVD`, an ``(eigenvalues,
            eigenvectors)`` pair, or an object with ``eigenvalues``/``eigenvectors``
            (or ``eigvals``/``eigvecs``) attributes.
        num_probes: ``p``, Gaussian probes and products with ``op`` (default 30,
            as in TYUC2019 and the SEIGH paper).
        seed: Non-negative seed of the probes.
        rank: Certify the truncation of ``approx`` to its ``rank`` leading
            pairs/triplets instead (default: all).
        epsilons: Margins at which to report the probability bounds.

    Returns:
        The certificate.

    Raises:
        ValueError: If ``num_probes < 1``, ``rank`` is out of range or the shapes
            of ``op`` and ``approx`` differ.
        TypeError: If ``approx`` or ``op`` is of an unsupported type.
        FloatingPointError: If a product with ``op`` is NaN or Inf.

    Example:
        >>> from curvlab.linalg import sketched_eigh, synthetic
        >>> A, _ = synthetic.polynomial_decay(100, 5, seed=0)
        >>> cert = a_posteriori_error(A, sketched_eigh(A, 10))
        >>> exact = float(torch.linalg.matrix_norm(A - sketched_eigh(A, 10).to_dense()))
        >>> 0.5 < cert.error / exact < 1.5
        True
    """
    if isinstance(num_probes, bool) or not isinstance(num_probes, int):
        raise TypeError(f"num_probes must be an int. Got {type(num_probes).__name__}.")
    if num_probes < 1:
        raise ValueError(f"num_probes must be at least 1. Got {num_probes}.")
    if rank is not None:
        if isinstance(approx, SketchedEigh | SketchedSVD):
            approx = approx.truncate(rank)
        else:
            approx = _truncate_pair(_pair(approx), rank)
    values, apply, approx_norm_sq, shape = _low_rank(approx)
    counted = LinearMap(op, what="op")
    if counted.shape != shape:
        raise ValueError(f"op has shape {counted.shape}, the approximation {shape}.")
    probes = GaussianTestMatrix(
        shape[1],
        num_probes,
        seed=seed,
        role=PROBE_ROLE,
        dtype=counted.dtype,
        device=counted.device,
    ).to_dense()
    AX = counted.apply(probes, "a-posteriori probes")
    approx_X = apply(probes.to(values))
    samples = ((AX - approx_X.to(AX)) ** 2).sum(0)
    op_norm_sq = float((AX**2).sum(0).mean())
    error_sq = float(samples.mean())
    error = math.sqrt(error_sq)
    norm = math.sqrt(op_norm_sq)
    lower, upper = scree_bounds(values.detach(), error, norm if norm > 0 else 1.0)
    bounds = tuple((float(e), *a_posteriori_bounds(num_probes, e)) for e in epsilons)
    return APosterioriError(
        error_sq=error_sq,
        error=error,
        op_norm_sq=op_norm_sq,
        approx_norm_sq=approx_norm_sq,
        relative_error=error / norm if norm > 0 else math.inf,
        samples=samples,
        bounds=bounds,
        scree_lower=lower,
        scree_upper=upper,
        num_probes=num_probes,
        num_matvecs=counted.num_matvecs,
        seed=seed,
    )


def _truncate_pair(pair, rank: int):
    values, vectors = pair
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int. Got {type(rank).__name__}.")
    if not 1 <= rank <= len(values):
        raise ValueError(f"rank must lie in [1, {len(values)}]. Got {rank}.")
    return values[:rank], vectors[:, :rank]

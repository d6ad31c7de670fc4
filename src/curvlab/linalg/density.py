r"""Spectral density by stochastic Lanczos quadrature (SLQ).

The spectral density of a symmetric :math:`A` with eigenpairs
:math:`(\lambda_k, u_k)` is :math:`\phi(t) = \frac1D \sum_k \delta(t - \lambda_k)`.
For a unit probe :math:`v`, :math:`v^\top f(A) v = \sum_k (u_k^\top v)^2
f(\lambda_k)` is a Riemann--Stieltjes integral against a measure whose weights have
mean :math:`1/D` (for Rademacher or normalised Gaussian :math:`v`), so
:math:`\mathbb E[v^\top f(A) v] = \int f\,\phi`. Gauss quadrature approximates that
integral with :math:`m` nodes (Golub & Meurant): run :math:`m` Lanczos steps from
:math:`v`, take the tridiagonal :math:`T_m = Y \Theta Y^\top`; the nodes are the
Ritz values :math:`\theta_j` and the weights :math:`\tau_j = Y_{1j}^2` (they sum to
one), and

.. math::

    v^\top f(A) v \approx \sum_{j=1}^m \tau_j f(\theta_j),

exact for polynomials :math:`f` of degree :math:`\le 2m - 1`. Averaging over
``num_probes`` probes gives the SLQ density :math:`\hat\phi = \frac{1}{n_v}
\sum_{l} \sum_j \tau_{lj}\, \delta_{\theta_{lj}}`, smoothed with a Gaussian kernel
for plotting (Ubaru, Chen & Saad 2017; Papyan 2018, 2019; Ghorbani, Krishnan & Xiao
2019; PyHessian, Yao et al. 2020).

Implementation notes:

- **Blocked.** The ``num_probes`` Lanczos runs advance together: one product
  ``op @ V`` with ``V`` of shape ``(D, num_probes)`` per step, so batched curvature
  products serve all probes at once. Each column is reorthogonalised against its own
  basis only (full reorthogonalisation, classical Gram--Schmidt applied twice), as
  PyHessian does for its single probe. Memory: the bases, ``num_probes *
  num_steps * D`` numbers.
- **Breakdown.** When a probe's Krylov space is exhausted (:math:`\beta_j \le
  10\sqrt D\,\epsilon \max_{i \le j}\|Av_i\|`, e.g. on a matrix of rank below
  ``num_steps``), that probe stops: its nodes are the exact eigenvalues that its
  start vector sees and its quadrature is exact for every :math:`f`. Its row of
  ``nodes``/``weights`` is padded with weight 0 (and a copy of its last node), and
  ``num_nodes`` records the valid count; it costs no further products. PyHessian
  restarts from a random vector instead, which adds nodes of weight zero and
  changes nothing but the cost.
- **Smoothing.** ``density`` is :math:`\frac{1}{n_v}\sum_{l,j} \tau_{lj}\,
  \mathcal N(t; \theta_{lj}, \sigma^2)` on ``grid``. PyHessian's
  ``density_plot.density_generate`` uses 10,000 points over :math:`[\bar\theta_{\min}
  - 0.01, \bar\theta_{\max} + 0.01]` (means over probes of the extreme nodes) and a
  kernel *variance* :math:`\sigma^2 = 10^{-5}\max(1, \lambda_{\max} -
  \lambda_{\min})` (its code passes this variance as an argument named ``sigma``),
  then rescales the density so that its Riemann sum is one. Here the default kernel
  is the same, :math:`\sigma = \sqrt{10^{-5}\max(1, \theta_{\max} - \theta_{\min})}`
  (``kernel_width`` is the standard deviation :math:`\sigma`), the default grid has
  10,000 points over :math:`[\theta_{\min} - 5\sigma, \theta_{\max} + 5\sigma]`
  (all nodes of all probes) and the density is *not* rescaled, so that its integral
  over the grid is one up to quadrature error; the grid spacing must stay below
  about :math:`\sigma` for that (true by default up to a spectral range of
  :math:`10^3`; pass more points or a wider kernel beyond).
- **Log grid** (``grid_kind="log"``), for spectra spanning decades as Papyan and
  Ghorbani et al. plot them: nodes are mapped to :math:`u = \log_{10}|\theta|`
  (magnitudes below ``log_floor`` are raised to it; zero counts as positive), and
  the density of :math:`u` is smoothed with a Gaussian of width ``kernel_width``
  decades *separately for the positive and the negative nodes*. The returned grid is
  signed, :math:`[-10^{u_G}, \dots, -10^{u_1}, 10^{u_1}, \dots, 10^{u_G}]` ascending;
  ``density`` at a point :math:`t` is the density, with respect to
  :math:`\log_{10}|t|`, of the nodes with the sign of :math:`t`, so that the two
  halves integrated over :math:`\log_{10}|t|` add up to one.

References:
    - Golub, G. H., & Meurant, G. (2010). Matrices, Moments and Quadrature with
      Applications. Princeton University Press.
    - Ubaru, S., Chen, J., & Saad, Y. (2017). Fast estimation of tr(f(A)) via
      stochastic Lanczos quadrature. SIAM Journal on Matrix Analysis and
      Applications.
    - Papyan, V. (2018). The full spectrum of deepnet Hessians at scale: dynamics
      with SGD training and sample size. arXiv:1811.07062. Papyan, V. (2019).
      Measurements of three-level hierarchical structure in the outliers in the
      spectrum of deepnet Hessians. ICML.
    - Ghorbani, B., Krishnan, S., & Xiao, Y. (2019). An investigation into neural
      net optimization via Hessian eigenvalue density. ICML.
    - Yao, Z., Gholami, A., Keutzer, K., & Mahoney, M. W. (2020). PyHessian: Neural
      networks through the lens of the Hessian. IEEE BigData.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from curvlab._checks import check_int
from curvlab.linalg._operator import CountedOperator
from curvlab.linalg.trace import _check_distribution, _ProbeStream

__all__ = ["SpectralDensity", "spectral_density"]

#: PyHessian's kernel variance factor: sigma^2 = 1e-5 * max(1, spectral range).
_PYHESSIAN_VARIANCE = 1e-5
#: Default grid: points, and padding in kernel widths beyond the extreme nodes.
_GRID_POINTS = 10_000
_GRID_PAD = 5.0
#: Default log floor, relative to the largest node magnitude.
_LOG_FLOOR = 1e-10
#: Grid points per chunk when evaluating the kernel sum (bounds memory).
_CHUNK = 2048


@dataclass(frozen=True)
class SpectralDensity:
    r"""A stochastic Lanczos quadrature of a spectral density.

    Attributes:
        nodes: ``(num_probes, m)`` Ritz values :math:`\theta_{lj}` of each probe,
            ascending; entries beyond ``num_nodes[l]`` repeat the last valid node.
        weights: ``(num_probes, m)`` quadrature weights :math:`\tau_{lj}`; each row
            sums to one, padded entries are zero. The density averages the rows.
        num_nodes: ``(num_probes,)`` valid nodes per probe (the Lanczos steps run;
            fewer than ``m`` after a breakdown).
        grid: Points where ``density`` is evaluated (signed; see the module
            docstring for ``grid_kind="log"``).
        density: The smoothed density on ``grid``.
        kernel_width: Standard deviation of the Gaussian kernel (in eigenvalue
            units, or decades for the log grid).
        grid_kind: ``"linear"`` or ``"log"``.
        log_floor: Smallest magnitude resolved on the log grid (``None`` for the
            linear grid).
        dim: ``D``.
        num_matvecs: Products spent.

    ``nodes``, ``weights``, ``grid`` and ``density`` are float64 on the CPU (the
    tridiagonal eigenproblems and the smoothing are tiny); the Lanczos runs on the
    operator's device and dtype.
    """

    nodes: Tensor
    weights: Tensor
    num_nodes: Tensor
    grid: Tensor
    density: Tensor
    kernel_width: float
    grid_kind: str
    log_floor: float | None
    dim: int
    num_matvecs: int

    @property
    def num_probes(self) -> int:
        """Number of probes (rows of ``nodes``)."""
        return self.nodes.shape[0]

    def moment(self, p: int) -> float:
        r"""Quadrature estimate of the ``p``-th spectral moment.

        .. math::

            \int t^p\,\phi(t)\,dt = \frac1D \operatorname{tr}(A^p) \approx
            \frac{1}{n_v} \sum_l \sum_j \tau_{lj}\,\theta_{lj}^p.

        For each probe the inner sum equals :math:`v_l^\top A^p v_l` exactly (up to
        rounding) for :math:`p \le 2\,\mathrm{num\_nodes}_l - 1`, or for every
        :math:`p` after a breakdown.

        Args:
            p: Non-negative integer power.

        Returns:
            The estimate.

        Raises:
            ValueError: If ``p`` is not a non-negative int.
        """
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ValueError(f"p must be a non-negative int. Got {p!r}.")
        return float((self.weights * self.nodes**p).sum(1).mean())

    def trace_estimate(self) -> float:
        r"""Estimate of :math:`\operatorname{tr}(A) = D \int t\,\phi(t)\,dt`.

        With Rademacher probes this is Hutchinson's estimate with the same probes.

        Returns:
            ``D * moment(1)``.
        """
        return self.dim * self.moment(1)

    def mass(self, low: float, high: float) -> float:
        """Quadrature weight of the nodes in ``[low, high]``, averaged over probes.

        Args:
            low: Lower end.
            high: Upper end.

        Returns:
            The estimated fraction of eigenvalues in ``[low, high]``.
        """
        inside = (self.nodes >= low) & (self.nodes <= high)
        return float((self.weights * inside).sum(1).mean())

    def smooth(
        self,
        *,
        grid: int | Tensor = _GRID_POINTS,
        kernel_width: float | None = None,
        grid_kind: str = "linear",
        log_floor: float | None = None,
    ) -> SpectralDensity:
        """Re-smooth the same quadrature on another grid or with another kernel.

        Args:
            grid: Number of grid points (per sign for the log grid) or the points.
            kernel_width: Kernel standard deviation (default: PyHessian's rule).
            grid_kind: ``"linear"`` or ``"log"``.
            log_floor: Smallest magnitude for the log grid.

        Returns:
            A copy with new ``grid``, ``density`` and kernel settings.
        """
        grid_t, density, width, floor = _smooth(
            self.nodes, self.weights, grid, kernel_width, grid_kind, log_floor
        )
        return dataclasses.replace(
            self,
            grid=grid_t,
            density=density,
            kernel_width=width,
            grid_kind=grid_kind,
            log_floor=floor,
        )


def spectral_density(
    op,
    *,
    num_probes: int = 1,
    num_steps: int = 100,
    grid: int | Tensor = _GRID_POINTS,
    kernel_width: float | None = None,
    grid_kind: str = "linear",
    log_floor: float | None = None,
    distribution: str = "rademacher",
    seed: int | torch.Generator = 0,
) -> SpectralDensity:
    r"""Estimate the spectral density of a symmetric operator by SLQ.

    See the module docstring for the method, breakdowns, the kernel and the grids.
    The defaults are PyHessian's (``density(iter=100, n_v=1)``, Rademacher probes
    normalised to unit length, kernel variance :math:`10^{-5}\max(1,
    \text{range})`, 10,000 grid points).

    Args:
        op: Symmetric square operator ``(D, D)``: a
            :class:`~curvlab.operators.CurvatureOperator`, a tensor, or any object
            with ``shape``, ``dtype``, ``device`` and ``@``.
        num_probes: Number of probes (Lanczos runs, advanced together), ``>= 1``.
        num_steps: Lanczos steps per probe, ``>= 1`` (at most ``D`` are run).
        grid: Number of grid points (per sign for the log grid), or a 1-D tensor of
            points (non-zero for the log grid).
        kernel_width: Standard deviation of the Gaussian kernel (decades for the log
            grid); default :math:`\sqrt{10^{-5}\max(1, \text{range})}` with the range
            of the nodes (of their :math:`\log_{10}` magnitudes for the log grid).
        grid_kind: ``"linear"`` or ``"log"``.
        log_floor: Smallest magnitude on the log grid (default ``1e-10`` times the
            largest node magnitude).
        distribution: ``"rademacher"`` or ``"normal"`` entries; probes are
            normalised to unit length.
        seed: Seed; probe ``l`` comes from stream ``(seed, 0, l)``.

    Returns:
        Nodes, weights, the smoothed density and ``num_matvecs`` (the sum of the
        probes' Lanczos steps).

    Raises:
        TypeError: If ``op`` is not an operator or a count is not an int.
        ValueError: If ``op`` declares itself non-symmetric, or an argument is out
            of range.
        FloatingPointError: If a product is not finite.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([1.0] * 50 + [5.0] * 50, dtype=torch.float64))
        >>> sd = spectral_density(A, num_probes=4, num_steps=10)
        >>> round(sd.trace_estimate(), 6)  # Rademacher probes: exact on a diagonal
        300.0
        >>> round(sd.mass(0.5, 1.5) + sd.mass(4.5, 5.5), 6)
        1.0
    """
    A = CountedOperator(op, symmetric=True)
    check_int("num_probes", num_probes, 1)
    check_int("num_steps", num_steps, 1)
    _check_distribution(distribution, ("rademacher", "normal"))
    _check_grid(grid, grid_kind, kernel_width, log_floor)
    probes = _ProbeStream(
        distribution, A.dim, seed, 0, dtype=A.dtype, device=A.device
    ).draw(0, num_probes)
    alpha, beta, lengths = _block_lanczos(A, probes, min(num_steps, A.dim))
    nodes, weights = _gauss_quadrature(alpha, beta, lengths)
    grid_t, density, width, floor = _smooth(
        nodes, weights, grid, kernel_width, grid_kind, log_floor
    )
    return SpectralDensity(
        nodes=nodes,
        weights=weights,
        num_nodes=lengths,
        grid=grid_t,
        density=density,
        kernel_width=width,
        grid_kind=grid_kind,
        log_floor=floor,
        dim=A.dim,
        num_matvecs=A.num_matvecs,
    )


def _check_grid(grid, grid_kind, kernel_width, log_floor) -> None:
    if grid_kind not in ("linear", "log"):
        raise ValueError(f"grid_kind must be 'linear' or 'log'. Got {grid_kind!r}.")
    if isinstance(grid, Tensor):
        if grid.ndim != 1 or grid.numel() == 0:
            raise ValueError(
                f"grid must be a non-empty 1-D tensor. Got shape {tuple(grid.shape)}."
            )
        if grid_kind == "log" and bool((grid == 0).any()):
            raise ValueError("A log grid needs non-zero points. Got a zero.")
    else:
        check_int("grid", grid, 2)
    if kernel_width is not None and not kernel_width > 0:
        raise ValueError(f"kernel_width must be > 0. Got {kernel_width}.")
    if log_floor is not None and not log_floor > 0:
        raise ValueError(f"log_floor must be > 0. Got {log_floor}.")


def _block_lanczos(
    A: CountedOperator, V0: Tensor, num_steps: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Independent Lanczos runs from the columns of ``V0``, one product per step.

    Returns:
        ``alpha`` and ``beta`` ``(p, num_steps)`` (``beta[:, j]`` couples steps
        ``j`` and ``j + 1``), float64 on the CPU, and ``lengths`` ``(p,)`` int64.
    """
    D, p = V0.shape
    eps = torch.finfo(A.dtype).eps
    tol = 10 * math.sqrt(D) * eps
    basis = A.zeros(p, num_steps, D)  # basis[l, j] = j-th Lanczos vector of probe l
    alpha = A.zeros(p, num_steps)
    beta = A.zeros(p, num_steps)
    lengths = torch.full((p,), num_steps, dtype=torch.int64)
    active = torch.ones(p, dtype=torch.bool, device=A.device)
    scale = A.zeros(p)
    V = V0 / V0.norm(dim=0)
    V_prev, b_prev = torch.zeros_like(V), A.zeros(p)
    for j in range(num_steps):
        basis[:, j] = V.T
        step = f"Lanczos step {j + 1}"
        if bool(active.all()):
            W = A.apply(V, step=step)
        else:
            W = torch.zeros_like(V)
            W[:, active] = A.apply(V[:, active], step=step)
        scale = torch.maximum(scale, W.norm(dim=0))
        a = (V * W).sum(0)
        alpha[:, j] = a
        W = W - V * a - V_prev * b_prev
        Q = basis[:, : j + 1]  # (p, j + 1, D)
        for _ in range(2):  # full reorthogonalisation, each probe its own basis
            W = (
                W
                - torch.bmm(Q.transpose(1, 2), torch.bmm(Q, W.T[:, :, None]))[:, :, 0].T
            )
        b = W.norm(dim=0)
        beta[:, j] = b
        if j == num_steps - 1:
            break
        broke = active & (b <= tol * scale)
        lengths[broke.cpu()] = j + 1
        active = active & ~broke
        if not bool(active.any()):
            break
        keep = active.to(A.dtype)
        V_prev, b_prev = V * keep, b * keep
        V = W / torch.where(active, b, 1) * keep
    return alpha.double().cpu(), beta.double().cpu(), lengths


def _gauss_quadrature(
    alpha: Tensor, beta: Tensor, lengths: Tensor
) -> tuple[Tensor, Tensor]:
    """Nodes and weights of each probe's tridiagonal, padded to ``num_steps``."""
    p, m = alpha.shape
    nodes = torch.zeros(p, m, dtype=torch.float64)
    weights = torch.zeros(p, m, dtype=torch.float64)
    for l, n in enumerate(lengths.tolist()):  # noqa: E741
        T = torch.diag(alpha[l, :n])
        if n > 1:
            off = beta[l, : n - 1]
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        theta, Y = torch.linalg.eigh(T)
        nodes[l, :n] = theta
        nodes[l, n:] = theta[-1]
        weights[l, :n] = Y[0] ** 2
    return nodes, weights


def _smooth(nodes, weights, grid, kernel_width, grid_kind, log_floor):
    """Gaussian-kernel density of the quadrature on a grid (see module docstring).

    Returns:
        ``(grid, density, kernel_width, log_floor)``, float64 on the CPU.
    """
    _check_grid(grid, grid_kind, kernel_width, log_floor)
    w = weights.reshape(-1) / nodes.shape[0]
    theta = nodes.reshape(-1)
    used = w > 0
    if grid_kind == "linear":
        lo, hi = float(theta[used].min()), float(theta[used].max())
        width = kernel_width or math.sqrt(_PYHESSIAN_VARIANCE * max(1.0, hi - lo))
        if isinstance(grid, Tensor):
            points = grid.detach().to(dtype=torch.float64, device="cpu")
        else:
            pad = _GRID_PAD * width
            points = torch.linspace(lo - pad, hi + pad, grid, dtype=torch.float64)
        return points, _kernel_sum(points, theta, w, width), width, None

    magnitude = theta.abs()
    floor = log_floor or _LOG_FLOOR * float(magnitude[used].max())
    if floor == 0:  # all nodes are zero
        floor = torch.finfo(torch.float64).tiny
    u = magnitude.clamp_min(floor).log10()
    positive = theta >= 0
    lo, hi = float(u[used].min()), float(u[used].max())
    width = kernel_width or math.sqrt(_PYHESSIAN_VARIANCE * max(1.0, hi - lo))
    if isinstance(grid, Tensor):
        points = grid.detach().to(dtype=torch.float64, device="cpu")
        u_grid = points.abs().log10()
    else:
        u_side = torch.linspace(
            lo - _GRID_PAD * width, hi + _GRID_PAD * width, grid, dtype=torch.float64
        )
        u_grid = torch.cat([u_side.flip(0), u_side])
        points = torch.cat([-(10**u_side).flip(0), 10**u_side])
    density = torch.zeros_like(points)
    for side in (True, False):
        on_grid = (points > 0) == side
        on_nodes = positive == side
        density[on_grid] = _kernel_sum(u_grid[on_grid], u[on_nodes], w[on_nodes], width)
    return points, density, width, floor


def _kernel_sum(points: Tensor, centers: Tensor, w: Tensor, width: float) -> Tensor:
    """``sum_j w_j N(points; centers_j, width^2)``, in chunks of grid points."""
    out = torch.zeros_like(points)
    norm = 1.0 / (math.sqrt(2 * math.pi) * width)
    for start in range(0, points.numel(), _CHUNK):
        x = points[start : start + _CHUNK, None]
        out[start : start + _CHUNK] = (
            torch.exp(-0.5 * ((x - centers) / width) ** 2) @ w
        ) * norm
    return out

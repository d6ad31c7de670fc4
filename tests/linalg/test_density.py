"""Spectral density by stochastic Lanczos quadrature."""

import contextlib
import copy
import math
import warnings

import pytest
import torch

import curvlab as cl
from _truth import dense_hessian
from conftest import CASES, param_names
from curvlab.linalg import synthetic
from curvlab.linalg._random import gaussian, generator, rademacher
from curvlab.linalg.density import SpectralDensity, spectral_density
from curvlab.linalg.trace import hutchinson_trace

# Integral of the smoothed density by the trapezoid rule on the default grid: the
# grid reaches 5 kernel widths beyond the extreme nodes (Gaussian mass outside:
# 5.7e-7) and its spacing is far below the kernel width (the trapezoid rule on a
# Gaussian sampled at spacing h < sigma errs by < exp(-2 pi^2) ~ 3e-9).
INTEGRAL_TOL = 1e-5


def _probes(dim, num_probes, seed=0, distribution="rademacher"):
    """The documented probe stream: probe l from generator(seed, 0, l), normalised."""
    draw = rademacher if distribution == "rademacher" else gaussian
    V = torch.stack(
        [
            draw((dim,), generator(seed, 0, l), dtype=torch.float64, device="cpu")
            for l in range(num_probes)  # noqa: E741
        ],
        dim=1,
    )
    return V / V.norm(dim=0)


def _two_clusters(dim=120, seed=0):
    """Half the eigenvalues in [0.9, 1.1], half in [4.8, 5.2]."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.cat(
        [
            1 + 0.2 * (torch.rand(dim // 2, generator=g, dtype=torch.float64) - 0.5),
            5
            + 0.4
            * (torch.rand(dim - dim // 2, generator=g, dtype=torch.float64) - 0.5),
        ]
    )
    return synthetic.from_spectrum(lam, seed=seed)


# ---------------------------------------------------------------- quadrature
def test_weights_and_density_integrate_to_one():
    A, _ = synthetic.indefinite(100, 8, 0.7, seed=1)
    sd = spectral_density(A, num_probes=3, num_steps=25)
    torch.testing.assert_close(sd.weights.sum(1), torch.ones(3, dtype=torch.float64))
    assert float(torch.trapezoid(sd.density, sd.grid)) == pytest.approx(
        1.0, abs=INTEGRAL_TOL
    )
    assert sd.moment(0) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
def test_first_moment_is_each_probes_rayleigh_quotient(distribution):
    # Σ_j τ_j θ_j = e1^T T e1 = α_1 = v^T A v / v^T v, exactly for every probe
    A, _ = synthetic.indefinite(90, 6, 0.8, seed=2)
    sd = spectral_density(A, num_probes=4, num_steps=15, distribution=distribution)
    V = _probes(90, 4, distribution=distribution)
    rayleigh = (V * (A @ V)).sum(0)
    per_probe = (sd.weights * sd.nodes).sum(1)
    torch.testing.assert_close(per_probe, rayleigh, rtol=0, atol=1e-10)


def test_moments_exact_to_degree_2m_minus_1():
    # Gauss quadrature with m nodes integrates polynomials of degree <= 2m - 1
    A, _ = synthetic.indefinite(70, 10, 0.9, seed=3)
    m = 6
    sd = spectral_density(A, num_probes=2, num_steps=m)
    assert sd.num_nodes.tolist() == [m, m]
    V = _probes(70, 2)
    power = V
    for p in range(1, 2 * m + 1):
        power = A @ power
        exact = float((V * power).sum(0).mean())
        if p <= 2 * m - 1:
            assert sd.moment(p) == pytest.approx(exact, rel=1e-9, abs=1e-12), p
    assert abs(sd.moment(2 * m + 2) - float((V * (A @ power)).sum(0).mean())) > 1e-9


def test_trace_estimate_equals_hutchinson_with_the_same_probes():
    # Rademacher probes have ||z||² = D, so D v^T A v = z^T A z
    A, _ = synthetic.polynomial_decay(80, 4, 1.0, seed=4)
    sd = spectral_density(A, num_probes=5, num_steps=10, seed=7)
    assert sd.trace_estimate() == pytest.approx(
        hutchinson_trace(A, 5, seed=7).value, rel=1e-10
    )


def test_nodes_inside_the_spectrum():
    A, lam = synthetic.indefinite(100, 8, 0.7, seed=5)
    sd = spectral_density(A, num_probes=3, num_steps=40)
    assert float(sd.nodes.min()) >= float(lam.min()) - 1e-10
    assert float(sd.nodes.max()) <= float(lam.max()) + 1e-10
    # extreme Ritz values converge first: after 40 steps they match the extremes
    assert float(sd.nodes.max()) == pytest.approx(float(lam.max()), abs=1e-8)
    assert float(sd.nodes.min()) == pytest.approx(float(lam.min()), abs=1e-8)


def test_full_lanczos_recovers_the_eigenvalues():
    # D steps from a generic probe on distinct eigenvalues: the nodes are the
    # eigenvalues, the weights the squared components of the probe in the eigenbasis
    A, _ = synthetic.polynomial_decay(30, 1, 1.0, seed=6)
    sd = spectral_density(A, num_probes=1, num_steps=30, distribution="normal")
    assert sd.num_nodes.tolist() == [30]
    evals, U = torch.linalg.eigh(A)
    torch.testing.assert_close(sd.nodes[0], evals, rtol=0, atol=1e-10)
    v = _probes(30, 1, distribution="normal")[:, 0]
    torch.testing.assert_close(sd.weights[0], (U.T @ v) ** 2, rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------ the density
def test_density_puts_mass_on_the_clusters():
    A, _ = _two_clusters()
    sd = spectral_density(A, num_probes=8, num_steps=20)
    # half the eigenvalues in each cluster; the weight fractions of 8 probes of
    # D = 120 scatter by about sqrt(2 / D) / sqrt(8) ~ 0.05
    assert sd.mass(0.85, 1.15) == pytest.approx(0.5, abs=0.12)
    assert sd.mass(4.75, 5.25) == pytest.approx(0.5, abs=0.12)
    assert sd.mass(0.85, 1.15) + sd.mass(4.75, 5.25) == pytest.approx(1.0, abs=1e-9)
    between = (sd.grid > 1.5) & (sd.grid < 4.5)
    assert float(sd.density[between].max()) < 1e-6
    low = sd.grid < 3
    assert 0.85 < float(sd.grid[low][sd.density[low].argmax()]) < 1.15
    assert 4.75 < float(sd.grid[~low][sd.density[~low].argmax()]) < 5.25


def test_pyhessian_kernel_and_grid_defaults():
    A, _ = _two_clusters()
    sd = spectral_density(A, num_probes=2, num_steps=20)
    valid = sd.weights > 0
    lo, hi = float(sd.nodes[valid].min()), float(sd.nodes[valid].max())
    # PyHessian: variance 1e-5 * max(1, range); we report the standard deviation
    assert sd.kernel_width == pytest.approx(math.sqrt(1e-5 * max(1.0, hi - lo)))
    assert sd.grid.numel() == 10_000
    assert float(sd.grid[0]) == pytest.approx(lo - 5 * sd.kernel_width)
    assert float(sd.grid[-1]) == pytest.approx(hi + 5 * sd.kernel_width)


def test_custom_grid_kernel_and_resmoothing():
    A, _ = _two_clusters()
    grid = torch.linspace(-1, 7, 3001, dtype=torch.float64)
    sd = spectral_density(A, num_probes=3, num_steps=15, grid=grid, kernel_width=0.1)
    assert torch.equal(sd.grid, grid)
    assert sd.kernel_width == 0.1
    assert float(torch.trapezoid(sd.density, grid)) == pytest.approx(1.0, abs=1e-6)
    # re-smoothing the same quadrature equals computing it directly
    again = spectral_density(A, num_probes=3, num_steps=15).smooth(
        grid=grid, kernel_width=0.1
    )
    torch.testing.assert_close(again.density, sd.density)
    # the density is the kernel sum over nodes, averaged over probes
    x = grid[1500]
    expected = (
        sd.weights
        * torch.exp(-0.5 * ((x - sd.nodes) / 0.1) ** 2)
        / (0.1 * math.sqrt(2 * math.pi))
    ).sum() / 3
    assert float(sd.density[1500]) == pytest.approx(float(expected), rel=1e-12)


def test_log_grid():
    # alternating signs: 8 eigenvalues from 1 down to 0.7^7, the bulk at ±1e-3 0.7^8
    A, lam = synthetic.indefinite(100, 8, 0.7, seed=7)
    sd = spectral_density(A, num_probes=4, num_steps=30, grid_kind="log", grid=4000)
    G = sd.grid.numel() // 2
    assert bool((sd.grid[:G] < 0).all())
    assert bool((sd.grid[G:] > 0).all())
    assert bool((sd.grid.diff() > 0).all())
    u = sd.grid.abs().log10()
    negative = torch.trapezoid(sd.density[:G].flip(0), u[:G].flip(0))
    positive = torch.trapezoid(sd.density[G:], u[G:])
    assert float(negative + positive) == pytest.approx(1.0, abs=INTEGRAL_TOL)
    # each half carries the quadrature weight of the nodes of its sign
    assert float(positive) == pytest.approx(sd.mass(0, math.inf), abs=INTEGRAL_TOL)
    # half the eigenvalues are positive; 4 probes of D = 100 scatter by ~0.07
    assert float(positive) == pytest.approx(0.5, abs=0.2)
    # the bulk magnitude 1e-3 * 0.7^8 ~ 5.8e-5 is where the density peaks
    peak = float(sd.grid[G:][sd.density[G:].argmax()])
    assert peak == pytest.approx(1e-3 * 0.7**8, rel=0.05)
    assert sd.log_floor == pytest.approx(1e-10 * float(sd.nodes.abs().max()))


def test_log_grid_custom_points():
    A, _ = synthetic.indefinite(60, 4, 0.5, seed=8)
    grid = torch.tensor([-1.0, -1e-3, 1e-3, 1.0], dtype=torch.float64)
    sd = spectral_density(A, num_probes=2, num_steps=10, grid_kind="log", grid=grid)
    assert torch.equal(sd.grid, grid)
    assert sd.grid_kind == "log"
    with pytest.raises(ValueError, match="non-zero"):
        spectral_density(A, grid_kind="log", grid=torch.zeros(3, dtype=torch.float64))


# -------------------------------------------------------------------- breakdown
def test_breakdown_on_low_rank():
    # rank 6 with distinct eigenvalues: a probe's Krylov space has dimension 7
    # (range plus the probe's null-space part); the run stops there, exactly
    lam = torch.zeros(80, dtype=torch.float64)
    lam[:6] = torch.tensor([3.0, 2.0, 1.5, -1.0, 0.5, 0.25])
    A, _ = synthetic.from_spectrum(lam, seed=9)
    sd = spectral_density(A, num_probes=3, num_steps=30)
    assert sd.num_nodes.tolist() == [7, 7, 7]
    assert sd.num_matvecs == 21
    assert bool((sd.weights[:, 7:] == 0).all())
    V = _probes(80, 3)
    power = V
    for p in range(1, 25):  # exact for every degree after a breakdown
        power = A @ power
        exact = float((V * power).sum(0).mean())
        assert sd.moment(p) == pytest.approx(exact, rel=1e-10, abs=1e-12), p
    assert float(torch.trapezoid(sd.density, sd.grid)) == pytest.approx(
        1.0, abs=INTEGRAL_TOL
    )


def test_probes_run_as_one_block():
    calls = []

    class Recording:
        is_symmetric = True

        def __init__(self, A):
            self.A, self.shape, self.dtype, self.device = A, A.shape, A.dtype, A.device

        def __matmul__(self, X):
            calls.append(tuple(X.shape))
            return self.A @ X

    A, _ = synthetic.polynomial_decay(50, 1, 1.0, seed=1)  # distinct eigenvalues
    sd = spectral_density(Recording(A), num_probes=6, num_steps=12)
    assert calls == [(50, 6)] * 12
    assert sd.num_matvecs == 72


# ------------------------------------------------------------ reproducibility
def test_reproducible_by_seed():
    A, _ = synthetic.indefinite(40, 4, 0.5, seed=1)
    a = spectral_density(A, num_probes=2, num_steps=8, seed=3)
    b = spectral_density(A, num_probes=2, num_steps=8, seed=3)
    assert torch.equal(a.nodes, b.nodes)
    assert torch.equal(a.density, b.density)
    c = spectral_density(A, num_probes=2, num_steps=8, seed=4)
    assert not torch.equal(a.weights, c.weights)
    assert isinstance(a, SpectralDensity)
    assert a.num_probes == 2
    assert a.dim == 40


def test_bad_arguments():
    A, _ = synthetic.indefinite(20, 2, seed=0)
    with pytest.raises(ValueError, match="num_probes must be >= 1"):
        spectral_density(A, num_probes=0)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        spectral_density(A, num_steps=0)
    with pytest.raises(ValueError, match="grid_kind"):
        spectral_density(A, grid_kind="symlog")
    with pytest.raises(ValueError, match="distribution"):
        spectral_density(A, distribution="sphere")
    with pytest.raises(ValueError, match="kernel_width must be > 0"):
        spectral_density(A, kernel_width=0.0)
    with pytest.raises(ValueError, match="1-D"):
        spectral_density(A, grid=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="non-negative int"):
        spectral_density(A, num_steps=3).moment(-1)
    B = A.clone()
    B[0, 1] += 1
    with pytest.raises(ValueError, match="symmetric"):
        spectral_density(B)


def test_nan_operator():
    class NaNOperator:
        is_symmetric = True
        shape, dtype, device = (10, 10), torch.float64, torch.device("cpu")

        def __matmul__(self, X):
            return torch.full_like(X, float("nan"))

    with pytest.raises(FloatingPointError, match="Lanczos step 1"):
        spectral_density(NaNOperator())


# ------------------------------------------------------------ curvature operators
def test_on_hessian_operator():
    case = CASES[0]
    op = cl.HessianOperator(case.model, case.loss_fn, case.data)
    H = dense_hessian(case.model, case.loss_fn, case.data, param_names(case))
    D = H.shape[0]
    sd = spectral_density(op, num_probes=2, num_steps=D, distribution="normal")
    evals = torch.linalg.eigvalsh(H)
    assert float(sd.nodes.min()) >= float(evals.min()) - 1e-8
    assert float(sd.nodes.max()) <= float(evals.max()) + 1e-8
    V = _probes(D, 2, distribution="normal")
    torch.testing.assert_close(
        (sd.weights * sd.nodes).sum(1), (V * (H @ V)).sum(0), rtol=1e-8, atol=1e-12
    )
    # the extreme eigenvalues are nodes
    assert float(sd.nodes.max()) == pytest.approx(float(evals.max()), rel=1e-6)


# ---------------------------------------------------------------------- peers
@contextlib.contextmanager
def _pyhessian_context():
    """float64 default dtype and a stand-in for ``torch.eig``.

    PyHessian draws vectors with the default dtype and builds its tridiagonal with
    ``torch.eig(T, eigenvectors=True)``, removed from torch; the stand-in returns
    the old format (eigenvalues as (n, 2) real/imaginary pairs) from
    ``torch.linalg.eigh``, valid since ``T`` is symmetric.
    """

    def eig(T, eigenvectors=False):
        values, vectors = torch.linalg.eigh(T)
        return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

    old_dtype, old_eig = torch.get_default_dtype(), torch.eig
    torch.set_default_dtype(torch.float64)
    torch.eig = eig
    try:
        with warnings.catch_warnings():
            # PyHessian calls loss.backward(create_graph=True), which warns
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_default_dtype(old_dtype)
        torch.eig = old_eig


def test_matches_pyhessian_density():
    # same method (Rademacher SLQ, full reorthogonalisation): on the same Hessian,
    # both quadratures have weights summing to one, nodes inside the spectrum and
    # first and second moments that estimate tr(H)/D and tr(H²)/D; with 30 probes
    # each, both within 4.5 standard errors of the truth
    pyhessian = pytest.importorskip("pyhessian")
    case = CASES[0]
    X = torch.cat([x for x, _ in case.data])
    y = torch.cat([t for _, t in case.data])
    H = dense_hessian(case.model, case.loss_fn, [(X, y)], param_names(case))
    D = H.shape[0]
    evals = torch.linalg.eigvalsh(H)
    steps, probes = 8, 30
    with _pyhessian_context():
        hess = pyhessian.hessian(
            copy.deepcopy(case.model), case.loss_fn, data=(X, y), cuda=False
        )
        torch.manual_seed(0)
        their_nodes, their_weights = hess.density(iter=steps, n_v=probes)
    their_nodes = torch.tensor(their_nodes, dtype=torch.float64)
    their_weights = torch.tensor(their_weights, dtype=torch.float64)
    op = cl.HessianOperator(case.model, case.loss_fn, [(X, y)])
    ours = spectral_density(op, num_probes=probes, num_steps=steps)
    for nodes, weights in ((ours.nodes, ours.weights), (their_nodes, their_weights)):
        torch.testing.assert_close(
            weights.sum(1), torch.ones(probes, dtype=torch.float64)
        )
        assert float(nodes.min()) >= float(evals.min()) - 1e-8
        assert float(nodes.max()) <= float(evals.max()) + 1e-8
        for p, truth in ((1, float(H.trace()) / D), (2, float((H * H).sum()) / D)):
            per_probe = (weights * nodes**p).sum(1)
            se = float(per_probe.std()) / math.sqrt(probes)
            assert abs(float(per_probe.mean()) - truth) < 4.5 * se, p

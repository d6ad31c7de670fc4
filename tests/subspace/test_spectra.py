"""Layerwise versus full spectra, the GGN/residual split, and spectral distances."""

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from curvlab.operators import GGNOperator, HessianOperator, SumOperator
from curvlab.subspace.spectra import (
    BlockSpectrum,
    LayerwiseSpectra,
    block_operator,
    block_spectrum,
    default_blocks,
    density_wasserstein_1,
    ggn_residual_split,
    layerhessians_density,
    layerhessians_density_transform,
    layerhessians_match,
    layerwise_spectra,
    spectrum_distance,
    wasserstein_1,
)

RTOL = 1e-10


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    X = torch.randn(11, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (11,), generator=g)
    data = [(X[:6], y[:6]), (X[6:], y[6:])]
    return model, nn.CrossEntropyLoss(), data


@pytest.fixture(scope="module")
def hessian():
    model, loss_fn, data = _problem()
    return HessianOperator(model, loss_fn, data)


@pytest.fixture(scope="module")
def ggn(hessian):
    return GGNOperator(hessian.model, hessian.loss_fn, hessian.data)


def _slices(op):
    """Index range of every parameter in the flat vector."""
    out, start = {}, 0
    for name, shape in zip(op.param_names, op.param_shapes, strict=True):
        out[name] = range(start, start + shape.numel())
        start += shape.numel()
    return out


def _dense_block(dense, op, names):
    slices = _slices(op)
    index = torch.tensor([i for n in names for i in slices[n]])
    return dense[index][:, index]


def _close(got, want, rtol=RTOL):
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= rtol * scale, (got, want)


# ------------------------------------------------------------------ blocks
def test_default_blocks_group_bias_with_weight(hessian):
    assert default_blocks(hessian) == {
        "0": ["0.weight", "0.bias"],
        "2": ["2.weight", "2.bias"],
    }
    assert default_blocks(hessian, biases=False) == {
        "0.weight": ["0.weight"],
        "2.weight": ["2.weight"],
    }
    assert default_blocks(hessian - hessian) == default_blocks(hessian)


def test_layerwise_spectra_equal_eigvalsh_of_dense_blocks(hessian):
    dense = hessian.to_dense()
    blocks = {"first": ["0.weight", "0.bias"], "mixed": ["2.bias", "0.weight"]}
    spectra = layerwise_spectra(hessian, blocks, method="exact", top_k=3, bottom_k=2)
    assert list(spectra.blocks) == ["first", "mixed"]
    full_want = torch.linalg.eigvalsh(dense)
    _close(spectra.full.eigenvalues, full_want)
    for name, names in blocks.items():
        want = torch.linalg.eigvalsh(_dense_block(dense, hessian, names))
        got = spectra.blocks[name]
        assert got.method == "exact"
        assert got.dim == want.numel()
        assert got.param_names == tuple(names)
        _close(got.eigenvalues, want)
        _close(got.bottom_eigenvalues, want[:2])
        order = torch.argsort(want.abs(), descending=True)[:3]
        _close(got.top_eigenvalues, want[order])
        assert got.trace == pytest.approx(float(want.sum()), rel=RTOL, abs=RTOL)
        assert float(got.weights.sum()) == pytest.approx(1.0, rel=1e-14)
        assert got.num_matvecs == got.dim


def test_default_and_weight_blocks_cover_the_layers(hessian):
    dense = hessian.to_dense()
    spectra = layerwise_spectra(hessian, "weights", method="auto", full=False)
    assert spectra.full is None
    assert list(spectra.blocks) == ["0.weight", "2.weight"]
    for name, block in spectra.blocks.items():
        want = torch.linalg.eigvalsh(_dense_block(dense, hessian, [name]))
        _close(block.eigenvalues, want)


def test_bad_blocks_are_refused(hessian):
    with pytest.raises(ValueError, match="must list some"):
        layerwise_spectra(hessian, {"x": ["nope"]})
    with pytest.raises(TypeError, match="blocks must be"):
        layerwise_spectra(hessian, ["0.weight"])
    with pytest.raises(ValueError, match="method must be"):
        block_spectrum(hessian, method="dense")
    with pytest.raises(ValueError, match="max_exact_dim"):
        block_spectrum(hessian, method="exact", max_exact_dim=10)


def test_lanczos_extremes_match_exact(hessian):
    exact = block_spectrum(hessian, method="exact", top_k=4, bottom_k=2)
    lanczos = block_spectrum(
        hessian, method="lanczos", top_k=4, bottom_k=2, tol=1e-12, seed=3
    )
    assert lanczos.method == "lanczos"
    assert not lanczos.has_measure
    assert lanczos.density is None
    assert lanczos.converged
    _close(lanczos.top_eigenvalues, exact.top_eigenvalues, 1e-8)
    _close(lanczos.bottom_eigenvalues, exact.bottom_eigenvalues, 1e-8)
    assert lanczos.num_matvecs > 0
    with pytest.raises(ValueError, match="no spectral measure"):
        spectrum_distance(exact, lanczos)


def test_slq_density_integrates_to_one(hessian):
    slq = block_spectrum(hessian, method="slq", num_probes=3, num_steps=20, top_k=2)
    assert slq.method == "slq"
    assert float(slq.weights.sum()) == pytest.approx(1.0, rel=1e-12)
    integral = torch.trapezoid(slq.density, slq.grid)
    assert float(integral) == pytest.approx(1.0, abs=1e-6)
    assert slq.grid.numel() == 1024
    exact = block_spectrum(hessian, method="exact")
    # the SLQ measure lies within the spectrum; its mean is Hutchinson's trace / D
    assert float(slq.nodes.min()) >= float(exact.nodes.min()) - 1e-10
    assert float(slq.nodes.max()) <= float(exact.nodes.max()) + 1e-10
    _close(slq.top_eigenvalues, exact.top_eigenvalues[:2], 1e-6)


def test_json_round_trip(hessian):
    spectra = layerwise_spectra(hessian, method="exact", top_k=2, bottom_k=1)
    again = LayerwiseSpectra.from_dict(json.loads(json.dumps(spectra.to_dict())))
    for a, b in [(spectra.full, again.full)] + [
        (spectra.blocks[n], again.blocks[n]) for n in spectra.blocks
    ]:
        assert a.to_dict() == b.to_dict()
        assert torch.equal(a.nodes, b.nodes)


# ------------------------------------------------------------------ H - G
def test_ggn_block_plus_residual_block_is_hessian_block(hessian, ggn):
    residual = hessian - ggn
    assert isinstance(residual, SumOperator)
    for names in (["0.weight", "0.bias"], ["2.weight"], ["2.bias", "0.bias"]):
        H = block_operator(hessian, names).to_dense()
        G = block_operator(ggn, names).to_dense()
        R = block_operator(residual, names)
        assert isinstance(R, SumOperator)
        _close(G + R.to_dense(), H)


def test_split_spectra(hessian, ggn):
    split = ggn_residual_split(hessian, ggn, method="exact", top_k=2)
    H, G = hessian.to_dense(), ggn.to_dense()
    _close(split.hessian.full.eigenvalues, torch.linalg.eigvalsh(H))
    _close(split.ggn.full.eigenvalues, torch.linalg.eigvalsh(G))
    _close(split.residual.full.eigenvalues, torch.linalg.eigvalsh(H - G))
    assert float(split.ggn.full.eigenvalues.min()) > -1e-12  # PSD
    names = ["2.weight", "2.bias"]
    want = torch.linalg.eigvalsh(
        _dense_block(H, hessian, names) - _dense_block(G, hessian, names)
    )
    _close(split.residual.blocks["2"].eigenvalues, want)
    assert split.residual.blocks["2"].num_matvecs == 0  # from the dense H and G
    # the operator-algebra path (Lanczos on H - G) agrees
    lanczos = ggn_residual_split(
        hessian, ggn, {"2": names}, method="lanczos", top_k=2, tol=1e-12, full=False
    )
    _close(
        lanczos.residual.blocks["2"].top_eigenvalues,
        split.residual.blocks["2"].top_eigenvalues,
        1e-8,
    )


# ------------------------------------------------------------------ distances
@pytest.mark.parametrize("sizes", [(1, 1), (5, 5), (7, 13), (100, 3)])
def test_wasserstein_matches_scipy(sizes):
    rng = np.random.default_rng(sum(sizes))
    a, b = rng.normal(size=sizes[0]), rng.normal(1.0, 2.0, size=sizes[1])
    wa, wb = rng.random(sizes[0]), rng.random(sizes[1])
    assert wasserstein_1(a, b) == pytest.approx(
        scipy.stats.wasserstein_distance(a, b), rel=1e-12, abs=1e-12
    )
    assert wasserstein_1(torch.tensor(a), b, wa, wb) == pytest.approx(
        scipy.stats.wasserstein_distance(a, b, wa, wb), rel=1e-12, abs=1e-12
    )


def test_wasserstein_properties():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=9), rng.normal(size=4)
    assert wasserstein_1(a, a) == 0.0
    assert wasserstein_1(a, rng.permutation(a)) == 0.0
    assert wasserstein_1(a, a + 2.5) == pytest.approx(2.5, rel=1e-12)
    assert wasserstein_1(a + 1.0, b + 1.0) == pytest.approx(wasserstein_1(a, b))
    assert wasserstein_1(a, b) == pytest.approx(wasserstein_1(b, a), rel=1e-14)
    assert wasserstein_1(3 * a, 3 * b) == pytest.approx(3 * wasserstein_1(a, b))
    # atoms repeated k times are the same distribution
    assert wasserstein_1(np.repeat(a, 3), b) == pytest.approx(wasserstein_1(a, b))
    with pytest.raises(ValueError, match="non-empty"):
        wasserstein_1([], b)
    with pytest.raises(ValueError, match="non-negative"):
        wasserstein_1(a, b, weights_b=-np.ones(4))


def test_density_wasserstein_matches_scipy_and_shifts():
    grid = np.linspace(-3.0, 5.0, 801)
    p = scipy.stats.norm.pdf(grid, 0.0, 0.5)
    q = scipy.stats.norm.pdf(grid, 1.5, 0.5)
    cells = np.gradient(grid)  # trapezoid cells on an even grid, halved at ends
    cells[[0, -1]] /= 2
    want = scipy.stats.wasserstein_distance(grid, grid, p * cells, q * cells)
    got = density_wasserstein_1(grid, p, q)
    assert got == pytest.approx(want, rel=1e-12)
    assert got == pytest.approx(1.5, rel=1e-6)  # a shift moves all mass by 1.5
    assert density_wasserstein_1(grid, p, 7 * p) == pytest.approx(0.0, abs=1e-15)


def test_layerhessians_match_hand_computed():
    e = math.e
    d1 = [1.0, e, e**2]  # log -> [0, 1, 2] -> [0, .5, 1] -> [0, 1/3, 2/3]
    d3 = [0.0, 1.0, e]  # zero -> 1; log -> [0, 0, 1] -> [0, 0, 1]
    np.testing.assert_allclose(
        layerhessians_density_transform(d1), [0, 1 / 3, 2 / 3], rtol=1e-15
    )
    np.testing.assert_allclose(layerhessians_density_transform(d3), [0, 0, 1])
    # samples {0, 1/3, 2/3} vs {0, 0, 1}: quantile pairs differ by 0, 1/3, 1/3
    assert layerhessians_match(d1, d3) == pytest.approx(2 / 9, rel=1e-14)
    assert layerhessians_match(d1, d3) == pytest.approx(
        scipy.stats.wasserstein_distance([0, 1 / 3, 2 / 3], [0, 0, 1]), rel=1e-14
    )
    # the quirk: mirrored (or permuted) densities are at distance 0
    assert layerhessians_match(d1, d1[::-1]) == 0.0
    with pytest.raises(ValueError, match="constant"):
        layerhessians_density_transform([2.0, 2.0, 0.0])


def test_layerhessians_match_ignores_the_eigenvalue_axis():
    nodes = torch.tensor([0.0, 0.1, 0.2, 3.0], dtype=torch.float64)
    _, p = layerhessians_density(nodes)
    _, q = layerhessians_density(nodes + 100.0)
    grid_r, r = layerhessians_density(10.0 * nodes)
    assert layerhessians_match(p, q) == pytest.approx(0.0, abs=1e-12)
    assert layerhessians_match(p, r) == pytest.approx(0.0, abs=1e-12)
    assert wasserstein_1(nodes, nodes + 100.0) == pytest.approx(100.0)
    assert float(torch.trapezoid(r, grid_r)) == pytest.approx(1.0, abs=1e-9)


def test_spectrum_distance_kinds(hessian):
    spectra = layerwise_spectra(hessian, method="exact")
    full, first = spectra.full, spectra.blocks["0"]
    assert spectrum_distance(full, first) == pytest.approx(
        scipy.stats.wasserstein_distance(full.nodes.numpy(), first.nodes.numpy()),
        rel=1e-12,
    )
    distances = spectra.distances("layerhessians")
    assert distances["0"] == pytest.approx(
        layerhessians_match(full.density, first.density)
    )
    assert spectrum_distance(full, full, "density_wasserstein") == pytest.approx(
        0.0, abs=1e-12
    )
    smooth = spectrum_distance(full, first, "density_wasserstein")
    # smoothing moves each atom by a kernel of width << the spectrum's spread
    assert smooth == pytest.approx(spectrum_distance(full, first), rel=0.05)


def test_block_spectrum_of_a_dense_matrix():
    A = torch.diag(torch.tensor([-2.0, 1.0, 3.0], dtype=torch.float64))
    spectrum = block_spectrum(A, top_k=2, bottom_k=1)
    assert spectrum.num_matvecs == 0
    assert spectrum.top_eigenvalues.tolist() == [3.0, -2.0]
    assert spectrum.bottom_eigenvalues.tolist() == [-2.0]
    assert isinstance(BlockSpectrum.from_dict(spectrum.to_dict()), BlockSpectrum)

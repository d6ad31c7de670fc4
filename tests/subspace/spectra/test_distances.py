"""Wasserstein-1 between spectra and densities, and distances of records."""

import numpy as np
import pytest
import scipy.stats
import torch

from curvlab.subspace.spectra import (
    DISTANCES,
    LayerwiseSpectra,
    density_wasserstein_1,
    layer_full_distances,
    layerhessians_match,
    layerwise_spectra,
    spectrum_distance,
    wasserstein_1,
)


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


def test_layer_full_distances_are_the_spectrum_distances(hessian):
    spectra = layerwise_spectra(hessian, method="exact")
    rows = layer_full_distances({3: spectra, 0: spectra})
    assert [(r.step, r.layer, r.depth) for r in rows] == [
        (0, "0", 0),
        (0, "2", 1),
        (3, "0", 0),
        (3, "2", 1),
    ]
    for row in rows:
        block = spectra.blocks[row.layer]
        assert row.dim == block.dim
        for kind in DISTANCES:
            assert getattr(row, kind) == spectrum_distance(spectra.full, block, kind)
    assert list(rows[0]._asdict()) == [
        "step",
        "layer",
        "depth",
        "dim",
        "wasserstein",
        "density_wasserstein",
        "layerhessians",
    ]
    with pytest.raises(ValueError, match="full spectrum"):
        layer_full_distances({0: LayerwiseSpectra(None, spectra.blocks)})
    with pytest.raises(ValueError, match="No layer spectra"):
        layer_full_distances({0: LayerwiseSpectra(spectra.full, {})})

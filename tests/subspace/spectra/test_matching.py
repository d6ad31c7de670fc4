"""LayerHessians' matching distance, as published (quirk included)."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from curvlab.subspace.spectra import (
    layerhessians_density,
    layerhessians_density_transform,
    layerhessians_match,
    wasserstein_1,
)


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

"""Densities smoothed the LayerHessians way."""

import math

import pytest
import torch

from curvlab.subspace.spectra import layerhessians_density


def test_layerhessians_density_has_the_published_grid_and_kernel():
    nodes = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    grid, density = layerhessians_density(nodes)
    assert grid.numel() == density.numel() == 1024
    # the range [-1, 2] widened by 5% of its length on both sides
    assert float(grid[0]) == pytest.approx(-1.0 - 0.15, rel=1e-14)
    assert float(grid[-1]) == pytest.approx(2.0 + 0.15, rel=1e-14)
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-9)
    # an atom of mass 1/3 under a Gaussian of width sigma * d, d = half the window,
    # sampled on a grid a sixth of the width apart
    d = (2.15 + 1.15) / 2
    width = (2.0 / 127) / math.sqrt(8.0 * math.log(1.25)) * d
    peak = 1 / 3 / math.sqrt(2 * math.pi * width**2)
    assert float(density.max()) == pytest.approx(peak, rel=5e-3)
    with pytest.raises(ValueError, match="num_points"):
        layerhessians_density(nodes, num_points=1)

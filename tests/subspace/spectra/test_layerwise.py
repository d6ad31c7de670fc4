"""Spectra of one operator and of its diagonal blocks next to the full one."""

import pytest
import torch

from curvlab.subspace.spectra import (
    BlockSpectrum,
    block_spectrum,
    layerwise_spectra,
    spectrum_distance,
)
from subspace.spectra._cases import RTOL, close, dense_block


def test_layerwise_spectra_equal_eigvalsh_of_dense_blocks(hessian):
    dense = hessian.to_dense()
    blocks = {"first": ["0.weight", "0.bias"], "mixed": ["2.bias", "0.weight"]}
    spectra = layerwise_spectra(hessian, blocks, method="exact", top_k=3, bottom_k=2)
    assert list(spectra.blocks) == ["first", "mixed"]
    full_want = torch.linalg.eigvalsh(dense)
    close(spectra.full.eigenvalues, full_want)
    for name, names in blocks.items():
        want = torch.linalg.eigvalsh(dense_block(dense, hessian, names))
        got = spectra.blocks[name]
        assert got.method == "exact"
        assert got.dim == want.numel()
        assert got.param_names == tuple(names)
        close(got.eigenvalues, want)
        close(got.bottom_eigenvalues, want[:2])
        order = torch.argsort(want.abs(), descending=True)[:3]
        close(got.top_eigenvalues, want[order])
        assert got.trace == pytest.approx(float(want.sum()), rel=RTOL, abs=RTOL)
        assert float(got.weights.sum()) == pytest.approx(1.0, rel=1e-14)
        assert got.num_matvecs == got.dim


def test_default_and_weight_blocks_cover_the_layers(hessian):
    dense = hessian.to_dense()
    spectra = layerwise_spectra(hessian, "weights", method="auto", full=False)
    assert spectra.full is None
    assert list(spectra.blocks) == ["0.weight", "2.weight"]
    for name, block in spectra.blocks.items():
        want = torch.linalg.eigvalsh(dense_block(dense, hessian, [name]))
        close(block.eigenvalues, want)


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
    close(lanczos.top_eigenvalues, exact.top_eigenvalues, 1e-8)
    close(lanczos.bottom_eigenvalues, exact.bottom_eigenvalues, 1e-8)
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
    close(slq.top_eigenvalues, exact.top_eigenvalues[:2], 1e-6)


def test_block_spectrum_of_a_dense_matrix():
    A = torch.diag(torch.tensor([-2.0, 1.0, 3.0], dtype=torch.float64))
    spectrum = block_spectrum(A, top_k=2, bottom_k=1)
    assert spectrum.num_matvecs == 0
    assert spectrum.top_eigenvalues.tolist() == [3.0, -2.0]
    assert spectrum.bottom_eigenvalues.tolist() == [-2.0]
    assert isinstance(BlockSpectrum.from_dict(spectrum.to_dict()), BlockSpectrum)

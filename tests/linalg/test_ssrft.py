"""DCT, SSRFT and random test matrices: exactness, adjoints, reproducibility."""

from __future__ import annotations

import pytest
import scipy.fft
import torch

from curvlab.linalg.ssrft import (
    SSRFT,
    TEST_MATRIX_KINDS,
    dct,
    idct,
    random_test_matrix,
)

F64 = torch.float64
SIZES = [1, 2, 3, 4, 7, 16, 101]


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("n", SIZES)
def test_dct_matches_scipy_orthonormal_dct2_and_dct3(n):
    x = _randn(n, 3)
    ref2 = torch.from_numpy(scipy.fft.dct(x.numpy(), type=2, norm="ortho", axis=0))
    ref3 = torch.from_numpy(scipy.fft.idct(x.numpy(), type=2, norm="ortho", axis=0))
    torch.testing.assert_close(dct(x), ref2, rtol=0, atol=1e-13)
    torch.testing.assert_close(idct(x), ref3, rtol=0, atol=1e-13)


@pytest.mark.parametrize("n", SIZES)
def test_idct_is_exact_inverse_and_transpose(n):
    x = _randn(n, 4)
    torch.testing.assert_close(idct(dct(x)), x, rtol=0, atol=1e-13)
    torch.testing.assert_close(dct(idct(x)), x, rtol=0, atol=1e-13)
    F = dct(torch.eye(n, dtype=F64))
    torch.testing.assert_close(idct(torch.eye(n, dtype=F64)), F.T, rtol=0, atol=1e-13)
    torch.testing.assert_close(F @ F.T, torch.eye(n, dtype=F64), rtol=0, atol=1e-13)


def test_dct_along_other_dim_and_float32():
    x = _randn(3, 10)
    torch.testing.assert_close(dct(x, dim=1), dct(x.T).T)
    y = dct(x.float(), dim=1)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), dct(x, dim=1), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("dim", "rows"), [(1, 1), (8, 3), (37, 37), (100, 20)])
def test_ssrft_adjoint_dense_and_orthonormal_rows(dim, rows):
    S = SSRFT(dim, rows, seed=5, role=1)
    x, y = _randn(dim, 3, seed=1), _randn(rows, 3, seed=2)
    # <S x, y> = <x, S^T y>
    lhs, rhs = ((S @ x) * y).sum(), (x * S.rmatmat(y)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * max(1.0, float(lhs.abs()))
    # S applied to the identity equals the matrix built column by column
    dense = S.to_dense()
    by_column = torch.stack([S @ e for e in torch.eye(dim, dtype=F64)], 1)
    torch.testing.assert_close(S @ torch.eye(dim, dtype=F64), dense, rtol=0, atol=1e-13)
    torch.testing.assert_close(by_column, dense, rtol=0, atol=1e-13)
    torch.testing.assert_close(S.rmatmat(torch.eye(rows, dtype=F64)), dense.T)
    torch.testing.assert_close(
        dense @ dense.T, torch.eye(rows, dtype=F64), rtol=0, atol=1e-13
    )
    # vectors in, vectors out
    torch.testing.assert_close(S @ x[:, 0], (S @ x)[:, 0])
    torch.testing.assert_close(S.rmatmat(y[:, 0]), S.rmatmat(y)[:, 0])


def test_ssrft_square_is_orthogonal_and_norm_preserving():
    S = SSRFT(64, 64, seed=0)
    x = _randn(64, 2)
    torch.testing.assert_close(S.rmatmat(S @ x), x, rtol=0, atol=1e-13)
    torch.testing.assert_close(
        torch.linalg.norm(S @ x, dim=0), torch.linalg.norm(x, dim=0)
    )


def test_ssrft_depends_on_seed_and_role_only():
    a, b = SSRFT(50, 10, seed=3, role=0), SSRFT(50, 10, seed=3, role=0)
    torch.testing.assert_close(a.to_dense(), b.to_dense(), rtol=0, atol=0)
    assert not torch.allclose(a.to_dense(), SSRFT(50, 10, seed=4).to_dense())
    assert not torch.allclose(a.to_dense(), SSRFT(50, 10, seed=3, role=1).to_dense())
    # row i does not depend on how many rows are kept
    torch.testing.assert_close(SSRFT(50, 30, seed=3).to_dense()[:10], a.to_dense())


def test_ssrft_rejects_bad_sizes_and_inputs():
    with pytest.raises(ValueError, match=r"1 <= k <= D"):
        SSRFT(5, 6)
    with pytest.raises(ValueError, match=r"1 <= k <= D"):
        SSRFT(5, 0)
    S = SSRFT(5, 2)
    with pytest.raises(ValueError, match=r"\(5,\) or \(5, m\)"):
        S @ torch.ones(4, dtype=F64)
    with pytest.raises(ValueError, match=r"\(2,\) or \(2, m\)"):
        S.rmatmat(torch.ones(5, dtype=F64))
    with pytest.raises(TypeError, match="real floating"):
        S @ torch.ones(5, dtype=torch.int64)


@pytest.mark.parametrize("kind", TEST_MATRIX_KINDS)
def test_columns_reproducible_in_any_order(kind):
    omega = random_test_matrix(kind, 40, 12, seed=9, role=2)
    full = omega.to_dense()
    assert full.shape == (40, 12)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(omega.columns(perm), full[:, perm], rtol=0, atol=0)
    again = random_test_matrix(kind, 40, 12, seed=9, role=2)
    torch.testing.assert_close(again.columns([11, 3, 3]), full[:, [11, 3, 3]])
    # the first columns do not depend on how many the matrix has
    wider = random_test_matrix(kind, 40, 20, seed=9, role=2)
    torch.testing.assert_close(wider.columns(range(12)), full, rtol=0, atol=0)
    other = random_test_matrix(kind, 40, 12, seed=9, role=3).to_dense()
    assert not torch.allclose(other, full)


@pytest.mark.parametrize("kind", TEST_MATRIX_KINDS)
def test_transpose_matmul_matches_dense(kind):
    omega = random_test_matrix(kind, 30, 7, seed=1)
    X = _randn(30, 4)
    torch.testing.assert_close(
        omega.transpose_matmul(X), omega.to_dense().T @ X, rtol=1e-12, atol=1e-12
    )


def test_entry_distributions():
    gauss = random_test_matrix("gaussian", 2000, 5, seed=0).to_dense()
    assert abs(float(gauss.mean())) < 0.05
    assert abs(float(gauss.var()) - 1) < 0.05
    signs = random_test_matrix("rademacher", 200, 5, seed=0).to_dense()
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    ssrft = random_test_matrix("ssrft", 200, 5, seed=0).to_dense()
    torch.testing.assert_close(ssrft.T @ ssrft, torch.eye(5, dtype=F64))


def test_dtype_and_device_of_columns():
    omega = random_test_matrix("ssrft", 16, 4, seed=0, dtype=torch.float32)
    cols = omega.columns([0, 1])
    assert cols.dtype == torch.float32
    torch.testing.assert_close(
        cols.double(),
        random_test_matrix("ssrft", 16, 4, seed=0).columns([0, 1]),
        rtol=0,
        atol=1e-7,
    )


def test_bad_kind_and_indices():
    with pytest.raises(ValueError, match="test_matrix must be one of"):
        random_test_matrix("sparse", 5, 2)
    omega = random_test_matrix("gaussian", 5, 2)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 2\)"):
        omega.columns([2])
    with pytest.raises(ValueError, match="1-D sequence of ints"):
        omega.columns(torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="D >= 1 and k >= 1"):
        random_test_matrix("gaussian", 5, 0)
    with pytest.raises(ValueError, match=r"needs X of shape \(5, m\)"):
        omega.transpose_matmul(torch.ones(4, 1, dtype=F64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", TEST_MATRIX_KINDS)
def test_columns_agree_across_devices(kind):
    cpu = random_test_matrix(kind, 500, 6, seed=2).to_dense()
    gpu = random_test_matrix(kind, 500, 6, seed=2, device="cuda").to_dense()
    atol = 0 if kind != "ssrft" else 1e-14
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=atol)

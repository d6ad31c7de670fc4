"""principal_angles: accuracy for small and large angles, invariances, checks."""

import math

import pytest
import torch

from curvlab.subspace import principal_angles
from subspace._cases import ATOL, planted_pair, random_basis, random_orthogonal

PLANTED = torch.tensor(
    [0.0, 1e-12, 1e-10, 1e-6, 1e-3, 0.5, math.pi / 4 - 1e-3, math.pi / 4 + 1e-3,
     1.2, math.pi / 2 - 1e-8, math.pi / 2],
    dtype=torch.float64,
)  # fmt: skip


def test_recovers_planted_angles_ascending():
    U, V = planted_pair(40, PLANTED, seed=0)
    angles = principal_angles(U, V)
    assert angles.dtype == torch.float64
    assert angles.shape == PLANTED.shape
    assert bool((angles[1:] >= angles[:-1]).all())
    torch.testing.assert_close(angles, PLANTED, atol=ATOL[torch.float64], rtol=0)


@pytest.mark.parametrize("angle", [1e-10, 1e-8, 1e-6])
def test_small_angles_to_relative_precision(angle):
    planted = torch.tensor([angle, 2 * angle, 0.3], dtype=torch.float64)
    U, V = planted_pair(30, planted, seed=1)
    angles = principal_angles(U, V)
    relative = ((angles[:2] - planted[:2]) / planted[:2]).abs().max()
    assert relative < 1e-6
    if angle == 1e-10:
        # what a cosine-only formula gives: cos(1e-10) rounds to 1
        cosines = torch.linalg.svdvals(U.T @ V).clamp(max=1.0)
        assert float(torch.acos(cosines).min()) == 0.0


def test_angles_near_pi_over_2_to_absolute_precision():
    planted = torch.tensor([1.0, math.pi / 2 - 1e-9], dtype=torch.float64)
    U, V = planted_pair(20, planted, seed=2)
    torch.testing.assert_close(principal_angles(U, V), planted, atol=1e-14, rtol=0)


def test_matches_cosine_formula_on_random_subspaces():
    U, V = random_basis(50, 6, seed=3), random_basis(50, 6, seed=4)
    cosines = torch.linalg.svdvals(U.T @ V)
    expected = torch.acos(cosines).sort().values  # angles far from 0: accurate
    torch.testing.assert_close(principal_angles(U, V), expected, atol=1e-12, rtol=0)


def test_invariant_to_change_of_basis_and_symmetric():
    U, V = random_basis(30, 5, seed=5), random_basis(30, 5, seed=6)
    angles = principal_angles(U, V)
    rotated = principal_angles(U @ random_orthogonal(5, 7), V @ random_orthogonal(5, 8))
    torch.testing.assert_close(rotated, angles, atol=1e-13, rtol=0)
    torch.testing.assert_close(principal_angles(V, U), angles, atol=1e-13, rtol=0)


def test_equal_and_orthogonal_subspaces():
    Q = random_basis(20, 8, seed=9)
    U, V = Q[:, :4], Q[:, 4:]
    assert float(principal_angles(U, U @ random_orthogonal(4, 1)).abs().max()) < 1e-7
    torch.testing.assert_close(
        principal_angles(U, V), torch.full((4,), math.pi / 2, dtype=torch.float64)
    )


def test_unequal_dimensions_give_min_angles():
    Q = random_basis(25, 7, seed=10)
    big, small = Q, Q[:, :3] @ random_orthogonal(3, 2)  # small inside big
    for angles in (principal_angles(big, small), principal_angles(small, big)):
        assert angles.shape == (3,)
        assert float(angles.abs().max()) < 1e-7
    other = random_basis(25, 3, seed=11)
    torch.testing.assert_close(
        principal_angles(big, other), principal_angles(other, big), atol=1e-13, rtol=0
    )


def test_subspace_of_full_dimension():
    U = random_basis(6, 6, seed=12)
    V = random_basis(6, 6, seed=13)
    assert float(principal_angles(U, V).abs().max()) < 1e-7


def test_float32():
    planted = torch.tensor([1e-3, 0.2, 0.9, 1.5], dtype=torch.float64)
    U, V = planted_pair(200, planted, seed=14)
    angles = principal_angles(U.float(), V.float())
    assert angles.dtype == torch.float32
    torch.testing.assert_close(
        angles.double(), planted, atol=ATOL[torch.float32], rtol=0
    )


def test_orthonormalize():
    U, V = random_basis(30, 4, seed=15), random_basis(30, 4, seed=16)
    A = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=U.dtype)
    skewed = U @ (A + 4 * torch.eye(4, dtype=U.dtype))  # same span, not orthonormal
    with pytest.raises(ValueError, match="orthonormal"):
        principal_angles(skewed, V)
    torch.testing.assert_close(
        principal_angles(skewed, V, orthonormalize=True),
        principal_angles(U, V),
        atol=1e-12,
        rtol=0,
    )


def test_atol_is_the_orthonormality_tolerance():
    U, V = random_basis(30, 4, seed=17), random_basis(30, 4, seed=18)
    slightly_off = U * (1 + 1e-6)
    with pytest.raises(ValueError, match=r"max \|U\^T U - I\| <= 1.49e-07"):
        principal_angles(slightly_off, V)
    principal_angles(slightly_off, V, atol=1e-5)


U0 = random_basis(10, 3, seed=0)


@pytest.mark.parametrize(
    ("U", "V", "error", "match"),
    [
        (U0.numpy(), U0, TypeError, "U must be a torch.Tensor. Got ndarray"),
        (U0, U0.to(torch.int64), TypeError, "V must have dtype"),
        (U0.half(), U0.half(), TypeError, "torch.float16"),
        (U0[:, 0], U0, ValueError, r"2-D tensor of shape \(D, k\). Got shape \(10,\)"),
        (U0, torch.eye(3, 4, dtype=torch.float64), ValueError, r"1 <= k <= D"),
        (U0, U0[:, :0], ValueError, r"Got \(10, 0\)"),
        (U0, random_basis(11, 3, 0), ValueError, "same number of rows D"),
        (U0, U0.float(), ValueError, "same dtype"),
        (U0, U0.to("meta"), ValueError, "same device"),
        (2 * U0, U0, ValueError, "U must have orthonormal columns"),
    ],
    ids=[
        "numpy",
        "int",
        "half",
        "1-D",
        "k>D",
        "k=0",
        "D differs",
        "dtype differs",
        "device differs",
        "not orthonormal",
    ],
)
def test_bad_inputs(U, V, error, match):
    with pytest.raises(error, match=match):
        principal_angles(U, V)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    planted = torch.tensor([1e-4, 0.3, 1.1], dtype=torch.float64)
    U, V = planted_pair(100, planted, seed=19)
    U, V = U.to(dtype), V.to(dtype)
    on_gpu = principal_angles(U.cuda(), V.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu().double(), planted, atol=ATOL[dtype], rtol=0)

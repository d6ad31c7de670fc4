"""Grassmannian distances and overlap: identities of papers.md §5.1, extremes."""

import math

import pytest
import torch

from curvlab.subspace import (
    METRICS,
    distance_from_angles,
    grassmann_distance,
    max_distance,
    overlap,
    principal_angles,
)
from subspace._cases import ATOL, planted_pair, random_basis, random_orthogonal

PAIRS = [(12, 3, 0), (40, 7, 1), (30, 15, 2), (9, 9, 3)]  # (D, k, seed)


def pair(D, k, seed):
    return random_basis(D, k, seed), random_basis(D, k, seed + 100)


@pytest.mark.parametrize(("D", "k", "seed"), PAIRS)
def test_overlap_identities(D, k, seed):
    U, V = pair(D, k, seed)
    ov = overlap(U, V)
    dist_pF = grassmann_distance(U, V, "projection_F")
    P = U @ U.T - V @ V.T
    torch.testing.assert_close(ov, (U.T @ V).square().sum() / k)
    torch.testing.assert_close(ov, 1 - dist_pF**2 / k)
    torch.testing.assert_close(dist_pF, torch.linalg.matrix_norm(P) / math.sqrt(2))
    torch.testing.assert_close(
        grassmann_distance(U, V, "projection_2"), torch.linalg.matrix_norm(P, ord=2)
    )
    torch.testing.assert_close(
        ov, torch.cos(principal_angles(U, V)).square().mean(), atol=1e-14, rtol=0
    )


@pytest.mark.parametrize(("D", "k", "seed"), PAIRS)
def test_determinant_identities(D, k, seed):
    U, V = pair(D, k, seed)
    # clamp: for D = k the determinant is 1 up to rounding, which can exceed 1
    det = torch.linalg.det(U.T @ V).abs().clamp(max=1.0)
    torch.testing.assert_close(
        grassmann_distance(U, V, "fubini_study"), torch.acos(det)
    )
    torch.testing.assert_close(
        grassmann_distance(U, V, "binet_cauchy"), torch.sqrt(1 - det**2)
    )
    torch.testing.assert_close(
        grassmann_distance(U, V, "martin"), torch.sqrt(-torch.log(det**2))
    )


@pytest.mark.parametrize(("D", "k", "seed"), PAIRS)
def test_geodesic_and_chordal_identities(D, k, seed):
    U, V = pair(D, k, seed)
    angles = principal_angles(U, V)
    torch.testing.assert_close(grassmann_distance(U, V), angles.norm())
    # chordal (Procrustes): the distance of the bases after optimal alignment,
    # U A - V B with U^T V = A diag(cos) B^T (Edelman, Arias & Smith 1998)
    A, _, Bt = torch.linalg.svd(U.T @ V)
    aligned = U @ A - V @ Bt.T
    torch.testing.assert_close(
        grassmann_distance(U, V, "chordal_F"), torch.linalg.matrix_norm(aligned)
    )
    torch.testing.assert_close(
        grassmann_distance(U, V, "chordal_2"),
        torch.linalg.matrix_norm(aligned, ord=2),
    )


@pytest.mark.parametrize("metric", METRICS)
def test_invariant_to_change_of_basis(metric):
    U, V = pair(25, 6, 4)
    expected = grassmann_distance(U, V, metric)
    rotated = grassmann_distance(
        U @ random_orthogonal(6, 1), V @ random_orthogonal(6, 2), metric
    )
    torch.testing.assert_close(rotated, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grassmann_distance(V, U, metric), expected)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("normalized", [False, True])
def test_zero_for_equal_subspaces(metric, normalized):
    U = random_basis(20, 5, seed=5)
    d = grassmann_distance(
        U, U @ random_orthogonal(5, 3), metric, normalized=normalized
    )
    assert 0.0 <= float(d) < 1e-7
    exact = grassmann_distance(U, U, metric, normalized=normalized)
    assert 0.0 <= float(exact) < 1e-7


@pytest.mark.parametrize("metric", METRICS)
def test_maximal_for_orthogonal_subspaces(metric):
    Q = random_basis(20, 8, seed=6)
    U, V = Q[:, :4], Q[:, 4:]
    normalized = grassmann_distance(U, V, metric, normalized=True)
    torch.testing.assert_close(normalized, torch.tensor(1.0, dtype=torch.float64))
    raw = grassmann_distance(U, V, metric)
    if metric == "martin":
        assert float(raw) > 5  # -log(cos^2) with cos ~ 1e-16 rounding
    else:
        torch.testing.assert_close(
            raw, torch.tensor(max_distance(metric, 4), dtype=torch.float64)
        )
    assert float(overlap(U, V)) < 1e-30


@pytest.mark.parametrize("metric", METRICS)
def test_normalized_in_unit_interval(metric):
    for D, k, seed in PAIRS:
        U, V = pair(D, k, seed)
        raw = grassmann_distance(U, V, metric)
        value = float(grassmann_distance(U, V, metric, normalized=True))
        assert 0.0 <= value <= 1.0
        if metric == "martin":
            assert value == pytest.approx(1 - math.exp(-(float(raw) ** 2) / k))
        else:
            assert value == pytest.approx(float(raw) / max_distance(metric, k))


def test_small_angles_keep_relative_accuracy():
    """Angles of 1e-10: every metric is ~sqrt(k) * 1e-10, not 0 (arccos) or noise."""
    k, angle = 4, 1e-10
    U, V = planted_pair(30, torch.full((k,), angle, dtype=torch.float64), seed=7)
    expected = {
        "geodesic": math.sqrt(k) * angle,
        "chordal_2": angle,
        "chordal_F": math.sqrt(k) * angle,
        "projection_2": angle,
        "projection_F": math.sqrt(k) * angle,
        "fubini_study": math.sqrt(k) * angle,
        "binet_cauchy": math.sqrt(k) * angle,
        "martin": math.sqrt(k) * angle,
    }
    for metric, value in expected.items():
        assert float(grassmann_distance(U, V, metric)) == pytest.approx(
            value, rel=1e-6
        ), metric


def test_planted_equal_angles():
    """All k angles equal to phi: every metric has a closed form."""
    k, phi = 5, 0.7
    angles = torch.full((k,), phi, dtype=torch.float64)
    expected = {
        "geodesic": math.sqrt(k) * phi,
        "chordal_2": 2 * math.sin(phi / 2),
        "chordal_F": math.sqrt(k) * 2 * math.sin(phi / 2),
        "projection_2": math.sin(phi),
        "projection_F": math.sqrt(k) * math.sin(phi),
        "fubini_study": math.acos(math.cos(phi) ** k),
        "binet_cauchy": math.sqrt(1 - math.cos(phi) ** (2 * k)),
        "martin": math.sqrt(-k * math.log(math.cos(phi) ** 2)),
    }
    U, V = planted_pair(40, angles, seed=8)
    for metric, value in expected.items():
        assert float(distance_from_angles(angles, metric)) == pytest.approx(value)
        assert float(grassmann_distance(U, V, metric)) == pytest.approx(value)
    assert float(overlap(U, V)) == pytest.approx(math.cos(phi) ** 2)


def test_distance_from_angles_batches():
    angles = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0)) * 1.5
    for metric in METRICS:
        batched = distance_from_angles(angles, metric, normalized=True)
        assert batched.shape == (3, 4)
        torch.testing.assert_close(
            batched[1, 2], distance_from_angles(angles[1, 2], metric, normalized=True)
        )


def test_chance_values_at_ratio_0_2():
    """papers.md §1.2: normalised chance values for k/D = 0.2 (large D)."""
    D, k = 1000, 200
    U, V = pair(D, k, 9)
    angles = principal_angles(U, V)
    values = {
        m: float(distance_from_angles(angles, m, normalized=True)) for m in METRICS
    }
    assert values["geodesic"] == pytest.approx(0.75466, abs=0.003)
    assert values["chordal_F"] == pytest.approx(0.78246, abs=0.003)
    assert values["projection_F"] == pytest.approx(0.89430, abs=0.003)
    assert values["chordal_2"] > 0.998
    for metric in ("projection_2", "fubini_study", "binet_cauchy"):
        assert values[metric] == pytest.approx(1.0, abs=1e-6)
    assert float(overlap(U, V)) == pytest.approx(0.2, abs=0.005)


def test_overlap_with_unequal_dimensions():
    Q = random_basis(30, 8, seed=10)
    assert float(overlap(Q, Q[:, 2:5])) == pytest.approx(1.0)
    assert float(overlap(Q[:, :2], Q[:, 2:])) == pytest.approx(0.0, abs=1e-30)
    V = random_basis(30, 3, seed=11)
    angles = principal_angles(Q, V)
    torch.testing.assert_close(overlap(Q, V), torch.cos(angles).square().mean())


@pytest.mark.parametrize("metric", [*METRICS, "overlap"])
def test_float32_matches_float64(metric):
    U, V = pair(300, 20, 12)

    def value(U, V):
        if metric == "overlap":
            return overlap(U, V)
        return grassmann_distance(U, V, metric, normalized=True)

    single = value(U.float(), V.float())
    assert single.dtype == torch.float32
    assert float(single) == pytest.approx(float(value(U, V)), abs=ATOL[torch.float32])


def test_bad_inputs():
    U, V = random_basis(10, 3, 0), random_basis(10, 4, 1)
    with pytest.raises(ValueError, match="same number of columns k"):
        grassmann_distance(U, V)
    with pytest.raises(ValueError, match=r"metric must be one of .*Got 'cosine'"):
        grassmann_distance(U, U, "cosine")
    with pytest.raises(ValueError, match="V must have orthonormal columns"):
        overlap(U, 3 * V)
    assert float(overlap(U, 3 * V, orthonormalize=True)) <= 1.0
    with pytest.raises(ValueError, match="k must be at least 1"):
        max_distance("geodesic", 0)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., k\) with k >= 1"):
        distance_from_angles(torch.zeros(3, 0), "geodesic")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    U, V = pair(200, 10, 13)
    for metric in METRICS:
        on_gpu = grassmann_distance(U.to("cuda", dtype), V.to("cuda", dtype), metric)
        assert on_gpu.device.type == "cuda"
        assert float(on_gpu) == pytest.approx(
            float(grassmann_distance(U, V, metric)), abs=10 * ATOL[dtype]
        )
    on_gpu = overlap(U.to("cuda", dtype), V.to("cuda", dtype))
    assert float(on_gpu) == pytest.approx(float(overlap(U, V)), abs=ATOL[dtype])

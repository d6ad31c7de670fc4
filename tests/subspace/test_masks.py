"""Masks and their overlap with eigenbases, against dense mask matrices."""

import itertools
import math

import pytest
import torch
from torch import nn

from curvlab.subspace import (
    best_mask,
    iou,
    magnitude_mask,
    mask_overlap,
    overlap,
    overlap_curve,
    random_mask,
)
from subspace._cases import ATOL, generator, mask_matrix, random_basis


def dense_overlap(mask, U):
    """||M^T U||_F^2 / min(k, m) with the explicit (D, k) mask matrix M."""
    M = mask_matrix(mask, U.shape[0], U.dtype)
    return float((M.T @ U).square().sum()) / min(mask.numel(), U.shape[1])


# ------------------------------------------------------------------ masks
def test_magnitude_mask_picks_largest_absolute_values():
    theta = torch.tensor([0.1, -3.0, 2.0, 0.5, -2.5])
    mask = magnitude_mask(theta, 3)
    assert mask.dtype == torch.long
    assert mask.tolist() == [1, 2, 4]
    assert magnitude_mask(theta, 5).tolist() == [0, 1, 2, 3, 4]


def test_magnitude_mask_ties_go_to_lower_indices_and_masks_nest():
    theta = torch.tensor([1.0, -2.0, 1.0, 2.0, -1.0, 0.0, 1.0])
    assert magnitude_mask(theta, 2).tolist() == [1, 3]
    assert magnitude_mask(theta, 3).tolist() == [0, 1, 3]
    assert magnitude_mask(theta, 4).tolist() == [0, 1, 2, 3]
    assert magnitude_mask(theta, 5).tolist() == [0, 1, 2, 3, 4]
    theta = torch.randint(-3, 4, (500,), generator=generator(0)).double()
    previous = set()
    for k in range(1, 501, 7):
        mask = set(magnitude_mask(theta, k).tolist())
        assert previous <= mask
        previous = mask


def test_magnitude_mask_of_parameter_lists():
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    flat = torch.nn.utils.parameters_to_vector(model.parameters())
    expected = magnitude_mask(flat, 7)
    assert magnitude_mask(list(model.parameters()), 7).tolist() == expected.tolist()
    assert magnitude_mask(model.parameters(), 7).tolist() == expected.tolist()
    int_params = [torch.tensor([[5, -1], [0, 2]]), torch.tensor([-7])]
    assert magnitude_mask(int_params, 2).tolist() == [0, 4]


def test_random_mask():
    mask = random_mask(100, 30, seed=3)
    assert mask.dtype == torch.long
    assert mask.shape == (30,)
    assert bool((mask[1:] > mask[:-1]).all())  # sorted and distinct
    assert int(mask.min()) >= 0
    assert int(mask.max()) < 100
    assert random_mask(100, 30, seed=3).tolist() == mask.tolist()
    assert random_mask(100, 30, seed=4).tolist() != mask.tolist()
    shared = torch.Generator().manual_seed(3)
    assert random_mask(100, 30, generator=shared).tolist() == mask.tolist()
    assert random_mask(5, 5).tolist() == [0, 1, 2, 3, 4]


def test_best_mask_beats_every_mask():
    D, k = 8, 3
    U = random_basis(D, k, seed=1)
    best = mask_overlap(best_mask(U, k), U)
    every = [
        mask_overlap(torch.tensor(subset), U)
        for subset in itertools.combinations(range(D), k)
    ]
    assert best == pytest.approx(max(every), abs=1e-15)
    norms = U.square().sum(1)
    assert best_mask(U, 1).tolist() == [int(norms.argmax())]


def test_iou():
    a, b = torch.tensor([0, 1, 2, 3]), torch.tensor([2, 3, 4, 5, 6])
    assert iou(a, b) == pytest.approx(2 / 7)
    assert iou(a, a) == 1.0
    assert iou(a, torch.tensor([9])) == 0.0
    assert iou(b.flip(0), a) == pytest.approx(2 / 7)  # order does not matter


@pytest.mark.parametrize("seed", range(5))
def test_iou_is_a_function_of_overlap_for_equal_sizes(seed):
    """papers.md §1.2: IoU = ov / (2 - ov) and ov = 2 IoU / (1 + IoU)."""
    D, k = 30, 10
    a, b = random_mask(D, k, seed=seed), random_mask(D, k, seed=seed + 10)
    A, B = mask_matrix(a, D), mask_matrix(b, D)
    ov = float(overlap(A, B))
    assert mask_overlap(a, B) == pytest.approx(ov)
    assert iou(a, b) == pytest.approx(ov / (2 - ov))
    assert ov == pytest.approx(2 * iou(a, b) / (1 + iou(a, b)))


# ----------------------------------------------------------- mask overlap
@pytest.mark.parametrize(("D", "k", "m"), [(20, 4, 4), (50, 10, 10), (30, 3, 8)])
def test_mask_overlap_matches_dense_mask_matrix(D, k, m):
    U = random_basis(D, m, seed=D)
    for seed in range(3):
        mask = random_mask(D, k, seed=seed)
        value = mask_overlap(mask, U)
        assert value == pytest.approx(dense_overlap(mask, U), abs=1e-15)
        M = mask_matrix(mask, D)
        assert value == pytest.approx(float(overlap(M, U)), abs=1e-15)


def test_mask_overlap_extremes():
    Q = torch.eye(6, dtype=torch.float64)
    assert mask_overlap(torch.tensor([1, 4]), Q[:, [1, 4]]) == 1.0
    assert mask_overlap(torch.tensor([0, 2]), Q[:, [1, 4]]) == 0.0
    assert mask_overlap(torch.tensor([4, 1, 3]), Q[:, [1, 4]]) == 1.0  # contains


def test_random_mask_overlap_expectation_is_k_over_D():
    """papers.md §1.3: E[ov] = k/D. Tolerance: 4 standard errors, computed exactly.

    ov = (1/k) sum_{i in S} r_i with r_i the squared row norms (sum k): sampling
    k of D rows without replacement has Var(ov) = s^2 (D - k) / (k (D - 1)),
    s^2 the population variance of the r_i.
    """
    D, k, draws = 1000, 50, 2000
    U = random_basis(D, k, seed=5)
    values = torch.tensor(
        [mask_overlap(random_mask(D, k, seed=s), U) for s in range(draws)]
    )
    rows = U.square().sum(1)
    variance = float(rows.var(correction=0)) * (D - k) / (k * (D - 1))
    standard_error = math.sqrt(variance / draws)
    assert standard_error < 0.01 * k / D  # the "within 1%" of papers.md §5.1
    assert float(values.mean()) == pytest.approx(k / D, abs=4 * standard_error)


# ----------------------------------------------------------- overlap curve
def dense_curve(theta, U, ks, eigenspace="top_k"):
    """One magnitude mask, one mask matrix and one product per k."""
    out = []
    for k in ks:
        mask = magnitude_mask(theta, k)
        basis = U[:, :k] if eigenspace == "top_k" else U
        out.append(dense_overlap(mask, basis))
    return torch.tensor(out, dtype=torch.float64)


def test_overlap_curve_matches_dense_computation():
    D, K = 60, 12
    U = random_basis(D, K, seed=6)
    theta = torch.randn(D, generator=generator(7), dtype=torch.float64)
    ks = list(range(1, K + 1))
    curve = overlap_curve(theta, U, ks, num_random=3, seed=11)
    torch.testing.assert_close(curve.ks, torch.tensor(ks))
    torch.testing.assert_close(curve.magnitude, dense_curve(theta, U, ks))
    best = [dense_overlap(best_mask(U[:, :k], k), U[:, :k]) for k in ks]
    torch.testing.assert_close(curve.best, torch.tensor(best, dtype=torch.float64))
    assert bool((curve.best >= curve.magnitude - 1e-15).all())
    # random draw r: the prefixes of the r-th permutation of a CPU generator
    permutations = torch.Generator().manual_seed(11)
    for draw in range(3):
        order = torch.randperm(D, generator=permutations)[:K]
        expected = [dense_overlap(order[:k], U[:, :k]) for k in ks]
        torch.testing.assert_close(
            curve.random[draw], torch.tensor(expected, dtype=torch.float64)
        )
    torch.testing.assert_close(curve.random_mean, curve.random.mean(0))
    torch.testing.assert_close(curve.chance, torch.tensor(ks, dtype=torch.float64) / D)
    torch.testing.assert_close(curve.ratio, curve.magnitude / curve.chance)


def test_overlap_curve_with_the_whole_eigenbasis():
    D, K = 50, 6
    U = random_basis(D, K, seed=8)
    theta = torch.randn(D, generator=generator(9), dtype=torch.float64)
    ks = [1, 3, 6, 7, 20, 50]
    curve = overlap_curve(theta, U, ks, eigenspace="all", num_random=2)
    torch.testing.assert_close(curve.magnitude, dense_curve(theta, U, ks, "all"))
    best = [dense_overlap(best_mask(U, k), U) for k in ks]
    torch.testing.assert_close(curve.best, torch.tensor(best, dtype=torch.float64))
    chance = torch.tensor([max(k, K) / D for k in ks], dtype=torch.float64)
    torch.testing.assert_close(curve.chance, chance)
    assert float(curve.magnitude[-1]) == pytest.approx(1.0)  # every row: all of U


def test_overlap_curve_ties_follow_magnitude_mask():
    D, K = 40, 10
    U = random_basis(D, K, seed=10)
    theta = torch.randint(-2, 3, (D,), generator=generator(1)).double()
    ks = range(1, K + 1)
    curve = overlap_curve(theta, U, ks, best=False, num_random=0)
    torch.testing.assert_close(curve.magnitude, dense_curve(theta, U, ks))
    assert bool(curve.best.isnan().all())
    assert bool(curve.random_mean.isnan().all())
    assert curve.random.shape == (0, K)


def test_overlap_curve_sorts_and_deduplicates_ks():
    U = random_basis(30, 5, seed=11)
    theta = torch.randn(30, generator=generator(2), dtype=torch.float64)
    curve = overlap_curve(theta, U, torch.tensor([5, 2, 2, 1]), num_random=1)
    assert curve.ks.tolist() == [1, 2, 5]
    assert curve.magnitude.shape == curve.best.shape == (3,)


def test_overlap_curve_random_mean_is_chance():
    D, K, draws = 400, 40, 400
    U = random_basis(D, K, seed=12)
    theta = torch.randn(D, generator=generator(3), dtype=torch.float64)
    curve = overlap_curve(theta, U, [10, 40], num_random=draws, best=False)
    # 4 standard errors of the mean, with the exact variance of each k (see above)
    for index, k in enumerate((10, 40)):
        rows = U[:, :k].square().sum(1)
        variance = float(rows.var(correction=0)) * (D - k) / (k * (D - 1))
        tolerance = 4 * math.sqrt(variance / draws)
        assert float(curve.random_mean[index]) == pytest.approx(k / D, abs=tolerance)


def test_float32_accumulates_in_float64():
    D, K = 200_000, 4
    U64 = random_basis(D, K, seed=13)
    theta = torch.randn(D, generator=generator(4), dtype=torch.float64)
    ks = [1, 2, 4]
    single = overlap_curve(theta.float(), U64.float(), ks, num_random=2)
    double = overlap_curve(
        theta.float().double(), U64.float().double(), ks, num_random=2
    )
    for field in ("magnitude", "best", "random_mean"):
        torch.testing.assert_close(
            getattr(single, field), getattr(double, field), rtol=1e-6, atol=0
        )
    mask = magnitude_mask(theta, 4)
    assert mask_overlap(mask, U64.float()) == pytest.approx(
        mask_overlap(mask, U64), rel=1e-6
    )


# -------------------------------------------------------------- bad inputs
U0 = random_basis(10, 3, seed=0)
THETA = torch.randn(10, generator=generator(0), dtype=torch.float64)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: magnitude_mask(THETA, 0), ValueError, r"1 <= k <= 10. Got 0"),
        (lambda: magnitude_mask(THETA, 11), ValueError, r"1 <= k <= 10. Got 11"),
        (lambda: magnitude_mask(THETA, 2.0), TypeError, "k must be an int"),
        (lambda: magnitude_mask(THETA.reshape(2, 5), 2), ValueError, "must be 1-D"),
        (lambda: magnitude_mask([], 1), TypeError, "non-empty list"),
        (lambda: magnitude_mask("abc", 1), TypeError, "Got str"),
        (
            lambda: magnitude_mask(torch.tensor([1.0, math.nan]), 1),
            ValueError,
            "finite",
        ),
        (lambda: random_mask(10, 11), ValueError, r"1 <= k <= 10"),
        (lambda: random_mask(0, 1), ValueError, r"1 <= D"),
        (lambda: best_mask(2 * U0, 2), ValueError, "orthonormal"),
        (lambda: best_mask(U0, 11), ValueError, r"1 <= k <= 10"),
        (lambda: iou(torch.tensor([1, 1]), torch.tensor([1])), ValueError, "distinct"),
        (lambda: iou(torch.tensor([1.0]), torch.tensor([1])), TypeError, "integer"),
        (lambda: iou(torch.tensor([], dtype=torch.long), torch.tensor([1])),
         ValueError, "non-empty 1-D"),
        (lambda: mask_overlap(torch.tensor([0, 10]), U0), ValueError,
         r"indices in \[0, 10\). Got indices in \[0, 10\]"),
        (lambda: mask_overlap(torch.tensor([[0]]), U0), ValueError, "1-D"),
        (lambda: mask_overlap(torch.tensor([0]), U0.numpy()), TypeError, "ndarray"),
        (lambda: mask_overlap(torch.tensor([0]), U0[:, :1] + 0.1), ValueError,
         "orthonormal"),
        (lambda: overlap_curve(THETA[:9], U0, [1]), ValueError, "D=10 entries"),
        (lambda: overlap_curve(THETA, U0, []), ValueError, "at least one"),
        (lambda: overlap_curve(THETA, U0, [4]), ValueError, r"1 <= every k in ks <= 3"),
        (lambda: overlap_curve(THETA, U0, [1], eigenspace="some"), ValueError,
         "'top_k' or 'all'"),
        (lambda: overlap_curve(THETA, U0, [1], num_random=-1), ValueError,
         "num_random"),
        (lambda: overlap_curve(THETA.to("meta"), U0, [1]), ValueError, "same device"),
    ],
)  # fmt: skip
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_orthonormality_check_can_be_skipped_or_replaced_by_qr():
    skewed = U0 @ torch.tensor([[2.0, 1, 0], [0, 1, 0], [0, 0, 3]], dtype=U0.dtype)
    mask = torch.tensor([0, 4, 7])
    expected = mask_overlap(mask, U0)
    assert mask_overlap(mask, skewed, orthonormalize=True) == pytest.approx(expected)
    assert mask_overlap(mask, skewed, check=False) != pytest.approx(expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    D, K = 5000, 20
    U = random_basis(D, K, seed=14, dtype=dtype)
    theta = torch.randn(D, generator=generator(5), dtype=dtype)
    ks = [1, 5, 20]
    cpu = overlap_curve(theta, U, ks, num_random=3)
    gpu = overlap_curve(theta.cuda(), U.cuda(), ks, num_random=3)
    for field in ("magnitude", "best", "random_mean", "chance"):
        assert getattr(gpu, field).device.type == "cpu"
        torch.testing.assert_close(
            getattr(gpu, field), getattr(cpu, field), rtol=1e-6, atol=ATOL[dtype]
        )
    mask = magnitude_mask(theta.cuda(), 7)
    assert mask.device.type == "cuda"
    assert mask.tolist() == magnitude_mask(theta, 7).tolist()
    assert best_mask(U.cuda(), 7).tolist() == best_mask(U, 7).tolist()
    assert random_mask(D, 7, seed=1, device="cuda").tolist() == (
        random_mask(D, 7, seed=1).tolist()
    )
    assert mask_overlap(mask, U.cuda()) == pytest.approx(
        mask_overlap(mask.cpu(), U), rel=1e-6
    )


def test_inputs_are_not_modified():
    U = random_basis(300, 6, seed=15)
    theta = torch.randn(300, generator=generator(6), dtype=torch.float64)
    U_copy, theta_copy = U.clone(), theta.clone()
    overlap_curve(theta, U, [1, 3, 6], num_random=2)
    overlap_curve(theta, U, [1, 3, 20], eigenspace="all", num_random=2)
    best_mask(U, 4)
    mask_overlap(torch.tensor([1, 5]), U)
    magnitude_mask(theta, 5)
    assert torch.equal(U, U_copy)
    assert torch.equal(theta, theta_copy)

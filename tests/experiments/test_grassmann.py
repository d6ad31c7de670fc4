"""The synthetic Grassmannian study: planted values, chance values, seeding."""

import math

import pytest
import torch

from curvlab.experiments.grassmann import (
    PAPER_CHANCE_0_2,
    QUANTITIES,
    chance_comparison,
    grassmann_study,
    pair_values,
    scenario_pair,
)
from curvlab.subspace import METRICS, principal_angles

SMALL = {"dims": (40, 80), "ratios": (0.1, 0.25), "planted": (0.5,), "num_trials": 2}


@pytest.fixture(scope="module")
def small_result():
    return grassmann_study(**SMALL)


def test_cells_and_labels(small_result):
    assert len(small_result.cells) == 2 * 4 * 2
    assert small_result.skipped == ()
    labels = {cell.label for cell in small_result.cells}
    assert labels == {"random", "mask", "rotated 0.5", "shared 0.5"}
    for cell in small_result.cells:
        assert cell.k == round(cell.ratio * cell.D)
        assert set(cell.values) == set(QUANTITIES)
        assert all(len(v) == 2 for v in cell.values.values())
        assert all(0.0 <= x <= 1.0 for v in cell.values.values() for x in v)


def test_rotated_scenario_has_exact_values(small_result):
    phi = math.acos(math.sqrt(0.5))
    for cell in small_result.cells:
        if cell.scenario != "rotated":
            continue
        k = cell.k
        expected = {
            "geodesic": phi / (math.pi / 2),
            "chordal_2": 2 * math.sin(phi / 2) / math.sqrt(2),
            "chordal_F": 2 * math.sin(phi / 2) / math.sqrt(2),
            "projection_2": math.sin(phi),
            "projection_F": math.sin(phi),
            "fubini_study": math.acos(math.cos(phi) ** k) / (math.pi / 2),
            "binet_cauchy": math.sqrt(1 - math.cos(phi) ** (2 * k)),
            "martin": 1 - math.cos(phi) ** 2,
            "overlap": 0.5,
        }
        for quantity, value in expected.items():
            assert cell.mean(quantity) == pytest.approx(value, abs=1e-12), quantity
            assert cell.std(quantity) < 1e-12


def test_shared_scenario_shares_directions():
    D, k, p = 60, 10, 0.3
    U, V = scenario_pair("shared", D, k, p, seed=1)
    torch.testing.assert_close(U.T @ U, torch.eye(k, dtype=torch.float64))
    torch.testing.assert_close(V.T @ V, torch.eye(k, dtype=torch.float64))
    angles = principal_angles(U, V)
    assert int((angles < 1e-7).sum()) == 3
    ov = pair_values(U, V)["overlap"]
    assert 0.3 <= ov <= 1.0
    assert pair_values(*scenario_pair("shared", D, k, 1.0, seed=1))["overlap"] == (
        pytest.approx(1.0)
    )


def test_mask_scenario_is_a_mask():
    U, V = scenario_pair("mask", 30, 5, None, seed=2)
    assert set(U.unique().tolist()) == {0.0, 1.0}
    assert U.sum(0).tolist() == [1.0] * 5
    torch.testing.assert_close(V.T @ V, torch.eye(5, dtype=torch.float64))


def test_seeding_is_per_cell(small_result):
    again = grassmann_study(**SMALL)
    alone = grassmann_study(
        dims=(80,), ratios=(0.25,), planted=(0.5,), num_trials=2, seed=0
    )
    other_seed = grassmann_study(**{**SMALL, "seed": 1})
    cell = small_result.find("mask", 0.25, 80)
    assert again.find("mask", 0.25, 80).values == cell.values
    assert alone.find("mask", 0.25, 80).values == cell.values
    assert other_seed.find("mask", 0.25, 80).values != cell.values


def test_chance_values_at_ratio_0_2():
    """papers.md §1.2: normalised chance values for k/D = 0.2."""
    result = grassmann_study(dims=(1000,), ratios=(0.2,), planted=(), num_trials=2)
    rows = {
        q: (paper, rand, mask) for q, paper, rand, mask in chance_comparison(result)
    }
    assert list(rows) == list(QUANTITIES)
    for quantity in ("geodesic", "chordal_F", "projection_F", "overlap"):
        paper, rand, mask = rows[quantity]
        assert paper == PAPER_CHANCE_0_2[quantity]
        assert rand == pytest.approx(paper, abs=0.003)
        assert mask == pytest.approx(paper, abs=0.003)
    for quantity in ("chordal_2", "projection_2", "fubini_study"):
        _, rand, mask = rows[quantity]
        assert rand > 0.998
        assert mask > 0.998
    assert rows["binet_cauchy"][0] is None


def test_rotated_needs_room():
    result = grassmann_study(dims=(20,), ratios=(0.75,), planted=(0.5,), num_trials=1)
    assert [c.label for c in result.cells] == ["random", "mask", "shared 0.5"]
    assert result.skipped == ("rotated 0.5 at D=20, k=15: needs 2k <= D",)


def test_progress_is_reported():
    calls = []
    grassmann_study(
        dims=(20, 30),
        ratios=(0.1,),
        planted=(),
        num_trials=1,
        on_progress=lambda event: calls.append((event.kind, event.index, event.total)),
    )
    assert calls == [("cell", 1, 4), ("cell", 2, 4), ("cell", 3, 4), ("cell", 4, 4)]


def test_pair_values_orders_metrics():
    U, V = scenario_pair("random", 30, 4, None, seed=3)
    assert list(pair_values(U, V)) == [*METRICS, "overlap"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dims": ()}, "dims must be positive"),
        ({"dims": (0,)}, "dims must be positive"),
        ({"ratios": (0.0,)}, r"ratios must lie in \(0, 1\]"),
        ({"ratios": (1.5,)}, r"ratios must lie in \(0, 1\]"),
        ({"planted": (2.0,)}, r"planted values must lie in \[0, 1\]"),
        ({"num_trials": 0}, "num_trials must be at least 1"),
    ],
)
def test_study_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grassmann_study(**{"dims": (20,), "ratios": (0.1,), **kwargs})


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("cosine", 10, 2, None), "scenario must be one of"),
        (("rotated", 10, 2, None), "needs a planted value"),
        (("random", 10, 2, 0.5), "takes no planted value"),
        (("shared", 10, 2, -0.1), r"planted must lie in \[0, 1\]"),
        (("rotated", 10, 6, 0.5), "needs 2k <= D"),
        (("mask", 10, 11, None), "needs 1 <= k <= D"),
    ],
)
def test_scenario_pair_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        scenario_pair(*args, seed=0)


def test_chance_comparison_needs_the_ratio(small_result):
    with pytest.raises(ValueError, match="no random and mask cells at ratio 0.2"):
        chance_comparison(small_result, 0.2)
    rows = chance_comparison(small_result, 0.25)
    assert all(paper is None for _, paper, _, _ in rows)

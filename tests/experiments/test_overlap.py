"""Overlap over training: stored tables, recomputation, resume, exact vs sketch."""

import dataclasses
import math

import pytest
import torch

from curvlab.experiments.eigenbasis import default_num_outer
from curvlab.experiments.overlap import (
    OverlapSettings,
    OverlapSettingsError,
    curve_rows,
    load_overlap,
    mask_seed,
    overlap_at_step,
    overlap_run,
    resolve_overlap_settings,
)
from curvlab.experiments.overlap_plots import plot_overlap
from curvlab.experiments.training import train
from curvlab.operators import HessianOperator
from curvlab.problems import BatchedData, balanced_subset
from curvlab.runs import MissingStepError, RunFolder, TrainConfig
from curvlab.runs.folder import TEMP_PREFIX
from curvlab.subspace import overlap_curve

D = 650  # digits_logreg
# 2 samples per class: 20 samples, a Hessian of rank <= 20 * 9 = 180 < D
SMALL = {"samples_per_class": 2, "num_random": 3}


def _train(folder, dtype="float64"):
    config = TrainConfig(
        problem="digits_logreg",
        steps=4,
        batch_size=10,
        num_samples=100,
        record_steps=(0, 4),
        lr=0.5,
        dtype=dtype,
    )
    return train(config, folder).run


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A tiny run (2 recorded steps) with the exact overlap stored."""
    run = _train(tmp_path_factory.mktemp("overlap") / "run")
    result = overlap_run(run, OverlapSettings(num_outer=20, **SMALL))
    return run, result


def test_end_to_end_stores_tables_json_and_manifest(measured):
    run, result = measured
    assert result.stage == "overlap_train"
    assert result.computed == (0, 4)
    assert result.settings.method == "exact"
    assert run.done_steps("overlap_train") == [0, 4]
    rows = run.read_table("overlap_train/all.csv")
    assert [(r["step"], r["k"]) for r in rows] == [
        (s, k) for s in (0, 4) for k in range(1, 21)
    ]
    for row in rows:
        assert row["chance"] == pytest.approx(row["k"] / D, rel=1e-15)
        assert 0 <= row["magnitude"] <= row["best"] + 1e-12 <= 1 + 1e-12
        assert row["random_min"] <= row["random_mean"] <= row["random_max"]
        assert row["ratio"] == pytest.approx(row["magnitude"] / row["chance"])
    summaries = run.read_table("overlap_train/summary.csv")
    assert [s["step"] for s in summaries] == [0, 4]
    summary = run.read_json("overlap_train/step_00000004.json")
    values = summary["eigenvalues"]
    assert len(values) == 20
    assert all(abs(a) >= abs(b) for a, b in zip(values, values[1:], strict=False))
    assert summary["hessian"]["num_samples"] == 20
    assert summary["settings"]["seed"] == run.config.seed
    # exact method: the error is the tail of the spectrum, the trace is exact
    error = summary["a_posteriori"]
    assert error["kind"] == "exact"
    assert error["scree_lower"][0] == pytest.approx(1.0)
    assert error["scree_lower"][20] == pytest.approx(error["relative_error"] ** 2)
    assert summary["frobenius_norm"] ** 2 >= sum(v * v for v in values)
    assert summary["trace"] > 0  # logistic regression: H is PSD
    assert summary["fraction_negative_beyond_rounding"] == 0.0
    assert summary["num_matvecs"]["eigendecomposition"] == D
    entry = run.entry("overlap_train", 4)
    assert entry["info"]["settings"] == summary["settings"]
    assert not list(run.path.rglob(TEMP_PREFIX + "*"))
    rows_4, summaries = load_overlap(run)
    assert sorted(summaries) == [0, 4]
    assert len(rows_4) == 40


def test_stored_tables_match_a_direct_recomputation(measured):
    run, _ = measured
    problem = run.problem()
    run.load_into(problem.model, 4)
    data = problem.train_data
    indices = balanced_subset(data.y, 20, 10)
    subset = BatchedData(data.X[indices], data.y[indices], 20)
    H = HessianOperator(problem.model, problem.loss_fn, subset).to_dense()
    values, vectors = torch.linalg.eigh((H + H.mT) / 2)
    order = torch.argsort(values.abs(), descending=True, stable=True)[:20]
    params = run.load_parameters(4, flat=True)
    curve = overlap_curve(
        params, vectors[:, order], range(1, 21), num_random=3, seed=mask_seed(0, 4)
    )
    stored = run.read_table("overlap_train/step_00000004.csv")
    for row, want in zip(stored, curve_rows(4, curve, values[order]), strict=True):
        for key in ("magnitude", "best", "random_mean", "random_max", "eigenvalue"):
            assert row[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    summary = run.read_json("overlap_train/step_00000004.json")
    assert summary["trace"] == pytest.approx(float(torch.trace(H)), rel=1e-10)


def test_same_seed_gives_the_same_numbers(measured, tmp_path):
    run, _ = measured
    settings = OverlapSettings(method="sketch", num_outer=15, num_inner=30, **SMALL)
    first = overlap_at_step(run, 4, settings)
    second = overlap_at_step(run, 4, settings)
    assert first.rows == second.rows
    assert first.summary["a_posteriori"] == second.summary["a_posteriori"]
    other = overlap_at_step(run, 4, dataclasses.replace(settings, seed=7))
    assert other.rows != first.rows
    # a second run folder trained the same way stores the same table, byte for byte
    twin = _train(tmp_path / "twin")
    overlap_run(twin, OverlapSettings(num_outer=20, **SMALL), steps="4")
    a = (run.path / "overlap_train/step_00000004.csv").read_bytes()
    assert (twin.path / "overlap_train/step_00000004.csv").read_bytes() == a


def test_resume_skips_finished_steps_and_refuses_other_settings(measured):
    run, _ = measured
    csv = run.path / "overlap_train/step_00000000.csv"
    before = csv.stat().st_mtime_ns
    run.unmark("overlap_train", 4)  # as if interrupted before step 4 finished
    result = overlap_run(run)  # no settings: the stored ones
    assert result.computed == (4,)
    assert result.skipped == (0,)
    assert result.settings.num_outer == 20
    assert csv.stat().st_mtime_ns == before
    again = overlap_run(run, OverlapSettings(num_outer=20))
    assert again.computed == ()
    assert again.skipped == (0, 4)
    assert sorted(again.summaries) == [0, 4]
    with pytest.raises(OverlapSettingsError, match="num_outer: 20 -> 10"):
        overlap_run(run, OverlapSettings(num_outer=10))
    with pytest.raises(MissingStepError, match="Recorded steps: \\[0, 4\\]"):
        overlap_run(run, steps="2")


def test_exact_and_sketch_agree_within_the_sketch_error(measured):
    run, _ = measured
    exact = overlap_at_step(run, 4, OverlapSettings(method="exact", num_outer=190))
    sketch = overlap_at_step(
        run, 4, OverlapSettings(method="sketch", num_outer=190, num_inner=380)
    )
    error = sketch.summary["a_posteriori"]
    assert error["kind"] == "estimate"
    assert error["num_probes"] == 30
    assert [b["epsilon"] for b in error["bounds"]] == [0.1, 0.25, 0.5, 1.0]
    assert error["relative_error"] < 1e-10  # rank 180 < K: captured exactly
    top = 150
    gap = (exact.basis.eigenvalues[:top] - sketch.basis.eigenvalues[:top]).abs()
    assert float(gap.max()) <= 2 * error["error"] + 1e-12  # Weyl: <= ||H - H^||
    for a, b in zip(exact.rows[:top], sketch.rows[:top], strict=True):
        assert a["magnitude"] == pytest.approx(b["magnitude"], abs=1e-8)
        assert a["best"] == pytest.approx(b["best"], abs=1e-8)
    # an under-sized sketch is certified as such
    small = overlap_at_step(
        run, 4, OverlapSettings(method="sketch", num_outer=10, num_inner=20)
    )
    relative = small.summary["a_posteriori"]["relative_error"]
    exact_relative = math.sqrt(
        sum(v * v for v in exact.basis.all_eigenvalues[10:].tolist())
        / exact.summary["a_posteriori"]["op_norm_sq"]
    )
    assert relative >= 0.5 * exact_relative  # no sketch beats the best rank-10


def test_settings_resolution_and_refusals(measured):
    run, _ = measured
    assert default_num_outer(D) == 32
    auto = resolve_overlap_settings(
        run, OverlapSettings(split="test", max_exact_dim=100), num_params=D, stored={}
    )
    assert auto.method == "sketch"
    assert auto.num_inner == 64
    assert auto.test_matrix == "ssrft"
    assert auto.seed == 0
    with pytest.raises(ValueError, match="above max_exact_dim=100"):
        resolve_overlap_settings(
            run, OverlapSettings(method="exact", max_exact_dim=100), num_params=D
        )
    with pytest.raises(ValueError, match="num_inner must lie in"):
        resolve_overlap_settings(
            run, OverlapSettings(method="sketch", num_outer=10, num_inner=5)
        )
    with pytest.raises(ValueError, match="split must be one of"):
        resolve_overlap_settings(run, OverlapSettings(split="valid"))
    with pytest.raises(ValueError, match="Pass at most"):
        overlap_at_step(run, 0, OverlapSettings(samples_per_class=11, num_outer=5))


def test_test_split_and_plots(measured):
    run, _ = measured
    result = overlap_run(
        run,
        OverlapSettings(split="test", method="sketch", num_outer=12, **SMALL),
    )
    assert result.stage == "overlap_test"
    assert result.computed == (0, 4)
    assert result.summaries[0]["hessian"]["split"] == "test"
    paths = plot_overlap(run.path)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        f"overlap_{split}_{kind}.png"
        for split in ("train", "test")
        for kind in ("vs_k", "vs_step", "ratio")
    )
    for path in paths:
        assert path.parent == run.path / "plots"
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 10_000
    assert not list((run.path / "plots").glob(TEMP_PREFIX + "*"))


def test_plot_without_results_is_refused(tmp_path):
    run = RunFolder.create(tmp_path / "empty", TrainConfig(problem="digits_logreg"))
    with pytest.raises(FileNotFoundError, match="curvlab overlap --run"):
        plot_overlap(run)


@pytest.mark.slow
def test_mnist_mini_sketched_overlap_is_above_chance(tmp_path):
    """SEIGH on mnist5k_mini (D = 7030) at init, the paper's budget K=355, s=710."""
    config = TrainConfig(problem="mnist5k_mini", steps=1, batch_size=500, lr=0.3)
    run = train(config, tmp_path / "run").run
    settings = OverlapSettings(
        split="test", method="auto", samples_per_class=50, max_exact_dim=5000
    )
    result = overlap_run(run, settings, steps="0")
    summary = result.summaries[0]
    assert result.settings.method == "sketch"
    assert result.settings.num_outer == 352  # 5% of D
    assert result.settings.num_inner == 704
    at = summary["overlap_at_num_outer"]
    assert 1.5 < at["ratio"] < 4.0  # paper: 2.68 at step 0 (test)
    assert at["magnitude"] < at["best"]
    assert 0.1 < summary["eigenvalues"][0] < 1.0
    assert summary["a_posteriori"]["relative_error"] < 0.6

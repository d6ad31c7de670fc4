"""The demo end to end in its quick configuration: stages, resume, report numbers."""

import re
import shutil

import pytest

from curvlab.experiments.demo import (
    DEMO_STAGES,
    DemoSettings,
    default_record_steps,
    demo_run,
    quick_settings,
)
from curvlab.experiments.report import fmt
from curvlab.experiments.spectrum import read_spectrum
from curvlab.runs import ConfigMismatchError, RunFolder


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    events = []
    report, summary = demo_run(out, quick_settings(), on_progress=events.append)
    return out, report, summary, events


def test_every_stage_runs_and_reports_progress(quick_run):
    out, report, summary, events = quick_run
    assert list(summary["stages"]) == list(DEMO_STAGES)
    assert all(s["status"] == "computed" for s in summary["stages"].values())
    for stage in DEMO_STAGES:
        kinds = [e.kind for e in events if e.stage == stage]
        assert kinds[0] == "start"
        assert kinds[-1] == "done"
    assert report == out / "report.md"
    assert report.is_file()
    assert summary["html"].is_file()
    run = RunFolder.open(out)
    steps = [0, 20]
    assert run.recorded_steps() == steps
    for stage in ("spectrum", "overlap_train", "exhaustive_train"):
        assert run.done_steps(stage) == steps
    assert run.is_done("hesscale_quality")
    assert run.is_done("report")


def test_rerun_skips_every_stage(quick_run, tmp_path):
    out, report, _, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = (copy / "report.md").read_text()
    manifest = RunFolder.open(copy).manifest()
    _, summary = demo_run(copy, quick_settings())
    assert all(s["status"] == "skipped" for s in summary["stages"].values())
    assert RunFolder.open(copy).manifest() == manifest  # nothing recomputed
    assert (copy / "report.md").read_text() == before


def test_a_missing_report_is_rewritten_without_recomputing(quick_run, tmp_path):
    out, _, _, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "report.md").unlink()
    _, summary = demo_run(copy, quick_settings())
    statuses = {name: s["status"] for name, s in summary["stages"].items()}
    assert statuses.pop("report") == "computed"
    assert set(statuses.values()) == {"skipped"}
    rewritten = (copy / "report.md").read_text().split("## Wall time")[0]
    assert rewritten == (out / "report.md").read_text().split("## Wall time")[0]


def test_report_numbers_equal_the_stored_ones(quick_run):
    out, report, summary, _ = quick_run
    text = report.read_text()
    run = RunFolder.open(out)
    for step in (0, 20):
        top = max(read_spectrum(run, step).spectra["hessian"].full.top_eigenvalues)
        assert f"at step {step} the top eigenvalue is {fmt(float(top))}" in text
    overlap = run.read_table("overlap_train/summary.csv")
    last = overlap[-1]
    k = last["overlap_k"]
    assert (
        f"At step 20 the magnitude mask of size k = {k} overlaps the top-{k} "
        f"eigenspace {fmt(last['overlap_ratio'])} times chance"
    ) in text
    exhaustive = run.read_table("exhaustive_train/summary.csv")[-1]
    assert (
        f"finds the top eigenvalue {fmt(exhaustive['lambda_1_sketch'])} against "
        f"{fmt(exhaustive['lambda_1_exact'])} exactly"
    ) in text
    metrics = {row["step"]: row for row in run.metrics()}
    assert f"to {fmt(metrics[20]['train_loss'])}" in text
    stored = run.read_json("hesscale_quality/result.json")
    assert f"From best to worst: {', '.join(stored['ranking'])}." in text
    assert (
        summary["findings"]["overlap"]["overlap_ratio"]["20"] == last["overlap_ratio"]
    )


def test_report_links_only_existing_figures(quick_run):
    out, report, summary, _ = quick_run
    text = report.read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(linked) == 9
    assert len(set(linked)) == len(linked)
    for path in linked:
        assert (out / path).is_file()
        assert path.endswith(".png")
    assert sorted(p.name for p in summary["figures"]) == sorted(
        p.rsplit("/", 1)[-1] for p in linked
    )
    page = summary["html"].read_text()
    assert all(f'src="{path}"' in page for path in linked)


def test_other_training_settings_are_refused(quick_run, tmp_path):
    out, _, _, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    settings = quick_settings(seed=1)
    with pytest.raises(ConfigMismatchError):
        demo_run(copy, settings)


def test_default_settings_are_the_documented_ones():
    settings = DemoSettings()
    assert settings.problem == "digits_mlp"
    assert (
        settings.steps_recorded
        == default_record_steps(1000)
        == (
            0,
            50,
            200,
            500,
            1000,
        )
    )
    assert settings.spectrum.layers
    assert settings.train_config().lr == 0.1
    assert default_record_steps(0) == (0,)
    with pytest.raises(ValueError, match="steps"):
        default_record_steps(-1)

"""``curvlab pipeline``: train, measure, solve and overlap from one config."""

import pytest
from typer.testing import CliRunner

from curvlab.cli.app import app
from curvlab.cli.pipeline import load_pipeline
from curvlab.runs import RunFolder

runner = CliRunner()

CONFIG = """\
train:
  problem: digits_logreg
  num_samples: 100
  batch_size: 10
  steps: 4
  record_steps: "0,4"
  dtype: float64
overlap:
  splits: [train, test]
  num_outer: 6
  num_inner: 14
  samples_per_class: 2
  num_random: 2
  num_probes: 4
"""


def test_pipeline_runs_every_stage_and_resumes(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "run"
    args = ["pipeline", "--config", str(config), "--out", str(out)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    run = RunFolder.open(out)
    for split in ("train", "test"):
        assert run.done_steps(f"sketch_{split}") == [0, 4]
        assert run.done_steps(f"sketch_solve_{split}") == [0, 4]
        assert run.done_steps(f"overlap_{split}") == [0, 4]
        rows = run.read_table(f"overlap_{split}/all.csv")
        assert len(rows) == 2 * 6  # k = 1..6 at both steps
    entry = run.entry("overlap_test", 4)
    assert entry["info"]["settings"]["method"] == "distributed"
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "Nothing to do" in again.output


def test_bad_configs_are_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {}\nsketch: {}\n")
    with pytest.raises(ValueError, match="sections 'train' and 'overlap'"):
        load_pipeline(path)
    path.write_text("overlap:\n  num_outerr: 3\n")
    with pytest.raises(ValueError, match=r"unknown overlap keys \['num_outerr'\]"):
        load_pipeline(path)
    result = runner.invoke(
        app, ["pipeline", "--config", str(tmp_path / "no.yaml"), "--out", "x"]
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output

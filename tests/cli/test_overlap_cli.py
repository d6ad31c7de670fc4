"""``curvlab overlap`` and ``curvlab exhaustive``: tables, resume, refusals."""

import pytest
from typer.testing import CliRunner

from curvlab.cli.app import app
from curvlab.experiments.overlap_plots import plot_overlap
from curvlab.runs import RunFolder

runner = CliRunner()

SMALL = ["--samples-per-class", "2", "--num-random", "2"]


def _invoke(*args):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run trained through the CLI: steps 0 and 4 recorded."""
    out = tmp_path_factory.mktemp("cli") / "run"
    result = _invoke(
        "train",
        "--problem",
        "digits_logreg",
        "--num-samples",
        "100",
        "--batch-size",
        "10",
        "--steps",
        "4",
        "--record-steps",
        "0",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    return out


def test_overlap_measures_prints_and_resumes(run_dir):
    result = _invoke("overlap", "--run", str(run_dir), "--num-outer", "12", *SMALL)
    assert result.exit_code == 0, result.output
    for text in ("overlap_train", "exact eigh", "ov@10", "ov@12", "best@12", "step 4:"):
        assert text in result.output
    run = RunFolder.open(run_dir)
    assert run.done_steps("overlap_train") == [0, 4]
    assert len(run.read_table("overlap_train/all.csv")) == 24

    again = _invoke("overlap", "--run", str(run_dir))  # the stored settings
    assert again.exit_code == 0, again.output
    assert "Nothing to do" in again.output
    assert "Already done: steps [0, 4]" in again.output

    other = _invoke("overlap", "--run", str(run_dir), "--num-outer", "8")
    assert other.exit_code == 2
    assert "num_outer: 12 -> 8" in other.output
    assert "--force" in other.output

    forced = _invoke(
        "overlap", "--run", str(run_dir), "--num-outer", "8", "--steps", "4", "--force"
    )
    assert forced.exit_code == 0, forced.output
    assert "ov@8" in forced.output
    paths = plot_overlap(run_dir)
    assert all(p.stat().st_size > 0 for p in paths)


def test_overlap_with_the_sketch_on_the_test_split(run_dir):
    result = _invoke(
        "overlap",
        "--run",
        str(run_dir),
        "--split",
        "test",
        "--method",
        "sketch",
        "--num-outer",
        "10",
        "--num-inner",
        "25",
        "--test-matrix",
        "gaussian",
        "--num-probes",
        "10",
        "--steps",
        "0",
        *SMALL,
    )
    assert result.exit_code == 0, result.output
    assert "SEIGH (25 products, gaussian)" in result.output
    assert "estimated from 10 Gaussian probes" in result.output
    summary = RunFolder.open(run_dir).read_json("overlap_test/step_00000000.json")
    assert summary["a_posteriori"]["kind"] == "estimate"
    assert summary["num_matvecs"] == {
        "eigendecomposition": 25,
        "a_posteriori": 10,
        "total": 35,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "2"], "Steps [2] are not recorded"),
        (["--split", "valid"], "split must be one of train, test"),
        (["--method", "dense"], "method must be one of exact, sketch, auto"),
        (["--method", "exact", "--max-exact-dim", "100"], "above max_exact_dim=100"),
        (["--samples-per-class", "50"], "Pass at most 10"),
        (["--num-outer", "5", "--num-inner", "3", "--method", "sketch"], "num_inner"),
    ],
)
def test_overlap_refuses_bad_options(run_dir, args, message):
    result = _invoke("overlap", "--run", str(run_dir), "--force", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_overlap_refuses_a_folder_that_is_no_run(tmp_path):
    result = _invoke("overlap", "--run", str(tmp_path))
    assert result.exit_code == 2
    assert "is not a curvlab run folder" in " ".join(result.output.split())


def test_exhaustive_prints_resumes_and_refuses_large_problems(run_dir):
    args = ["--run", str(run_dir), "--samples-per-class", "2"]
    result = _invoke("exhaustive", *args, "--num-outer", "10", "--num-inner", "20")
    assert result.exit_code == 0, result.output
    for text in ("exhaustive_train", "basis ov", "error est", "step 4: basis"):
        assert text in result.output
    assert RunFolder.open(run_dir).done_steps("exhaustive_train") == [0, 4]
    again = _invoke("exhaustive", "--run", str(run_dir))
    assert again.exit_code == 0, again.output
    assert "Nothing to do" in again.output
    refused = _invoke("exhaustive", "--run", str(run_dir), "--max-dim", "100")
    assert refused.exit_code == 2
    assert "above the limit max_dim=100" in " ".join(refused.output.split())

"""``curvlab trace``: Hutch++ traces over training against the dense traces."""

import shutil

import pytest
import torch
from typer.testing import CliRunner

from curvlab.cli.app import app
from curvlab.experiments.eigenbasis import hessian_subset
from curvlab.experiments.trace import TraceSettings, TraceStage
from curvlab.experiments.training import train
from curvlab.operators import GGNOperator, HessianOperator
from curvlab.runs import RunFolder, TrainConfig
from curvlab.runs.stage import SettingsConflictError, run_stage

runner = CliRunner()
SUBSET = 2  # samples per class: 20 samples of digits_logreg (D = 650)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = TrainConfig(
        problem="digits_logreg",
        steps=4,
        batch_size=10,
        num_samples=100,
        record_steps=(0,),
        dtype="float64",
    )
    return train(config, tmp_path_factory.mktemp("trace") / "run").run


def _dense_traces(run, step):
    """tr H and tr G from the dense float64 matrices on the stage's subset."""
    problem = run.problem()
    model = run.load_into(problem.model, step).double().eval()
    data, _ = hessian_subset(problem, "train", SUBSET, dtype=torch.float64)
    return {
        "hessian": HessianOperator(model, problem.loss_fn, data).to_dense().trace(),
        "ggn": GGNOperator(model, problem.loss_fn, data).to_dense().trace(),
    }


def test_exact_once_the_sketch_spans_the_space(run):
    # Hutch++ is exact when its m // 3 sketch columns span R^D (D = 650)
    settings = TraceSettings(num_matvecs=3 * 650, samples_per_class=SUBSET)
    result = run_stage(TraceStage(run, settings, run.problem()))
    assert result.computed == (0, 4)
    for step in (0, 4):
        truth = _dense_traces(run, step)
        rows = {row["operator"]: row for row in result.results[step].rows}
        for name in ("hessian", "ggn"):
            # rounding of a float64 QR and 650 products: 1e-9 relative is loose
            assert rows[name]["trace"] == pytest.approx(float(truth[name]), rel=1e-9)
    stored = run.read_table(run.path_for("trace", None, ".csv"))
    assert [(r["step"], r["operator"]) for r in stored] == [
        (0, "hessian"),
        (0, "ggn"),
        (4, "hessian"),
        (4, "ggn"),
    ]


def test_cli_error_bars_cover_the_truth_and_resume(tmp_path, run):
    out = tmp_path / "copy"
    shutil.copytree(run.path, out)
    shutil.rmtree(out / "trace")
    shutil.rmtree(out / "manifest" / "trace")
    args = ["trace", "--run", str(out), "--samples-per-class", str(SUBSET)]
    first = runner.invoke(app, [*args, "--num-matvecs", "60"])
    assert first.exit_code == 0, first.output
    assert "hessian_trace" in first.output
    assert (out / "plots" / "trace.png").read_bytes()[:4] == b"\x89PNG"
    rows = RunFolder.open(out).read_table("trace/all.csv")
    for row in rows:
        truth = float(_dense_traces(run, row["step"])[row["operator"]])
        # an unbiased estimate with its standard error: within 4 of them
        assert abs(row["trace"] - truth) <= 4 * row["std_error"]
        assert row["num_matvecs"] == 60
    again = runner.invoke(app, args)  # resumes with the stored settings
    assert again.exit_code == 0, again.output
    assert "Already done: steps [0, 4]" in again.output
    changed = runner.invoke(app, [*args, "--num-matvecs", "90"])
    assert changed.exit_code == 2
    assert "num_matvecs: 60 -> 90" in " ".join(changed.output.split())


def test_settings_conflict_names_the_setting(run):
    with pytest.raises(SettingsConflictError, match="samples_per_class"):
        run_stage(TraceStage(run, TraceSettings(samples_per_class=3), run.problem()))
    with pytest.raises(ValueError, match="num_matvecs must be >= 3"):
        TraceStage(run, TraceSettings(num_matvecs=2), run.problem())

"""``curvlab tic``: TIC over training against the dense tr((G + δI)⁻¹ C)."""

import pytest
import torch
from typer.testing import CliRunner

from curvlab.cli.app import app
from curvlab.experiments.eigenbasis import hessian_subset
from curvlab.experiments.training import train
from curvlab.operators import GGNOperator, GradientCovarianceOperator
from curvlab.runs import TrainConfig

runner = CliRunner()


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
    return train(config, tmp_path_factory.mktemp("tic") / "run").run


def _dense_tic(run, step, damping):
    problem = run.problem()
    model = run.load_into(problem.model, step).double().eval()
    data, _ = hessian_subset(problem, "train", 2, dtype=torch.float64)
    G = GGNOperator(model, problem.loss_fn, data).to_dense()
    C = GradientCovarianceOperator(model, problem.loss_fn, data).to_dense()
    eye = torch.eye(G.shape[0], dtype=torch.float64)
    return float(torch.linalg.solve(G + damping * eye, C).trace()), data.num_samples


def test_tic_within_its_error_bar_and_resumes(run):
    args = ["tic", "--run", str(run.path), "--samples-per-class", "2"]
    result = runner.invoke(app, [*args, "--damping", "0.01", "--num-probes", "30"])
    assert result.exit_code == 0, result.output
    assert (run.path / "plots" / "tic.png").read_bytes()[:4] == b"\x89PNG"
    rows = run.read_table("tic/all.csv")
    assert [row["step"] for row in rows] == [0, 4]
    for row in rows:
        exact, num = _dense_tic(run, row["step"], 0.01)
        # Hutch++ is unbiased; its standard error bounds the probe noise (4 of
        # them), CG to 1e-8 adds far less
        assert abs(row["tic"] - exact) <= 4 * row["std_error"]
        assert row["num_data"] == num
        assert row["gap"] == pytest.approx(row["tic"] / num, rel=1e-12)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "Already done: steps [0, 4]" in again.output
    refused = runner.invoke(app, [*args, "--damping", "0.1"])
    assert refused.exit_code == 2
    assert "damping: 0.01 -> 0.1" in " ".join(refused.output.split())


def test_bad_damping(run):
    result = runner.invoke(app, ["tic", "--run", str(run.path), "--damping", "0"])
    assert result.exit_code == 2
    assert "damping must be a number > 0" in " ".join(result.output.split())

"""The Typer app: commands, exit codes and what they print."""

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import curvlab
from curvlab.cli import check as check_module
from curvlab.cli.app import app
from curvlab.experiments.check import CheckReport, OperatorCheck

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"curvlab {curvlab.__version__}"


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "check" in result.output
    assert "demo" in result.output


def test_python_dash_m():
    result = subprocess.run(
        [sys.executable, "-m", "curvlab", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"curvlab {curvlab.__version__}"


def test_check_a_problem():
    result = runner.invoke(
        app, ["check", "--problem", "digits_logreg", "--num-samples", "100"]
    )
    assert result.exit_code == 0, result.output
    assert "650 parameters" in result.output
    assert "100 train samples" in result.output
    assert result.output.count("OK") >= 5
    for name in ("Hessian", "GGN", "Fisher (exact)", "Empirical Fisher"):
        assert name in result.output
    assert "All operators OK" in result.output


def test_check_unknown_problem_names_the_available_ones():
    result = runner.invoke(app, ["check", "--problem", "no_such_problem"])
    assert result.exit_code == 2
    assert "Unknown problem 'no_such_problem'" in result.output
    assert "digits_mlp" in result.output
    assert "synthetic_regression" in result.output


def test_check_rejects_an_unknown_dtype():
    result = runner.invoke(app, ["check", "--problem", "digits_mlp", "--dtype", "int8"])
    assert result.exit_code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_check_without_cuda():
    result = runner.invoke(
        app, ["check", "--problem", "digits_logreg", "--device", "cuda"]
    )
    assert result.exit_code == 2
    assert "CUDA is not available" in result.output


def test_check_fails_when_an_operator_fails(monkeypatch):
    def failing_report(name, **_):
        return CheckReport(
            problem=name,
            description="a problem whose GGN fails",
            num_params=3,
            num_data=2,
            num_batches=1,
            dtype=torch.float64,
            device=torch.device("cpu"),
            loss=1.0,
            gradient_seconds=0.01,
            operators=(
                OperatorCheck("Hessian", "OK", rayleigh=0.5),
                OperatorCheck("GGN", "FAIL", "NonDeterministicError: data [changed]"),
            ),
        )

    monkeypatch.setattr(check_module, "check_problem", failing_report)
    result = runner.invoke(app, ["check", "--problem", "digits_mlp"])
    assert result.exit_code == 1
    assert "FAIL" in result.output
    assert "[changed]" in result.output  # messages are not read as markup


def test_demo_prints_the_table():
    threads = torch.get_num_threads()
    result = runner.invoke(
        app, ["demo", "--steps", "10", "--record-every", "10", "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads
    lines = result.output.splitlines()
    header = next(line for line in lines if "λ1" in line)
    for column in ("step", "loss", "λ5", "tr H"):
        assert column in header
    rows = [line.split() for line in lines if line.split()[:1] in (["0"], ["10"])]
    assert [row[0] for row in rows] == ["0", "10"]
    assert all(len(row) == 12 for row in rows)
    assert "Done in" in result.output


@pytest.mark.parametrize(
    "args", [["--record-every", "0"], ["--steps", "-1"], ["--dtype", "float16"]]
)
def test_demo_rejects_bad_values(args):
    result = runner.invoke(app, ["demo", *args])
    assert result.exit_code == 2

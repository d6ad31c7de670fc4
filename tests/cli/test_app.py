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


@pytest.mark.parametrize(
    ("command", "marker"),
    [
        ("overlap", "[all recorded]"),
        ("spectrum", "[run's]"),
        ("spectrum", "[stored, else 8000]"),
    ],
)
def test_help_shows_the_defaults_in_brackets(command, marker):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    assert marker in result.output


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


def test_demo_quick_writes_the_report(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--out", str(out), "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads
    assert (out / "report.md").is_file()
    assert (out / "report.html").is_file()
    for stage in ("train", "spectra", "overlap", "exhaustive check", "HesScale"):
        assert stage in result.output
    assert "times chance" in result.output
    assert "Done in" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "skipped" in again.output


def test_demo_refuses_a_folder_of_another_run(tmp_path):
    out = tmp_path / "demo"
    assert runner.invoke(app, ["demo", "--quick", "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--seed", "1"])
    assert result.exit_code == 2


@pytest.mark.parametrize(
    "args", [["--steps", "0"], ["--threads", "0"], ["--dtype", "float16"]]
)
def test_demo_rejects_bad_values(args):
    result = runner.invoke(app, ["demo", *args])
    assert result.exit_code == 2


def test_demo_ctrl_c_exits_130_and_says_where(tmp_path, monkeypatch):
    import curvlab.experiments.demo as demo_module

    real = demo_module.demo_run

    def interrupted(out, settings, *, on_progress):
        def stop_after_training(event):
            on_progress(event)
            if event.stage == "train" and event.kind == "done":
                raise KeyboardInterrupt

        return real(out, settings, on_progress=stop_after_training)

    monkeypatch.setattr(demo_module, "demo_run", interrupted)
    result = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "d")])
    assert result.exit_code == 130
    assert "Interrupted during train." in result.output
    assert "Finished steps are stored" in result.output


def test_unknown_device_is_refused():
    result = runner.invoke(
        app, ["check", "--problem", "digits_logreg", "--device", "x"]
    )
    assert result.exit_code == 2
    assert "Unknown device 'x'" in result.output

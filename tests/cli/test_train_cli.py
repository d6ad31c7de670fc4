"""``curvlab train``: options, YAML, resuming, refusals and exit codes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from curvlab.cli import train as train_module
from curvlab.cli.app import app
from curvlab.runs import RunFolder

runner = CliRunner()

TINY = [
    "--problem",
    "digits_logreg",
    "--num-samples",
    "100",
    "--batch-size",
    "10",
    "--lr",
    "0.05",
]


def _train(*args):
    return runner.invoke(app, ["train", *args])


def test_train_records_and_prints_the_table(tmp_path):
    out = tmp_path / "run"
    result = _train(*TINY, "--steps", "6", "--record-steps", "0:6:3", "--out", str(out))
    assert result.exit_code == 0, result.output
    for text in ("step 3: train loss", "train acc", "test acc", str(out)):
        assert text in result.output
    run = RunFolder.open(out)
    assert run.recorded_steps() == [0, 3, 6]
    assert run.config.lr == 0.05
    assert len(run.read_table("metrics.csv")) == 3
    assert run.load_gradients(6, flat=True).shape == (650,)

    again = _train("--run", str(out))  # the stored config resumes
    assert again.exit_code == 0, again.output
    assert "Nothing to do" in again.output

    longer = _train("--out", str(out), "--steps", "9")
    assert longer.exit_code == 0, longer.output
    assert "Resuming from the checkpoint at step 6" in longer.output
    assert RunFolder.open(out).recorded_steps() == [0, 3, 6, 9]


def test_yaml_config_and_command_line_override(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        "problem: digits_logreg\n"
        "optimizer: adam\n"
        "lr: 1e-2\n"
        "steps: 4\n"
        "batch-size: 20\n"
        "num_samples: 100\n"
        "record_steps: [0, 2]\n"
    )
    out = tmp_path / "run"
    result = _train("--config", str(config), "--batch-size", "10", "--out", str(out))
    assert result.exit_code == 0, result.output
    stored = RunFolder.open(out).config
    assert stored.batch_size == 10  # the command line wins
    assert stored.optimizer == "adam"
    assert stored.lr == 0.01
    assert stored.record_steps == (0, 2, 4)
    text = (out / "config.yaml").read_text()
    assert "batch_size: 10" in text
    assert "optimizer: adam" in text


def test_other_config_is_refused_unless_forced(tmp_path):
    out = tmp_path / "run"
    assert _train(*TINY, "--steps", "2", "--out", str(out)).exit_code == 0
    result = _train(*TINY, "--steps", "2", "--seed", "5", "--out", str(out))
    assert result.exit_code == 2
    assert "another configuration" in result.output
    assert "seed: stored 0, requested 5" in result.output
    forced = _train(*TINY, "--steps", "2", "--seed", "5", "--force", "--out", str(out))
    assert forced.exit_code == 0, forced.output
    assert RunFolder.open(out).config.seed == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--problem", "no_such_problem"], "Unknown problem 'no_such_problem'"),
        ([*TINY, "--optimizer", "lbfgs"], "optimizer must be one of"),
        ([*TINY, "--record-steps", "0,x"], "Steps must be integers"),
        ([*TINY, "--steps", "3", "--record-steps", "5"], "record_steps must lie in"),
        ([*TINY, "--config", "missing.yaml"], "does not exist"),
        (["--steps", "3"], "needs a problem"),
        ([*TINY, "--batch-size", "1000"], "batch_size must be at most the 100"),
    ],
)
def test_invalid_options_exit_2(tmp_path, args, message):
    result = _train(*args, "--out", str(tmp_path / "run"))
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_folder_that_is_no_run_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = _train(*TINY, "--out", str(tmp_path), "--force")
    assert result.exit_code == 2
    assert "not a curvlab run folder" in result.output
    assert (tmp_path / "notes.txt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_missing_cuda_is_reported(tmp_path):
    result = _train(*TINY, "--device", "cuda", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "CUDA is not available" in result.output


def test_no_gradients(tmp_path):
    out = tmp_path / "run"
    result = _train(*TINY, "--steps", "2", "--no-record-gradients", "--out", str(out))
    assert result.exit_code == 0, result.output
    run = RunFolder.open(out)
    with pytest.raises(ValueError, match="did not record gradients"):
        run.load_gradients(2)
    assert run.metrics()[0]["gradient_norm"] is None


def test_ctrl_c_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    args = [*TINY, "--steps", "8", "--record-steps", "0:8:4", "--momentum", "0.9"]
    reference = tmp_path / "reference"
    assert _train(*args, "--out", str(reference)).exit_code == 0
    real = train_module.train_run

    def interrupted(run, config, **kwargs):
        def on_progress(event):
            kwargs_progress(event)
            if event.kind == "step" and event.step == 6:
                raise KeyboardInterrupt

        kwargs_progress = kwargs.pop("on_progress")
        return real(run, config, on_progress=on_progress, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(train_module, "train_run", interrupted)
    result = _train(*args, "--out", str(out))
    assert result.exit_code == 130
    assert "Interrupted at step 6 (last checkpoint: step 4)" in result.output
    monkeypatch.setattr(train_module, "train_run", real)
    resumed = _train(*args, "--out", str(out))
    assert resumed.exit_code == 0, resumed.output
    assert "Resuming from the checkpoint at step 4" in resumed.output
    run, expected = RunFolder.open(out), RunFolder.open(reference)
    for step in (0, 4, 8):
        assert torch.equal(
            run.load_parameters(step, flat=True),
            expected.load_parameters(step, flat=True),
        )
    statuses = [i["status"] for i in run.invocations("train")]
    assert statuses == ["interrupted", "finished"]


@pytest.mark.slow  # starts the CLI twice in fresh interpreters
def test_sigkill_of_the_command_then_resume(tmp_path):
    args = [*TINY, "--steps", "400", "--record-steps", "0:400:20", "--threads", "1"]
    command = [sys.executable, "-m", "curvlab", "train", *args]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    out = tmp_path / "run"
    process = subprocess.Popen(
        [*command, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (
                RunFolder.is_run_folder(out)
                and len(RunFolder.open(out).recorded_steps()) >= 3
            ):
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    run = RunFolder.open(out)
    assert process.returncode == -signal.SIGKILL
    assert 3 <= len(run.recorded_steps()) < 21, "the run finished before the kill"
    subprocess.run([*command, "--out", str(out)], check=True, env=env)
    reference = tmp_path / "reference"
    subprocess.run([*command, "--out", str(reference)], check=True, env=env)
    expected = RunFolder.open(reference)
    assert run.recorded_steps() == expected.recorded_steps() == list(range(0, 401, 20))
    for step in expected.recorded_steps():
        assert torch.equal(
            run.load_parameters(step, flat=True),
            expected.load_parameters(step, flat=True),
        )

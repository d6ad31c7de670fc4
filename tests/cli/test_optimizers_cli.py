"""``curvlab optimizers``: the table and findings, resuming, refusals, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from curvlab.cli.app import app
from curvlab.experiments.optimizers import OptimizersStage

runner = CliRunner()

TINY = [
    "--problem",
    "digits_mlp",
    "--num-samples",
    "200",
    "--batch-size",
    "16",
    "--steps",
    "6",
    "--eval-every",
    "3",
    "--seeds",
    "2",
    "--methods",
    "sgd,adahesscale,adahessian",
    "--lr",
    "sgd=0.1,3e38",
    "--lr",
    "adahesscale=0.01",
    "--lr",
    "adahessian=0.1",
    "--threads",
    "1",
]


def _run(*args):
    return runner.invoke(app, ["optimizers", *args])


def test_small_study_prints_table_and_findings_then_resumes(tmp_path):
    out = tmp_path / "study"
    result = _run(*TINY, "--out", str(out))
    assert result.exit_code == 0, result.output
    for text in (
        "SGD lr 3e+38 seed 0: diverged at step 1",
        "AdaHessian lr 0.1 seed 1: final train loss",
        "best lr by final loss",
        "2/4",  # SGD's diverged runs
        "At their best learning rates AdaHesScale's final training loss",
        "2 of 8 runs diverged (SGD 2).",
        "optimizers.png",
    ):
        assert text in result.output, text
    assert (out / "report" / "optimizers.png").is_file()
    again = _run("--out", str(out))  # the stored settings resume the study
    assert again.exit_code == 0, again.output
    assert "Already stored: 8 of 8 runs." in again.output
    assert "Nothing to do" in again.output


def test_ctrl_c_exits_130_and_the_study_resumes(tmp_path, monkeypatch):
    out = tmp_path / "study"
    compute = OptimizersStage.compute
    calls = []

    def interrupted(self, unit, progress, force):
        calls.append(unit)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return compute(self, unit, progress, force)

    monkeypatch.setattr(OptimizersStage, "compute", interrupted)
    result = _run(*TINY, "--out", str(out))
    assert result.exit_code == 130, result.output
    assert "Interrupted" in result.output
    monkeypatch.setattr(OptimizersStage, "compute", compute)
    resumed = _run("--out", str(out))
    assert resumed.exit_code == 0, resumed.output
    assert "Already stored: 2 of 8 runs." in resumed.output
    statuses = [
        json.loads(p.read_text())["status"]
        for p in sorted((out / "invocations").glob("*.json"))
    ]
    assert statuses == ["interrupted", "finished"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "adam"], "METHOD=LR"),
        (["--lr", "adam=fast"], "must be numbers"),
        (["--lr", "adam=1e-3", "--lr", "adam=1e-4"], "twice"),
        (["--methods", "adam,lbfgs"], "method must be one of"),
        (["--lr", "lbfgs=0.1"], "unknown methods"),
        (["--criterion", "best"], "criterion must be one of"),
        (["--problem", "nope"], "problem must be one of"),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
        (["--device", "nodevice"], "nodevice"),
    ],
)
def test_bad_options_exit_2(tmp_path, args, message):
    result = _run("--out", str(tmp_path / "study"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_exits_2(tmp_path):
    result = _run("--out", str(tmp_path / "study"), "--device", "cuda")
    assert result.exit_code == 2, result.output
    assert "CUDA" in result.output


def test_other_settings_are_refused_until_forced(tmp_path):
    out = tmp_path / "study"
    small = [*TINY[:-12], "--methods", "adahessian", "--lr", "adahessian=0.1"]
    assert _run(*small, "--out", str(out)).exit_code == 0
    refused = _run("--out", str(out), "--steps", "9")
    assert refused.exit_code == 2
    assert "steps: 6 -> 9" in refused.output
    assert "--force" in refused.output
    forced = _run("--out", str(out), "--steps", "9", "--force")
    assert forced.exit_code == 0, forced.output
    assert "9 steps" in forced.output


@pytest.mark.slow  # starts the CLI twice in fresh interpreters, one with Dask
def test_sigkill_mid_study_then_resume_on_two_dask_workers(tmp_path):
    pytest.importorskip("distributed")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    args = [*TINY, "--steps", "300", "--eval-every", "20"]
    command = [sys.executable, "-m", "curvlab", "optimizers", *args]
    out = tmp_path / "study"
    process = subprocess.Popen(
        [*command, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if len(list((out / "units").glob("*.json"))) >= 3:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    stored = len(list((out / "units").glob("*.json")))
    assert 3 <= stored < 8, "the study finished before the kill"
    subprocess.run([*command, "--out", str(out), "--workers", "2"], check=True, env=env)
    reference = tmp_path / "reference"
    subprocess.run([*command, "--out", str(reference)], check=True, env=env)
    for unit in (reference / "units").glob("*.json"):
        got = json.loads((out / "units" / unit.name).read_text())
        want = json.loads(unit.read_text())
        for key in ("train_loss", "test_accuracy"):
            assert [p[key] for p in got["curve"]] == [p[key] for p in want["curve"]]

"""``--problem mnist_mini`` end to end on a tiny fake MNIST in the real IDX format.

The same commands as the paper's settings (docs/paper_settings.md), scaled
down: ``curvlab train`` with SGD, then ``curvlab overlap`` with the sketch.
"""

import gzip
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from curvlab.cli.app import app
from curvlab.problems import vision
from curvlab.runs import RunFolder

runner = CliRunner()
NUM_TRAIN, NUM_TEST = 60, 20
D = 7030


def _write_fake_mnist(folder, *, compress):
    """60 train / 20 test random 28x28 digits, all classes, LeCun's IDX format."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, num in (("train", NUM_TRAIN), ("t10k", NUM_TEST)):
        labels = rng.permutation(np.arange(num) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (num, 28, 28), dtype=np.uint8)
        files = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, num, 28, 28)
            + images.tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, num)
            + labels.tobytes(),
        }
        for name, raw in files.items():
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``curvlab train --problem mnist_mini`` on the fake MNIST (flat, gzipped)."""
    root = tmp_path_factory.mktemp("mnist")
    data_dir = root / "data"
    _write_fake_mnist(data_dir, compress=True)
    vision._vision_arrays.cache_clear()
    out = root / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--problem",
            "mnist_mini",
            "--data-dir",
            str(data_dir),
            "--optimizer",
            "sgd",
            "--lr",
            "0.3",
            "--batch-size",
            "20",
            "--steps",
            "4",
            "--record-steps",
            "0,4",
            "--seed",
            "12345",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    yield out, data_dir, result.output
    vision._vision_arrays.cache_clear()


def test_train_records_the_steps(trained):
    out, data_dir, output = trained
    assert "step 4: train loss" in output
    run = RunFolder.open(out)
    assert run.recorded_steps() == [0, 4]
    assert run.config.problem == "mnist_mini"
    assert run.config.lr == 0.3
    assert len(run.read_table("metrics.csv")) == 2
    assert run.load_gradients(4, flat=True).shape == (D,)
    problem = run.problem()  # the data folder of the training is remembered
    assert problem.train_data.num_samples == NUM_TRAIN
    assert problem.test_data.X.shape == (NUM_TEST, 1, 16, 16)


def test_sketched_overlap_writes_the_tables(trained):
    out, _, _ = trained
    result = runner.invoke(
        app,
        [
            "overlap",
            "--run",
            str(out),
            "--method",
            "sketch",
            "--num-outer",
            "20",
            "--num-inner",
            "40",
            "--samples-per-class",
            "2",
            "--num-random",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    run = RunFolder.open(out)
    assert run.done_steps("overlap_train") == [0, 4]
    rows = run.read_table("overlap_train/all.csv")
    assert [(r["step"], r["k"]) for r in rows] == [
        (s, k) for s in (0, 4) for k in range(1, 21)
    ]
    for row in rows:
        assert row["chance"] == pytest.approx(row["k"] / D)
        assert 0 <= row["magnitude"] <= 1 + 1e-6
    summary = run.read_json("overlap_train/step_00000000.json")
    assert summary["settings"]["method"] == "sketch"
    assert summary["hessian"]["num_samples"] == 20  # 2 per class
    values = summary["eigenvalues"]
    assert len(values) == 20
    assert all(np.isfinite(values))
    assert summary["a_posteriori"]["kind"] != "exact"
    assert [s["step"] for s in run.read_table("overlap_train/summary.csv")] == [0, 4]


@pytest.mark.slow
def test_exact_overlap_on_the_test_split(trained):
    """Dense eigh of the 7030 x 7030 Hessian: minutes on a small machine."""
    out, _, _ = trained
    result = runner.invoke(
        app,
        [
            "overlap",
            "--run",
            str(out),
            "--split",
            "test",
            "--method",
            "exact",
            "--num-outer",
            "20",
            "--samples-per-class",
            "2",
            "--steps",
            "0",
            "--max-exact-dim",
            "8000",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = RunFolder.open(out).read_json("overlap_test/step_00000000.json")
    assert summary["a_posteriori"]["kind"] == "exact"
    assert torch.isfinite(torch.tensor(summary["trace"]))

"""Train-and-record: reproducible, resumable bit for bit, self-describing."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from curvlab.experiments.training import (
    TrainEvent,
    batch_indices,
    create_run,
    derived_seeds,
    evaluate_split,
    train,
    train_run,
)
from curvlab.runs import ConfigError, ConfigMismatchError, RunFolder, TrainConfig
from curvlab.runs.folder import TEMP_PREFIX

TIMINGS = ("train_seconds", "record_seconds")


def _config(**changes):
    values = {
        "problem": "digits_mlp",
        "steps": 12,
        "batch_size": 10,
        "record_steps": (0, 4, 8),
        "num_samples": 100,
        "lr": 0.05,
    }
    return TrainConfig(**{**values, **changes})


def _untimed(run):
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in run.metrics()]


def _assert_same_records(run, reference):
    assert run.recorded_steps() == reference.recorded_steps()
    for step in reference.recorded_steps():
        got, want = run.load_record(step), reference.load_record(step)
        assert got.parameter_names == want.parameter_names
        for a, b in zip(got.parameters, want.parameters, strict=True):
            assert torch.equal(a, b), f"parameters differ at step {step}"
        for a, b in zip(got.gradients, want.gradients, strict=True):
            assert torch.equal(a, b), f"gradients differ at step {step}"
    assert _untimed(run) == _untimed(reference)


class Interrupt(Exception):
    pass


def _stop_at(step):
    def on_progress(event: TrainEvent):
        if event.kind == "step" and event.step == step:
            raise Interrupt

    return on_progress


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run per optimizer, shared by the tests."""
    runs = {}

    def get(optimizer, **changes):
        key = (optimizer, repr(sorted(changes.items())))
        if key not in runs:
            out = tmp_path_factory.mktemp(f"reference_{optimizer}")
            runs[key] = train(_config(optimizer=optimizer, **changes), out).run
        return runs[key]

    return get


def test_same_seed_same_numbers(tmp_path, reference):
    first = reference("sgd")
    second = train(_config(optimizer="sgd"), tmp_path / "again").run
    _assert_same_records(second, first)
    other = train(_config(seed=1), tmp_path / "other").run
    assert not torch.equal(
        other.load_parameters(12, flat=True), first.load_parameters(12, flat=True)
    )


def test_recorded_files_and_metrics(reference):
    run = reference("sgd")
    assert run.recorded_steps() == [0, 4, 8, 12]
    assert run.done_steps("checkpoint") == [12]  # older checkpoints are pruned
    assert sorted(p.name for p in (run.path / "checkpoint").iterdir()) == [
        "step_00000012.pt"
    ]
    rows = run.metrics()
    assert [r["step"] for r in rows] == [0, 4, 8, 12]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for row in rows:
        assert 0 <= row["train_accuracy"] <= 1
        assert 0 <= row["test_accuracy"] <= 1
        assert row["gradient_norm"] > 0
    assert run.read_table("metrics.csv") == rows
    (invocation,) = run.invocations("train")
    assert invocation["status"] == "finished"
    assert invocation["recorded"] == [0, 4, 8, 12]
    assert invocation["versions"]["torch"] == torch.__version__
    assert invocation["machine"]["device"] == "cpu"
    seeds = run.metadata["seeds"]
    assert seeds["seed"] == 0
    assert seeds["model_init"] == 0
    assert "SeedSequence" in seeds["batch_order"]


def test_records_are_the_model_and_its_full_gradient(reference):
    run = reference("sgd")
    problem = run.problem()
    model = run.load_model(8)
    assert not model.training
    params = run.load_parameters(8)
    for p, q in zip(model.parameters(), params, strict=True):
        assert torch.equal(p.detach(), q)
    loss, accuracy, grads = evaluate_split(
        model, problem.loss_fn, problem.train_data, gradient=True
    )
    row = run.metrics()[2]
    assert row["train_loss"] == loss
    assert row["train_accuracy"] == accuracy
    # the recorded gradient is that of the mean loss over the whole train split
    model.zero_grad()
    X, y = problem.train_data.X, problem.train_data.y
    problem.loss_fn(model(X), y).backward()
    for p, g in zip(model.parameters(), run.load_gradients(8), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)
    flat = run.load_gradients(8, flat=True)
    assert flat.shape == (problem.num_params,)
    run.load_into(problem.model, 0)
    assert torch.equal(
        torch.cat([p.detach().flatten() for p in problem.model.parameters()]),
        run.load_parameters(0, flat=True),
    )


@pytest.mark.parametrize(
    ("optimizer", "changes"),
    [
        ("sgd", {"optimizer_options": {"momentum": 0.9}}),
        ("adam", {}),
        ("adahesscale", {}),
    ],
)
def test_resume_after_interruption_is_bit_identical(
    tmp_path, reference, optimizer, changes
):
    expected = reference(optimizer, **changes)
    config = _config(optimizer=optimizer, **changes)
    with pytest.raises(Interrupt):
        train(config, tmp_path, on_progress=_stop_at(7))
    run = RunFolder.open(tmp_path)
    assert run.recorded_steps() == [0, 4]
    assert run.invocations("train")[-1]["status"] == "failed"
    result = train(config, tmp_path)
    assert result.resumed_from == 4
    assert result.skipped == (0, 4)
    assert result.recorded == (8, 12)
    _assert_same_records(run, expected)
    assert train(config, tmp_path).start_step is None  # nothing left to do


def test_keyboard_interrupt_is_recorded(tmp_path):
    def stop(event):
        if event.kind == "step" and event.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(), tmp_path, on_progress=stop)
    assert RunFolder.open(tmp_path).invocations()[-1]["status"] == "interrupted"


def test_checkpoint_every_resumes_from_between_records(tmp_path, reference):
    config = _config(checkpoint_every=3)
    with pytest.raises(Interrupt):
        train(config, tmp_path, on_progress=_stop_at(7))
    run = RunFolder.open(tmp_path)
    assert run.done_steps("checkpoint") == [6]
    result = train_run(run)  # the stored config
    assert result.resumed_from == 6
    assert result.recorded == (8, 12)
    assert run.done_steps("checkpoint") == [12]
    _assert_same_records(run, reference("sgd"))


def test_shorter_then_longer_run_matches(tmp_path, reference):
    train(_config(steps=6, record_steps=(0, 4)), tmp_path)
    run = RunFolder.open(tmp_path)
    assert run.recorded_steps() == [0, 4, 6]
    result = train(_config(), tmp_path)
    assert result.resumed_from == 6
    assert run.config.steps == 12
    assert run.config.record_steps == (0, 4, 6, 8, 12)
    expected = reference("sgd")
    for step in (0, 4, 8, 12):
        assert torch.equal(
            run.load_parameters(step, flat=True),
            expected.load_parameters(step, flat=True),
        )


def test_unfinished_files_are_ignored_and_overwritten(tmp_path, reference):
    config = _config()
    with pytest.raises(Interrupt):
        train(config, tmp_path, on_progress=_stop_at(9))
    run = RunFolder.open(tmp_path)
    assert run.recorded_steps() == [0, 4, 8]
    # a crash between writing and renaming leaves a temporary file; a crash
    # between renaming and the manifest entry leaves a finished-looking file
    leftover = run.record_path(12).with_name(TEMP_PREFIX + "step_00000012.h5")
    leftover.write_bytes(b"half-written")
    run.record_path(12).write_bytes(b"renamed but never listed")
    run.unmark("train", 8)
    assert run.recorded_steps() == [0, 4]
    result = train(config, tmp_path)
    assert result.recorded == (8, 12)
    assert not leftover.exists()
    _assert_same_records(run, reference("sgd"))


def test_other_config_is_refused(tmp_path, reference):
    train(_config(steps=4, record_steps=()), tmp_path)
    for changes in ({"lr": 0.1}, {"seed": 3}, {"optimizer": "adam"}, {"batch_size": 5}):
        with pytest.raises(ConfigMismatchError, match="another configuration"):
            train(_config(**changes, steps=4, record_steps=()), tmp_path)
    run = RunFolder.open(tmp_path)
    assert run.config == _config(steps=4, record_steps=())
    fresh = train(_config(seed=3, steps=4, record_steps=()), tmp_path, force=True)
    assert fresh.run.config.seed == 3


def test_batch_order_is_a_function_of_seed_and_step():
    epoch = torch.cat([batch_indices(0, s, 23, 5) for s in range(4)])
    assert len(set(epoch.tolist())) == 20  # an epoch draws without replacement
    assert torch.equal(batch_indices(0, 2, 23, 5), batch_indices(0, 2, 23, 5))
    assert not torch.equal(batch_indices(0, 0, 23, 5), batch_indices(0, 4, 23, 5))
    assert not torch.equal(batch_indices(0, 0, 23, 5), batch_indices(1, 0, 23, 5))
    with pytest.raises(ValueError, match="batch_size must lie in"):
        batch_indices(0, 0, 3, 4)


def test_global_random_state_is_left_alone(tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train(_config(steps=3, record_steps=()), tmp_path)
    assert torch.equal(torch.get_rng_state(), before)


def test_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="batch_size must be at most the 100"):
        train(_config(batch_size=101), tmp_path / "a")
    with pytest.raises(ConfigError, match="rejects the options"):
        train(_config(optimizer_options={"momentum": -1.0}), tmp_path / "b")
    with pytest.raises(FloatingPointError, match="diverged"):
        train(_config(problem="digits_logreg", lr=1e38), tmp_path / "c")
    assert RunFolder.open(tmp_path / "c").recorded_steps() == [0]


def test_create_run_checks_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="batch_size must be at most the 100"):
        create_run(_config(batch_size=101), tmp_path / "a")
    assert not RunFolder.is_run_folder(tmp_path / "a")
    run = create_run(_config(), tmp_path / "b")
    assert run.metadata["seeds"] == derived_seeds(0)
    assert run.recorded_steps() == []


KILLED = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from curvlab.experiments import training
    from curvlab.runs import TrainConfig

    real_write = training.write_record

    def write_then_die(path, *, step, **kwargs):
        real_write(path, step=step, **kwargs)
        if step == 8:  # the file is complete but not yet renamed
            os.kill(os.getpid(), signal.SIGKILL)

    training.write_record = write_then_die
    config = TrainConfig(problem="digits_mlp", steps=12, batch_size=10,
                         record_steps=(0, 4, 8), num_samples=100, lr=0.05)
    training.train(config, sys.argv[1])
    """
)


@pytest.mark.slow  # a fresh interpreter imports torch: > 10 s on a busy machine
def test_sigkill_while_writing_then_resume(tmp_path, reference):
    out = tmp_path / "run"
    process = subprocess.run(
        [sys.executable, "-c", KILLED, str(out)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    run = RunFolder.open(out)
    assert run.recorded_steps() == [0, 4]
    # temporary names are unique per process: .tmp.<pid>-<token>.<name>
    assert list((out / "train").glob(TEMP_PREFIX + "*.step_00000008.h5"))
    assert run.invocations()[-1]["status"] == "running"
    result = train(_config(), out)
    assert result.resumed_from == 4
    assert not list((out / "train").glob(TEMP_PREFIX + "*"))  # its process is gone
    _assert_same_records(run, reference("sgd"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adahesscale"])
def test_resume_on_cuda_is_bit_identical(tmp_path, optimizer):
    # digits_cnn: cuDNN convolutions are non-deterministic unless asked not to be
    lr = 1e-3 if optimizer == "adahesscale" else 0.01
    config = _config(problem="digits_cnn", optimizer=optimizer, lr=lr)
    expected = train(config, tmp_path / "reference", device="cuda").run
    with pytest.raises(Interrupt):
        train(config, tmp_path / "run", device="cuda", on_progress=_stop_at(7))
    assert train(config, tmp_path / "run", device="cuda").resumed_from == 4
    run = RunFolder.open(tmp_path / "run")
    _assert_same_records(run, expected)
    assert run.invocations()[-1]["machine"]["device_name"]
    assert not torch.are_deterministic_algorithms_enabled()  # restored
    model = run.load_model(12, device="cuda")
    assert next(model.parameters()).is_cuda

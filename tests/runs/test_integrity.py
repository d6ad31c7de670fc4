"""Issue 11: damaged files, damaged configs, a second writer, full and read-only disks.

Each numbered item of the issue is reproduced with real bytes (zeroed, cut),
real processes (a second process holding the lock, SIGKILL) and a real small
file system (a tmpfs, skipped where mounting is not permitted).
"""

import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import h5py
import pytest
import torch
from typer.testing import CliRunner

from curvlab.cli.app import app
from curvlab.experiments.spectrum import (
    SpectrumSettings,
    read_spectrum,
    spectrum_run,
)
from curvlab.experiments.training import train
from curvlab.runs import (
    ConfigError,
    ConfigMismatchError,
    RunFolder,
    TrainConfig,
)
from curvlab.runs.config import ConfigDamagedError, config_to_text
from curvlab.runs.errors import (
    RunIntegrityError,
    RunLockedError,
    disk_error_message,
)
from curvlab.runs.lock import StageLock
from curvlab.runs.records import read_record

SRC = str(Path(__file__).parents[2] / "src")
runner = CliRunner()
CONFIG = TrainConfig(
    problem="digits_logreg",
    steps=20,
    batch_size=10,
    num_samples=100,
    lr=0.05,
    record_steps=(0, 10),
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run: records at 0, 10, 20, a checkpoint at 20."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(CONFIG, out)
    return out


@pytest.fixture
def run_dir(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def _cli(*args):
    return runner.invoke(app, [*args])


def _zero_dataset(path, name):
    """Overwrite the values of one HDF5 dataset with zeros; the size stays.

    The chunk's last 4 bytes, its Fletcher-32 checksum, are kept (zeroing them
    too would give the checksum of all-zero data, which is zero).
    """
    with h5py.File(path, "r") as file:
        info = file[name].id.get_chunk_info(0)
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset)
        handle.write(b"\0" * (info.size - 4))


def _drop_checksums(run, stage, step):
    """Make an entry look like one of a run folder of format 1 (no SHA-256)."""
    path = run.path / "manifest" / stage / f"step_{step:08d}.json"
    entry = json.loads(path.read_text())
    for file in entry["files"]:
        file.pop("sha256")
    path.write_text(json.dumps(entry))


# ------------------------------------------------------------ 1. damaged records
def test_zeroed_record_is_refused_and_train_records_it_again(run_dir, trained):
    record = run_dir / "train" / "step_00000010.h5"
    size = record.stat().st_size
    _zero_dataset(record, "parameters/1.weight")
    assert record.stat().st_size == size
    run = RunFolder.open(run_dir)
    assert run.is_done("train", 10)  # sizes match: listing stays cheap
    assert not run.is_done("train", 10, verify=True)
    with pytest.raises(RunIntegrityError) as caught:
        run.load_parameters(10)
    message = str(caught.value)
    assert "train/step_00000010.h5 is damaged" in message
    assert "train step_00000010" in message
    assert f"curvlab train --run {run_dir}" in message

    result = _cli("overlap", "--run", str(run_dir), "--steps", "10")
    assert result.exit_code == 2, result.output
    assert "train/step_00000010.h5 is damaged" in result.output

    again = _cli("train", "--run", str(run_dir))
    assert again.exit_code == 0, again.output
    assert "Damaged: train/step_00000010.h5" in again.output
    assert record.read_bytes() == (trained / "train/step_00000010.h5").read_bytes()
    assert RunFolder.open(run_dir).damaged("train", 10) == []


def test_hdf5_checksums_catch_damage_without_a_manifest_checksum(run_dir):
    run = RunFolder.open(run_dir)
    _drop_checksums(run, "train", 10)
    _zero_dataset(run.record_path(10), "parameters/1.weight")
    with h5py.File(run.record_path(10), "r") as file:
        assert file["parameters/1.weight"].fletcher32
    with pytest.raises(RunIntegrityError, match="HDF5 cannot read it"):
        read_record(run.record_path(10))
    with pytest.raises(RunIntegrityError, match="step_00000010.h5 is damaged"):
        run.load_parameters(10)


def test_a_damaged_stage_file_is_named_and_its_stage_computes_it_again(run_dir):
    run = RunFolder.open(run_dir)
    settings = SpectrumSettings(samples_per_class=3, top_k=2, bottom_k=0)
    spectrum_run(run, settings, steps=[0])
    path = run.path_for("spectrum", 0, ".json")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    path.write_bytes(bytes(data))
    with pytest.raises(RunIntegrityError, match=r"spectrum/step_00000000.json is dam"):
        read_spectrum(RunFolder.open(run_dir), 0)
    result = spectrum_run(RunFolder.open(run_dir), settings, steps=[0])
    assert result.computed == (0,)
    assert read_spectrum(RunFolder.open(run_dir), 0).step == 0


def test_a_damaged_manifest_entry_is_named_and_recomputed(run_dir, trained):
    entry = run_dir / "manifest" / "train" / "step_00000010.json"
    entry.write_bytes(b"\0" * entry.stat().st_size)
    run = RunFolder.open(run_dir)
    with pytest.raises(RunIntegrityError, match="step_00000010.json is damaged"):
        run.load_parameters(10)
    assert _cli("train", "--run", str(run_dir)).exit_code == 0
    assert torch.equal(
        RunFolder.open(run_dir).load_parameters(10, flat=True),
        RunFolder.open(trained).load_parameters(10, flat=True),
    )


def test_verification_is_cached_per_process_while_the_file_is_unchanged(run_dir):
    run = RunFolder.open(run_dir)
    assert run.is_done("train", 10, verify=True)
    path = run.record_path(10)
    stamp = path.stat()
    _zero_dataset(path, "parameters/1.weight")
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))
    assert not run.is_done("train", 10, verify=True)  # a changed file is re-read


# ------------------------------------------------------------ 2. damaged config
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("cut", r"cut short: it lacks the keys seed, dtype"),
        ("zeroed", r"not valid YAML \(.*#x0000"),
        ("unparsable", r"not valid YAML \(line \d+, column \d+: expected ','"),
        ("edited", r"no longer matches the SHA-256.*seed: 1 here, 0 in the check"),
        ("no_checksum", r"SHA-256 of the lines above it, is missing"),
        ("not_a_mapping", r"holds list, not a mapping"),
    ],
)
def test_a_damaged_config_is_named_never_defaulted(run_dir, damage, message):
    path = run_dir / "config.yaml"
    text = path.read_text()
    if damage == "cut":
        path.write_text("".join(text.splitlines(keepends=True)[:11]))
    elif damage == "zeroed":
        path.write_bytes(b"\0" * len(text))
    elif damage == "unparsable":
        path.write_text(text.replace("optimizer: sgd", "optimizer: [sgd"))
    elif damage == "edited":
        path.write_text(text.replace("seed: 0", "seed: 1"))
    elif damage == "no_checksum":
        path.write_text("".join(text.splitlines(keepends=True)[:-1]))
    else:
        path.write_text("- a\n- b\n")
    before = path.read_bytes()
    with pytest.raises(ConfigDamagedError, match=message) as caught:
        _ = RunFolder.open(run_dir).config
    assert str(path) in str(caught.value)
    for args in (("train", "--run"), ("overlap", "--run"), ("spectrum", "--run")):
        result = _cli(*args, str(run_dir))
        assert result.exit_code == 2, result.output
        assert "config.yaml" in result.output
        assert "never completed with defaults" in " ".join(result.output.split())
    assert path.read_bytes() == before  # never rewritten


def test_checkpoint_config_is_compared_on_resume(run_dir):
    # a config.yaml rewritten with a valid checksum but another seed
    other = TrainConfig(**{**CONFIG.to_dict(), "seed": 1})
    (run_dir / "config.yaml").write_text(config_to_text(other))
    with pytest.raises(ConfigMismatchError, match=r"seed: checkpoint 0, config.yaml 1"):
        train(TrainConfig(**{**other.to_dict(), "steps": 30}), run_dir)


def test_an_invalid_option_writes_no_config(tmp_path):
    # issue 11, item 7: the invalid config.yaml stayed and the fix was refused
    config = tmp_path / "run.yaml"
    config.write_text("problem: digits_logreg\nsteps: 10\nmomentum: -1\n")
    config.write_text(
        "problem: digits_logreg\nsteps: 10\nnum_samples: 100\nbatch_size: 10\n"
        "optimizer_options: {momentum: -1.0}\n"
    )
    out = tmp_path / "run"
    result = _cli("train", "--config", str(config), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "SGD rejects the options" in result.output
    assert not RunFolder.is_run_folder(out)
    config.write_text(config.read_text().replace("-1.0", "0.5"))
    fixed = _cli("train", "--config", str(config), "--out", str(out))
    assert fixed.exit_code == 0, fixed.output
    with pytest.raises(ConfigError, match="Adam rejects"):
        TrainConfig(
            problem="digits_logreg",
            optimizer="adam",
            optimizer_options={"betas": [0.9]},
        )


def test_a_batch_size_above_the_samples_writes_no_config(tmp_path):
    out = tmp_path / "run"
    args = ("train", "--problem", "digits_logreg", "--num-samples", "100")
    result = _cli(*args, "--batch-size", "101", "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "batch_size must be at most the 100 train samples" in result.output
    assert not RunFolder.is_run_folder(out)
    fixed = _cli(*args, "--batch-size", "10", "--steps", "2", "--out", str(out))
    assert fixed.exit_code == 0, fixed.output


def test_a_damaged_step_less_file_is_named(run_dir):
    run = RunFolder.open(run_dir)
    path = run.write_json("hesscale_quality/result.json", {"ok": True})
    run.mark_done("hesscale_quality", files=[path])
    path.write_text(path.read_text().replace("true", "null"))
    with pytest.raises(RunIntegrityError, match="hesscale_quality/result.json is"):
        run.read_json("hesscale_quality/result.json")


# ------------------------------------------------------------ 3. damaged checkpoint
def test_a_zeroed_checkpoint_is_replayed_bit_for_bit(run_dir, tmp_path):
    checkpoint = run_dir / "checkpoint" / "step_00000020.pt"
    checkpoint.write_bytes(b"\0" * checkpoint.stat().st_size)
    longer = TrainConfig(**{**CONFIG.to_dict(), "steps": 30})
    result = _cli("train", "--run", str(run_dir), "--steps", "30")
    assert result.exit_code == 0, result.output
    assert "Damaged: checkpoint/step_00000020.pt" in " ".join(result.output.split())
    expected = train(longer, tmp_path / "reference").run
    assert torch.equal(
        RunFolder.open(run_dir).load_parameters(30, flat=True),
        expected.load_parameters(30, flat=True),
    )


def test_a_zeroed_checkpoint_without_checksum_is_named(run_dir):
    run = RunFolder.open(run_dir)
    _drop_checksums(run, "checkpoint", 20)
    checkpoint = run_dir / "checkpoint" / "step_00000020.pt"
    checkpoint.write_bytes(b"\0" * checkpoint.stat().st_size)
    result = _cli("train", "--run", str(run_dir), "--steps", "30")
    assert result.exit_code == 2, result.output
    text = "".join(result.output.split())  # Rich wraps long paths anywhere
    assert "checkpoint/step_00000020.ptisdamaged:torchcannotloadit" in text
    assert "manifest/checkpoint/step_00000020.json" in text
    assert "weights_only" not in text


# ------------------------------------------------------------ 4. two writers
HOLDER = textwrap.dedent(
    """
    import sys, time
    from curvlab.runs import RunFolder
    invocation = RunFolder.open(sys.argv[1]).start_invocation(sys.argv[2])
    print("locked", flush=True)
    time.sleep(120)
    """
)


@contextlib.contextmanager
def _holder(run_dir, stage):
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir), stage],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


@pytest.mark.slow  # starts a second interpreter
def test_a_second_writer_is_refused_and_the_lock_dies_with_its_holder(run_dir):
    with _holder(run_dir, "overlap") as holder:
        run = RunFolder.open(run_dir)
        with pytest.raises(RunLockedError, match=rf"process {holder.pid} \(") as err:
            run.start_invocation("overlap")
        assert err.value.holder["pid"] == holder.pid
        result = _cli("overlap", "--run", str(run_dir), "--steps", "0")
        assert result.exit_code == 2, result.output
        assert f"process {holder.pid}" in result.output
        assert "is writing its overlap stage" in " ".join(result.output.split())
        # readers and other stages keep working
        assert run.load_parameters(10, flat=True).shape == (650,)
        assert run.config == CONFIG
        settings = SpectrumSettings(samples_per_class=3, top_k=2, bottom_k=0)
        assert spectrum_run(run, settings, steps=[0]).computed == (0,)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    run.start_invocation("overlap").finish()  # the kernel released the lock


@pytest.mark.slow  # starts two interpreters
def test_two_trains_into_one_new_folder(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "curvlab", "train", "--problem", "digits_logreg",
        "--num-samples", "100", "--batch-size", "10", "--steps", "3000",
        "--record-steps", "0:3000:1000", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": SRC}
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in processes]
    codes = sorted(p.returncode for p in processes)
    assert codes in ([0, 0], [0, 2]), outputs
    if codes == [0, 2]:
        pairs = zip(processes, outputs, strict=True)
        err = next(e for p, (_, e) in pairs if p.returncode == 2)
        assert "is in use: process" in err, err
    run = RunFolder.open(out)
    assert run.recorded_steps() == [0, 1000, 2000, 3000]
    assert all(not run.damaged("train", s) for s in run.recorded_steps())


def test_temporary_names_are_unique_per_process(tmp_path):
    from curvlab.runs import atomic_path

    target = tmp_path / "all.csv"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("a")
        second.write_text("b")
    assert target.read_text() == "a"  # the outer one was renamed last


def test_lock_is_reentrant_in_one_process(tmp_path):
    with StageLock(tmp_path, "train"), StageLock(tmp_path, "train") as inner:
        assert inner.holder()["pid"] == os.getpid()
    with StageLock(tmp_path, "train"):
        pass


# ------------------------------------------------------------ 5. disk errors
@contextlib.contextmanager
def _tmpfs(size):
    root = Path(tempfile.mkdtemp(prefix="curvlab-tmpfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        root.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def _one_error_line(output):
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def test_a_full_disk_gives_one_line_and_the_run_resumes(tmp_path):
    args = [
        "train", "--problem", "digits_mlp", "--steps", "60",
        "--record-steps", "0:60:2", "--threads", "1",
    ]  # fmt: skip
    with _tmpfs("1m") as root:
        out = root / "run"
        result = _cli(*args, "--out", str(out))
        assert result.exit_code == 1, result.output
        line = _one_error_line(result.output)
        assert "no space left on device (ENOSPC)" in line
        assert str(out) in line
        assert "run the same command again to resume" in line
        run = RunFolder.open(out)
        recorded = run.recorded_steps()
        assert 0 < len(recorded) < 31
        assert all(not run.damaged("train", s) for s in recorded)
        assert not list(out.rglob(".tmp.*"))  # no half-written files left
        subprocess.run(["mount", "-o", "remount,size=16m", str(root)], check=True)
        again = _cli(*args, "--out", str(out))
        assert again.exit_code == 0, again.output
        assert RunFolder.open(out).recorded_steps() == list(range(0, 61, 2))


@pytest.mark.slow  # starts an interpreter
def test_a_full_disk_in_a_fresh_process_exits_1_without_a_crash(tmp_path):
    # issue 11, item 5: five h5py tracebacks, then a segfault (exit 139)
    with _tmpfs("2m") as root:
        done = subprocess.run(
            [sys.executable, "-m", "curvlab", "train", "--problem", "digits_mlp",
             "--steps", "200", "--record-steps", "0:200:2", "--threads", "1",
             "--out", str(root / "run")],
            capture_output=True, text=True, check=False,
            env={**os.environ, "PYTHONPATH": SRC},
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    line = _one_error_line(done.stderr)
    assert "no space left on device (ENOSPC)" in line
    assert "h5py" not in done.stderr


def test_a_read_only_disk_gives_one_line(run_dir):
    with _tmpfs("4m") as root:
        out = root / "run"
        shutil.copytree(run_dir, out)
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        for args in (
            ("train", "--run", str(out), "--steps", "30"),
            ("spectrum", "--run", str(out), "--steps", "0"),
        ):
            result = _cli(*args)
            assert result.exit_code == 1, result.output
            line = _one_error_line(result.output)
            assert "read-only file system (EROFS)" in line
            assert str(out) in line


def test_a_folder_without_write_permission_gives_one_line(trained):
    if os.geteuid() != 0 or not hasattr(os, "fork"):
        pytest.skip("needs root (to run a command as another user) and fork")
    parent = Path(tempfile.mkdtemp(prefix="curvlab-perm-"))
    try:
        parent.chmod(0o755)
        out = parent / "run"
        shutil.copytree(trained, out)
        for path in [out, *out.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        read, write = os.pipe()
        # A fork, because the interpreter lives where user 65534 may not read;
        # the child runs on one thread (a forked OpenMP pool can hang).
        pid = os.fork()
        if pid == 0:  # the child: another user runs the command in-process
            try:
                torch.set_num_threads(1)
                os.setgid(65534)
                os.setuid(65534)
                results = [
                    _cli("spectrum", "--run", str(out), "--steps", "0"),
                    _cli("train", "--problem", "digits_logreg", "--steps", "2",
                         "--out", str(out / "new")),
                ]  # fmt: skip
                report = [[r.exit_code, r.output] for r in results]
                os.write(write, json.dumps(report).encode())
            finally:
                os._exit(0)
        os.close(write)
        ready, _, _ = select.select([read], [], [], 300)
        if not ready:  # never hang the suite: stop the child and fail
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            pytest.fail("the command run as user 65534 did not finish in 300 s")
        with os.fdopen(read) as pipe:
            report = json.loads(pipe.read())
        os.waitpid(pid, 0)
        for (code, output), where in zip(report, [out, out / "new"], strict=True):
            assert code == 1, output
            line = _one_error_line(output)
            assert "permission denied (EACCES)" in line
            assert str(where) in line
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_disk_errors_inside_hdf5_messages_are_recognised():
    error = OSError(
        "Can't write data (file write failed: time = now, filename = "
        "'/r/train/.tmp.12-ab.step_00000010.h5', file descriptor = 5, errno = 28, "
        "error message = 'No space left on device')"
    )
    message = disk_error_message(RuntimeError("wrapped").with_traceback(None))
    assert message is None
    wrapped = RuntimeError("h5py failed")
    wrapped.__cause__ = error
    assert disk_error_message(wrapped).startswith(
        "/r/train/step_00000010.h5: no space left on device (ENOSPC)."
    )


# ------------------------------------------------------------ 6. invocations
def test_garbage_in_an_invocation_file_stops_nothing(run_dir):
    log = sorted((run_dir / "invocations").glob("*.json"))[0]
    log.write_bytes(b'{"command": "train\x01\x02' + b"\0" * 40)
    run = RunFolder.open(run_dir)
    assert len(run.invocations("train")) == 0  # the only one is damaged
    result = _cli("train", "--run", str(run_dir), "--steps", "30")
    assert result.exit_code == 0, result.output
    metadata = run_dir / "metadata.json"
    metadata.write_bytes(b"\0" * metadata.stat().st_size)
    with pytest.raises(RunIntegrityError, match=r"metadata.json is damaged: it is not"):
        _ = RunFolder.open(run_dir).metadata


# ------------------------------------------------------------ 7. smaller ones
def test_record_steps_option_errors(tmp_path):
    for value, message in (("10:0:1", "is empty: its start 10"), ("", "No steps")):
        result = _cli(
            "train", "--problem", "digits_logreg", "--record-steps", value,
            "--out", str(tmp_path / "run"),
        )  # fmt: skip
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert not (tmp_path / "run" / "config.yaml").exists()


def test_top_k_above_d_is_refused(run_dir):
    result = _cli("spectrum", "--run", str(run_dir), "--top-k", "1000", "--steps", "0")
    assert result.exit_code == 2, result.output
    assert "top_k=1000 exceeds the model's D=650" in " ".join(result.output.split())
    assert RunFolder.open(run_dir).done_steps("spectrum") == []


def test_checkpoint_every_on_a_huge_run_starts_at_once(tmp_path):
    config = TrainConfig(
        problem="digits_logreg", steps=10**12, batch_size=10, num_samples=100,
        checkpoint_every=1,
    )  # fmt: skip

    class Stop(Exception):
        pass

    def stop(event):
        if event.kind == "step" and event.step == 3:
            raise Stop

    tic = time.perf_counter()
    with pytest.raises(Stop):
        train(config, tmp_path / "run", on_progress=stop)
    assert time.perf_counter() - tic < 30  # a set of 10**12 steps never ends
    assert RunFolder.open(tmp_path / "run").done_steps("checkpoint") == [2]


@pytest.mark.slow  # the failing dense eigh of D=3190 takes tens of seconds
def test_spectrum_of_a_diverged_step_says_so(tmp_path):
    config = TrainConfig(
        problem="digits_mlp", steps=10, batch_size=10, num_samples=100, lr=1e38,
        record_steps="0:10:1",
    )  # fmt: skip
    with pytest.raises(FloatingPointError, match="diverged"):
        train(config, tmp_path / "run")
    run = RunFolder.open(tmp_path / "run")
    last = run.recorded_steps()[-1]  # parameters ~1e37: eigh fails to converge
    settings = SpectrumSettings(samples_per_class=3, top_k=2, bottom_k=0)
    with pytest.raises(ValueError, match=rf"at step {last} has no spectrum"):
        spectrum_run(run, settings, steps=[last])
    result = _cli("spectrum", "--run", str(run.path), "--steps", str(last))
    assert result.exit_code == 2, result.output
    assert "training diverged" in " ".join(result.output.split())


def test_checksums_are_sha256_of_the_files(run_dir):
    run = RunFolder.open(run_dir)
    (file,) = run.entry("train", 10)["files"]
    content = (run_dir / file["path"]).read_bytes()
    assert file["sha256"] == hashlib.sha256(content).hexdigest()

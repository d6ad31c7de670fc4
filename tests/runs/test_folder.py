"""RunFolder: creation, atomic writes, the manifest, tables and invocations."""

import hashlib
import json
import os
import subprocess

import pytest

import curvlab
from curvlab.runs import (
    ConfigMismatchError,
    MissingStepError,
    RunFolder,
    TrainConfig,
    atomic_path,
    step_key,
)
from curvlab.runs import folder as folder_module
from curvlab.runs.folder import TEMP_PREFIX


def _config(**changes):
    return TrainConfig(**{"problem": "digits_logreg", "steps": 10, **changes})


@pytest.fixture
def run(tmp_path):
    return RunFolder.create(tmp_path / "run", _config(), metadata={"seeds": {"s": 1}})


def test_step_key():
    assert step_key(0) == "step_00000000"
    assert step_key(123456789) == "step_123456789"
    assert step_key(None) == "all"
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="step must be"):
            step_key(bad)


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "sub" / "result.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-")
        assert tmp.name.endswith(".result.txt")
        tmp.write_text("first")
        assert not target.exists()
    assert target.read_text() == "first"
    assert not tmp.exists()

    def crash_while_writing():
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        crash_while_writing()
    assert target.read_text() == "first"  # the old file is untouched
    assert not tmp.exists()

    def write_nothing():
        with atomic_path(target):
            pass

    with pytest.raises(FileNotFoundError, match="Nothing was written"):
        write_nothing()


def test_atomic_path_overwrites_a_leftover_temporary_file(tmp_path):
    target = tmp_path / "result.txt"
    leftover = tmp_path / (TEMP_PREFIX + "result.txt")  # an older version's name
    leftover.write_text("garbage from a killed process, much longer than the rest")
    with atomic_path(target) as tmp:
        assert not tmp.exists()
        with tmp.open("a") as file:  # appending would keep garbage if not removed
            file.write("new")
    assert target.read_text() == "new"
    assert not leftover.exists()


def test_atomic_path_removes_leftovers_of_dead_processes_only(tmp_path):
    target = tmp_path / "result.txt"
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = folder_module._HOST
    dead_leftover = tmp_path / f"{TEMP_PREFIX}{gone.pid}-{host}0a1b.result.txt"
    live_leftover = tmp_path / f"{TEMP_PREFIX}{os.getppid()}-{host}0a1b.result.txt"
    other_host = tmp_path / f"{TEMP_PREFIX}{gone.pid}-ffffff0a1b.result.txt"
    if host == "ffffff":
        other_host = live_leftover
    for leftover in (dead_leftover, live_leftover, other_host):
        leftover.write_text("half")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert not dead_leftover.exists()
    assert live_leftover.exists()  # another process may still be writing it
    assert other_host.exists()  # a process of another host sharing the folder


def test_new_folder_is_self_describing(run):
    assert RunFolder.is_run_folder(run.path)
    assert run.config == _config()
    meta = run.metadata
    assert meta["format"] == "curvlab-run"
    assert meta["format_version"] == 2
    assert meta["seeds"] == {"s": 1}
    assert meta["versions"]["curvlab"] == curvlab.__version__
    for key in ("python", "torch", "numpy", "h5py"):
        assert meta["versions"][key]
    for key in ("platform", "cpu_count", "hostname", "torch_threads"):
        assert key in meta["machine"]
    assert meta["created"].endswith("Z")
    assert "problem: digits_logreg" in (run.path / "config.yaml").read_text()


def test_open_needs_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a curvlab run folder"):
        RunFolder.open(tmp_path)


def test_reopen_with_compatible_config_extends_it(run):
    again = RunFolder.create(run.path, _config(steps=20, record_steps=(5,)))
    assert again.config.steps == 20
    assert again.config.record_steps == (0, 5, 10, 20)
    # a shorter request keeps the stored extent
    RunFolder.create(run.path, _config(steps=5))
    assert RunFolder.open(run.path).config.steps == 20


def test_extend_config_writes_only_a_changed_config(run):
    stored = run.config
    mtime = (run.path / "config.yaml").stat().st_mtime_ns
    assert run.extend_config(_config()) == stored
    assert (run.path / "config.yaml").stat().st_mtime_ns == mtime  # not written
    merged = run.extend_config(_config(steps=20))
    assert merged.steps == 20
    assert RunFolder.open(run.path).config == merged
    with pytest.raises(ConfigMismatchError, match="seed: stored 0, requested 1"):
        run.extend_config(_config(seed=1))
    assert RunFolder.open(run.path).config == merged


def test_reopen_with_other_config_is_refused(run):
    with pytest.raises(ConfigMismatchError, match="seed: stored 0, requested 1"):
        RunFolder.create(run.path, _config(seed=1))
    assert run.config == _config()


def test_force_starts_over(run):
    path = run.path_for("train", 0)
    path.write_bytes(b"x")
    run.mark_done("train", 0, files=[path])
    fresh = RunFolder.create(run.path, _config(seed=1), force=True)
    assert fresh.config.seed == 1
    assert fresh.recorded_steps() == []
    assert not path.exists()


def test_non_run_folders_are_never_used_or_deleted(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(FileExistsError, match="not a curvlab run folder"):
            RunFolder.create(tmp_path, _config(), force=force)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    file = tmp_path / "notes.txt"
    with pytest.raises(FileExistsError, match="is not a folder"):
        RunFolder.create(file, _config())


def test_folder_left_by_a_crash_during_creation_is_reused(tmp_path):
    run = RunFolder.create(tmp_path / "run", _config())
    (run.path / "config.yaml").unlink()  # killed before config.yaml was written
    (run.path / (TEMP_PREFIX + "config.yaml")).write_text("half")
    again = RunFolder.create(run.path, _config(seed=3))
    assert again.config.seed == 3


def test_mark_done_and_is_done(run):
    assert not run.is_done("spectrum", 4)
    path = run.path_for("spectrum", 4, ".json")
    assert path == run.path / "spectrum" / "step_00000004.json"
    run.write_json(path, {"eigvals": [2.0, 1.0]})
    run.mark_done("spectrum", 4, files=[path], info={"k": 2})
    assert run.is_done("spectrum", 4)
    entry = run.entry("spectrum", 4)
    assert entry["files"] == [
        {
            "path": "spectrum/step_00000004.json",
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    ]
    assert entry["info"] == {"k": 2}
    assert run.done_steps("spectrum") == [4]
    assert run.manifest()["spectrum"]["step_00000004"]["step"] == 4

    # a result without a step
    summary = run.write_json("overlap/summary.json", {"ok": True})
    run.mark_done("overlap", files=[summary])
    assert run.is_done("overlap")
    assert run.done_steps("overlap") == []


def test_damaged_or_missing_files_are_not_done(run):
    path = run.path_for("spectrum", 1, ".bin")
    path.write_bytes(b"0123456789")
    run.mark_done("spectrum", 1, files=[path])
    with path.open("r+b") as file:
        file.truncate(5)
    assert not run.is_done("spectrum", 1)
    assert run.entry_steps("spectrum") == [1]
    assert run.done_steps("spectrum") == []
    path.unlink()
    assert not run.is_done("spectrum", 1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run.mark_done("spectrum", 2, files=[run.path_for("spectrum", 2)])
    run.unmark("spectrum", 1)
    assert run.entry("spectrum", 1) is None


def test_temporary_entries_are_ignored(run):
    folder = run.path / "manifest" / "spectrum"
    folder.mkdir(parents=True)
    (folder / (TEMP_PREFIX + "step_00000003.json")).write_text('{"half')
    assert run.entry_steps("spectrum") == []
    assert run.manifest()["spectrum"] == {}


def test_paths_stay_inside_the_folder(run):
    with pytest.raises(ValueError, match="outside the run folder"):
        run.write_json("../escape.json", {})
    with pytest.raises(ValueError, match="stage name"):
        run.path_for("../x", 1)
    with pytest.raises(ValueError, match="stage name"):
        run.mark_done("a/b", 1)


def test_tables_round_trip(run):
    rows = [
        {"step": 0, "loss": 0.1 + 0.2, "accuracy": None, "note": "a,b"},
        {"step": 10, "loss": 1e-300, "extra": 3},
    ]
    path = run.write_table("tables/metrics.csv", rows)
    assert path.read_text().splitlines()[0] == "step,loss,accuracy,note,extra"
    back = run.read_table("tables/metrics.csv")
    assert back[0] == {
        "step": 0,
        "loss": 0.1 + 0.2,
        "accuracy": None,
        "note": "a,b",
        "extra": None,
    }
    assert back[1]["loss"] == 1e-300
    assert run.read_json(run.write_json("x.json", {"a": [1]})) == {"a": [1]}


def test_invocations(run):
    invocation = run.start_invocation("spectrum", device="cpu")
    data = json.loads(invocation.path.read_text())
    assert data["status"] == "running"
    assert data["pid"] == os.getpid()
    invocation.finish("finished", matvecs=3)
    (record,) = run.invocations("spectrum")
    assert record["status"] == "finished"
    assert record["matvecs"] == 3
    assert record["seconds"] >= 0
    assert run.invocations("train") == []


def test_training_data_dir_is_the_latest_one_named(run):
    assert run.training_data_dir() is None
    for data_dir in ("/data/a", None, "/data/b", None):
        run.start_invocation("train", data_dir=data_dir).finish("finished")
    run.start_invocation("spectrum", data_dir="/data/c").finish("finished")
    assert run.training_data_dir() == "/data/b"


def test_missing_step(run):
    with pytest.raises(MissingStepError, match=r"Step 3 is not recorded"):
        run.load_parameters(3)

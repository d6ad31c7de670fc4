"""The store's files: creation, status, verify, atomic writes under SIGKILL."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import curvlab as cl
from curvlab.linalg import sketch_plan
from curvlab.store import _format

from ._ops import Maker

D, K, S, P = 40, 4, 9, 3


def _plan(seed=0, D=D):
    return sketch_plan(((D, D), torch.float64, "cpu"), K, S, seed=seed)


@pytest.fixture
def full_store(tmp_dir):
    store = cl.store.create(tmp_dir / "s", _plan(), num_probes=P)
    cl.store.measure(store, Maker(D), progress=False)
    return store


def test_create_status_and_reopen(tmp_dir):
    store = cl.store.create(tmp_dir / "s", _plan(), num_probes=P)
    status = store.status()
    assert status.done == []
    assert status.missing == list(range(S))
    assert status.probes_missing == list(range(P))
    assert not status.complete
    again = cl.store.create(tmp_dir / "s", _plan(), num_probes=P)
    assert again.plan_hash == store.plan_hash
    assert cl.store.open(tmp_dir / "s").plan == store.plan


def test_create_refuses_a_different_store_naming_what_differs(full_store):
    with pytest.raises(ValueError, match="plan: stored") as info:
        cl.store.create(full_store.path, _plan(seed=1), num_probes=P)
    assert "'seed': 1" in str(info.value)
    with pytest.raises(ValueError, match="num_probes: stored 3, asked 5"):
        cl.store.create(full_store.path, _plan(), num_probes=5)
    fresh = cl.store.create(full_store.path, _plan(seed=1), overwrite=True)
    assert fresh.status().done == []


def test_create_refuses_a_folder_that_is_no_store(tmp_dir):
    (tmp_dir / "x").mkdir()
    (tmp_dir / "x" / "data.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        cl.store.create(tmp_dir / "x", _plan(), overwrite=True)


def test_files_are_plain_npy_with_records(full_store):
    path = full_store.file("sketch", 2)
    column = np.load(path)
    assert column.shape == (D,)
    assert column.dtype == np.float64
    assert np.array_equal(column, full_store.read("sketch", [2])[:, 0].numpy())
    meta = _format.read_meta(path)
    assert meta["index"] == 2
    assert meta["plan_hash"] == full_store.plan_hash
    assert set(full_store.read_aux("sketch", 2)) == {"phi", "psi", "probe"}
    assert set(full_store.read_aux("sketch", K)) == {"phi"}
    assert full_store.verify() == []


def _damage(store):
    """Truncate, reshape, retype, reseed and duplicate files; flip a bit."""
    bad = {}
    path = store.file("sketch", 0)
    path.write_bytes(path.read_bytes()[:-100])
    bad[path] = "truncated"
    path = store.file("sketch", 1)  # wrong shape: a column of another D
    other = cl.store.create(store.path.parent / "d", _plan(D=D + 1), num_probes=0)
    cl.store.measure(other, Maker(D + 1), indices=[1], progress=False)
    shutil.copy(other.file("sketch", 1), path)
    bad[path] = "wrong shape"
    path = store.file("sketch", 2)  # wrong dtype
    f32 = cl.store.create(store.path.parent / "f", _plan(), dtype="float32")
    cl.store.measure(f32, Maker(D), indices=[2], progress=False)
    shutil.copy(f32.file("sketch", 2), path)
    bad[path] = "wrong dtype"
    path = store.file("sketch", 3)  # wrong seed
    seeded = cl.store.create(store.path.parent / "w", _plan(seed=5), num_probes=P)
    cl.store.measure(seeded, Maker(D), indices=[3], progress=False)
    shutil.copy(seeded.file("sketch", 3), path)
    bad[path] = "wrong seed"
    path = store.file("sketch", 5)  # duplicated: a copy of column 4
    shutil.copy(store.file("sketch", 4), path)
    bad[path] = "duplicated"
    path = store.file("probe", 1)  # one flipped bit in the data
    raw = bytearray(path.read_bytes())
    raw[200] ^= 1
    path.write_bytes(bytes(raw))
    bad[path] = "checksum"
    return bad


def test_verify_names_every_bad_file_and_never_modifies(full_store):
    bad = _damage(full_store)
    before = {p: p.read_bytes() for p in full_store.path.rglob("*.npy")}
    problems = full_store.verify()
    assert {Path(p.file) for p in problems} == set(bad)
    for p in problems:
        assert bad[Path(p.file)] in p.reason
    assert {p: p.read_bytes() for p in full_store.path.rglob("*.npy")} == before
    # without checksums the flipped bit is not seen, the rest is
    quick = {Path(p.file) for p in full_store.verify(checksums=False)}
    assert quick == set(bad) - {full_store.file("probe", 1)}


def test_wrong_shape_and_dtype_are_named(tmp_dir):
    store = cl.store.create(tmp_dir / "s", _plan(), num_probes=0)
    cl.store.measure(store, Maker(D), indices=[0, 1], progress=False)
    meta = store.expected("sketch", 0)
    _format.write(store.file("sketch", 0), np.zeros(D + 1), {}, meta)
    _format.write(
        store.file("sketch", 1), np.zeros(D, np.float32), {}, meta | {"index": 1}
    )
    reasons = {Path(p.file).name: p.reason for p in store.verify()}
    assert "wrong shape" in reasons["0000000.npy"]
    assert "wrong dtype" in reasons["0000001.npy"]


def test_solve_refuses_a_bad_store_and_measure_repairs_it(full_store):
    bad = _damage(full_store)
    with pytest.raises(ValueError, match="fails its check") as info:
        cl.store.solve(full_store, progress=False)
    quick = set(bad) - {full_store.file("probe", 1)}  # the bit flip is seen later
    assert all(str(p) in str(info.value) for p in quick)
    result = cl.store.measure(full_store, Maker(D), progress=False)
    assert result.measured == [0, 1, 2, 3, 5]
    assert result.probes_measured == [1]
    assert full_store.verify() == []
    reference = cl.store.create(full_store.path.parent / "r", _plan(), num_probes=P)
    cl.store.measure(reference, Maker(D), progress=False)
    # other block shapes than the first run: equal up to the rounding of A @ X
    torch.testing.assert_close(full_store.read(), reference.read(), rtol=1e-13, atol=0)
    torch.testing.assert_close(
        full_store.read("probe"), reference.read("probe"), rtol=1e-13, atol=0
    )


def test_solve_refuses_an_incomplete_store(tmp_dir):
    store = cl.store.create(tmp_dir / "s", _plan(), num_probes=P)
    cl.store.measure(store, Maker(D), indices=range(5), progress=False)
    with pytest.raises(ValueError, match=r"incomplete: sketch measurements \[5, 6"):
        cl.store.solve(store, progress=False)


def test_export_hdf5_equals_the_store(full_store, tmp_dir):
    import h5py

    path = full_store.export_hdf5(tmp_dir / "m.h5", progress=False)
    with h5py.File(path, "r") as f:
        assert f["measurements"].shape == (D, S)
        assert f["measurements"].chunks
        assert np.array_equal(f["measurements"][()], full_store.read().numpy())
        assert np.array_equal(f["probes"][()], full_store.read("probe").numpy())


# ------------------------------------------------------- killed and duplicate writes
_WRITER = r"""
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("fmt", sys.argv[1])
fmt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fmt)
from pathlib import Path
folder, rows, repeat = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
indices = [int(i) for i in sys.argv[5].split(",")]
(folder / f".started-{sys.argv[6]}").touch()
for _ in range(repeat):
    for i in indices:
        data = (np.arange(rows, dtype=np.float32) + i) * (i + 1)
        meta = {"plan_hash": "h", "seed": 0, "kind": "sketch", "index": i}
        path = folder / f"{i:07d}.npy"
        fmt.write(path, data, {"phi": np.full(3, i)}, meta, fsync=sys.argv[7] == "1")
"""


def _writer(folder, rows, repeat, indices, name="w", fsync=False):
    """A numpy-only writer process; waits until it has started writing."""
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WRITER,
            _format.__file__,
            str(folder),
            str(rows),
            str(repeat),
            ",".join(map(str, indices)),
            name,
            "1" if fsync else "0",
        ]
    )
    started = folder / f".started-{name}"
    while not started.exists() and writer.poll() is None:
        time.sleep(0.01)
    started.unlink(missing_ok=True)
    return writer


def _check_folder(folder, rows):
    """Every visible file is complete and holds exactly its column."""
    seen = []
    for path in folder.glob("[0-9]*.npy"):
        i = int(path.stem)
        expected = {
            "plan_hash": "h",
            "seed": 0,
            "kind": "sketch",
            "index": i,
            "shape": [rows],
            "dtype": "float32",
        }
        meta = _format.check(path, expected)
        data = _format.read_rows(path, meta, 0, rows)
        assert np.array_equal(data, (np.arange(rows, dtype=np.float32) + i) * (i + 1))
        seen.append(i)
    return sorted(seen)


def test_sigkill_inside_writes_leaves_no_wrong_column(tmp_dir):
    rows, indices, kills = 1 << 21, list(range(6)), 12  # 8 MiB per column
    rng = random.Random(0)
    for _ in range(kills):
        # fsync makes each write last long enough for most kills to land inside
        writer = _writer(tmp_dir, rows, 1000, indices, fsync=True)
        time.sleep(rng.random() * 0.3)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        _check_folder(tmp_dir, rows)
    torn = list(tmp_dir.glob(".0*.tmp"))
    assert torn, "no kill landed inside a write"
    # resume: the same writer finishes every column
    assert _writer(tmp_dir, rows, 1, indices).wait() == 0
    assert _check_folder(tmp_dir, rows) == indices


def test_duplicate_concurrent_writes_of_one_column(tmp_dir):
    rows = 1 << 18
    writers = [_writer(tmp_dir, rows, 40, [3], name) for name in ("a", "b")]
    while any(w.poll() is None for w in writers):
        assert _check_folder(tmp_dir, rows) in ([], [3])
    assert [w.returncode for w in writers] == [0, 0]
    assert _check_folder(tmp_dir, rows) == [3]
    assert not list(tmp_dir.glob(".*.tmp"))

r"""The measurement store: a folder of crash-safe measurement files.

A store holds the ``s`` measurements :math:`y_i = A\psi_i` of one SEIGH sketch
plan (:class:`~curvlab.linalg.SketchPlan`) and ``p`` Gaussian probes
:math:`A\omega_j` for the a-posteriori error, one file each::

    ROOT/store.json             format version, plan, plan hash, dtype, D, probes
    ROOT/sketch/0000000.npy     y_0 (+ Phi^T y_0, Psi^T y_0, Omega_p^T y_0)
    ROOT/sketch/...             y_{s-1} (+ Phi^T y_{s-1})
    ROOT/probes/0000000.npy     A omega_0, ..., A omega_{p-1}
    ROOT/solve/                 the out-of-core solve's output (default)

**Why one ``.npy`` per measurement, renamed into place.** What was measured
before choosing (issue 12; 2 cores, ``D = 10^6``, 256 float32 columns, two
writer processes, ``SIGKILL`` 12 times inside a 16 MB column write):

- one file per measurement written under a temporary name and
  :func:`os.replace`\ d into place: 0 of 12 killed writes visible, completion
  needs neither flags nor locks (a file exists only when whole), row-block reads
  0.98 GiB/s cold and 3.0 GiB/s warm;
- HDF5 block files joined by a virtual dataset (the SEIGH paper's layout):
  reads at 0.27 GiB/s; with ``libver="latest"`` 11 of 12 killed files could no
  longer be opened; a VDS read while a writer holds a block file fails unless
  file locking is off, and with locking off two writers on one file gave 9 of 16
  wrong columns; with more source files than the process may open, the VDS
  silently returned NaN columns (240 of 300);
- zarr v3: writers not aligned to chunks lost 15-16 of 32 columns,
  single-column writes into ``(65536, 16)`` chunks took 315 ms each
  (read-modify-write), and it needs Python >= 3.11.

So a measurement is a file that appears atomically and whole, independent of
every other file: concurrent and duplicate writers cannot corrupt each other
(the last rename wins, and both wrote the same bits), a killed writer leaves at
most a hidden ``.*.tmp`` file, and "done" is "the file exists and checks". Each
file carries a record (plan hash, seed, kind, index, shape, dtype, per-chunk
CRC-32) so that a torn, truncated, foreign, duplicated or corrupted file is
reported by name and never read as data (:mod:`curvlab.store._format`). The
monolithic ``(D, s)`` HDF5 array is an export (:meth:`MeasurementStore.export_hdf5`),
not the working format.

With each sketch column the worker stores the small projections the solve
needs, computed while :math:`y_i` is in memory: :math:`\Phi^\top y_i` (``s``
values, a column of the core sketch :math:`Z`) for every ``i``, and for the
outer columns ``i < k`` also :math:`\Psi^\top y_i` and :math:`\Omega_p^\top y_i`
(the probes), so the solve never applies a ``D``-long test matrix to ``D x k``
data: :math:`\Psi^\top Q = (\Psi^\top Y) R^{-1}`.

Not done (yet): padding the SSRFT to ``scipy.fft.next_fast_len`` (it would
change every existing seed's test matrix); the store follows the in-memory
test matrices exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from curvlab.linalg.certificates import PROBE_ROLE
from curvlab.linalg.sketch import SketchPlan
from curvlab.linalg.ssrft import GaussianTestMatrix
from curvlab.store import _format
from curvlab.store._format import FORMAT_VERSION, ColumnError

__all__ = ["MeasurementStore", "Problem", "StoreStatus", "create", "open"]

_MANIFEST = "store.json"
_KINDS = ("sketch", "probe")
_FOLDERS = {"sketch": "sketch", "probe": "probes"}
_NAME = re.compile(r"^(\d{7})\.npy$")


class StoreStatus(NamedTuple):
    """What a store holds.

    Attributes:
        done: Sorted sketch measurement indices in ``[0, s)`` with a sound file
            (structure checked, not the checksums: see
            :meth:`MeasurementStore.verify`).
        missing: Sorted sketch indices without one.
        probes_done: Sorted probe indices in ``[0, p)`` with a sound file.
        probes_missing: Sorted probe indices without one.
    """

    done: list[int]
    missing: list[int]
    probes_done: list[int]
    probes_missing: list[int]

    @property
    def complete(self) -> bool:
        """Whether every sketch measurement and probe is stored."""
        return not self.missing and not self.probes_missing


class Problem(NamedTuple):
    """A file that :meth:`MeasurementStore.verify` will not read as data.

    Attributes:
        file: Path of the file.
        reason: What is wrong with it.
    """

    file: str
    reason: str


def _dtype_name(dtype) -> str:
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return dtype
    raise TypeError(f"dtype must be a torch dtype or its name. Got {dtype!r}.")


def _manifest(plan: SketchPlan, dtype: str, num_probes: int) -> dict[str, Any]:
    identity = {
        "plan": plan.to_dict(),
        "dtype": dtype,
        "num_probes": num_probes,
        "probe_seed": plan.seed,
        "probe_role": PROBE_ROLE,
        "format": FORMAT_VERSION,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    return {
        **identity,
        "kind": "curvlab.measurement_store",
        "D": plan.shape[0],
        "chunk_rows": _format.CHUNK_ROWS,
        "plan_hash": digest.hexdigest()[:16],
    }


class MeasurementStore:
    """A folder of measurements of one SEIGH plan (see the module docstring).

    Build one with :func:`create` or :func:`open`; fill it with
    :func:`curvlab.store.measure`, solve it with :func:`curvlab.store.solve`.

    Attributes:
        path: The folder.
        plan: The sketch plan.
        dtype: Dtype of the stored columns.
        num_probes: ``p``, Gaussian probes for the a-posteriori error.
        probe_seed: Seed of the probes (stream ``PROBE_ROLE``, which no sketch
            column uses).
        plan_hash: Hash of plan, dtype, probes and format, in every file.
        dim: ``D``.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self.plan = SketchPlan.from_dict(manifest["plan"])
        self.dtype: torch.dtype = getattr(torch, manifest["dtype"])
        self.num_probes = int(manifest["num_probes"])
        self.probe_seed = int(manifest["probe_seed"])
        self.plan_hash = manifest["plan_hash"]
        self.dim = int(manifest["D"])
        self.chunk_rows = int(manifest["chunk_rows"])
        self._metas: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}

    def __repr__(self) -> str:
        p = self.plan
        return (
            f"MeasurementStore({str(self.path)!r}, D={self.dim}, k={p.num_outer}, "
            f"s={p.num_inner}, probes={self.num_probes}, "
            f"dtype={self.manifest['dtype']})"
        )

    # ----------------------------------------------------------------- files
    @property
    def np_dtype(self) -> np.dtype:
        """The stored dtype as a NumPy dtype."""
        return np.dtype(self.manifest["dtype"])

    def count(self, kind: str) -> int:
        """Number of measurements of ``kind`` (``"sketch"``: ``s``; ``"probe"``: ``p``).

        Args:
            kind: ``"sketch"`` or ``"probe"``.

        Returns:
            The count.
        """
        return self.plan.num_inner if kind == "sketch" else self.num_probes

    def file(self, kind: str, index: int) -> Path:
        """Path of measurement ``index`` of ``kind``.

        Args:
            kind: ``"sketch"`` or ``"probe"``.
            index: The index.

        Returns:
            The path (which may not exist).
        """
        return self.path / _FOLDERS[kind] / f"{index:07d}.npy"

    def expected(self, kind: str, index: int) -> dict[str, Any]:
        """The identity every file of measurement ``index`` must record.

        Args:
            kind: ``"sketch"`` or ``"probe"``.
            index: The index.

        Returns:
            Plan hash, seed, kind, index, shape and dtype.
        """
        return {
            "plan_hash": self.plan_hash,
            "seed": self.plan.seed if kind == "sketch" else self.probe_seed,
            "kind": kind,
            "index": index,
            "shape": [self.dim],
            "dtype": self.manifest["dtype"],
        }

    def _listed(self, kind: str) -> dict[int | str, Path]:
        folder = self.path / _FOLDERS[kind]
        out: dict[int | str, Path] = {}
        if not folder.is_dir():
            return out
        for entry in folder.iterdir():
            if entry.name.startswith("."):  # temporary files of running writers
                continue
            match = _NAME.match(entry.name)
            out[int(match.group(1)) if match else entry.name] = entry
        return out

    def _scan(self, *, checksums: bool) -> tuple[dict[str, list[int]], list[Problem]]:
        done: dict[str, list[int]] = {}
        problems: list[Problem] = []
        for kind in _KINDS:
            count, ok = self.count(kind), []
            for index, path in sorted(self._listed(kind).items(), key=str):
                if not isinstance(index, int) or index >= count:
                    problems.append(
                        Problem(str(path), f"not a {kind} measurement of this store")
                    )
                    continue
                try:
                    _format.check(path, self.expected(kind, index), checksums=checksums)
                except ColumnError as error:
                    problems.append(Problem(str(path), str(error)))
                else:
                    ok.append(index)
            done[kind] = sorted(ok)
        return done, problems

    def status(self) -> StoreStatus:
        """Which measurements are stored (structure checked; no data read).

        Returns:
            Done and missing indices, sketch and probes apart.
        """
        done, _ = self._scan(checksums=False)
        s, p = self.count("sketch"), self.count("probe")
        sketch, probes = set(done["sketch"]), set(done["probe"])
        return StoreStatus(
            done=sorted(sketch),
            missing=[i for i in range(s) if i not in sketch],
            probes_done=sorted(probes),
            probes_missing=[j for j in range(p) if j not in probes],
        )

    def verify(self, *, checksums: bool = True) -> list[Problem]:
        """Check every file; never modifies the store.

        A file is a problem when it is torn or truncated, foreign (another plan
        or seed), duplicated (its record names another index), of the wrong
        shape or dtype, fails a checksum, or does not belong in the store.
        Missing measurements are not problems (see :meth:`status`).

        Args:
            checksums: Read all data and check the CRCs (default); ``False``
                checks records and sizes only.

        Returns:
            One :class:`Problem` per bad file; empty when the store is sound.
        """
        return self._scan(checksums=checksums)[1]

    def read_aux(self, kind: str, index: int) -> dict[str, np.ndarray]:
        """The projections stored with a measurement (checked).

        Args:
            kind: ``"sketch"`` or ``"probe"``.
            index: The index.

        Returns:
            Float64 arrays by name (``"phi"``, ``"psi"``, ``"probe"``).

        Raises:
            ColumnError: If the file is bad.
        """
        path = self.file(kind, index)
        return _format.read_aux(path, self.meta(kind, index))

    def meta(self, kind: str, index: int) -> dict[str, Any]:
        """The checked record of a measurement file (cached while it is unchanged).

        The record is checked once (structure and identity, :func:`_format.check`
        without checksums) and cached under the file's inode, size and mtime, so
        reading many row blocks costs one ``stat`` per file and block.

        Args:
            kind: ``"sketch"`` or ``"probe"``.
            index: The index.

        Returns:
            The record.

        Raises:
            ColumnError: If the file is bad or missing (message names it).
        """
        path = self.file(kind, index)
        try:
            st = os.stat(path)
        except FileNotFoundError as error:
            raise ColumnError(f"{path}: missing") from error
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._metas.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            meta = _format.check(path, self.expected(kind, index), checksums=False)
        except ColumnError as error:
            raise ColumnError(f"{path}: {error}") from error
        self._metas[path] = (key, meta)
        return meta

    def read_rows(self, kind: str, indices, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of measurements ``indices``, CRC-checked.

        Args:
            kind: ``"sketch"`` or ``"probe"``.
            indices: Measurement indices.
            start: First row.
            stop: One past the last row.

        Returns:
            ``(stop - start, len(indices))`` in the stored dtype.

        Raises:
            ColumnError: If a file is bad (message names it).
        """
        indices = list(indices)
        out = np.empty((stop - start, len(indices)), dtype=self.np_dtype)
        for j, index in enumerate(indices):
            meta = self.meta(kind, index)
            path = self.file(kind, index)
            try:
                out[:, j] = _format.read_rows(path, meta, start, stop)
            except (ColumnError, FileNotFoundError) as error:
                raise ColumnError(f"{path}: {error}") from error
        return out

    def read(self, kind: str = "sketch", indices=None) -> torch.Tensor:
        """Load whole measurements as a ``(D, b)`` tensor (small stores, tests).

        Args:
            kind: ``"sketch"`` or ``"probe"``.
            indices: Measurement indices (default: all).

        Returns:
            The columns in the stored dtype.

        Raises:
            ColumnError: If a file is bad or missing.
        """
        indices = range(self.count(kind)) if indices is None else indices
        return torch.from_numpy(self.read_rows(kind, indices, 0, self.dim))

    def probe_matrix(self) -> GaussianTestMatrix:
        """The ``(D, p)`` Gaussian probes of :func:`~curvlab.linalg.a_posteriori_error`.

        Returns:
            The test matrix (stream ``(probe_seed, PROBE_ROLE)``), plan dtype.
        """
        return GaussianTestMatrix(
            self.dim,
            max(self.num_probes, 1),
            seed=self.probe_seed,
            role=PROBE_ROLE,
            dtype=self.plan.torch_dtype,
            device=self.plan.torch_device,
        )

    # ---------------------------------------------------------------- export
    def export_hdf5(self, path, *, progress: bool = True) -> Path:
        """Write the measurements as one chunked HDF5 file (the monolithic array).

        Dataset ``measurements`` of shape ``(D, s)`` in the store's dtype (and
        ``probes``, ``(D, p)``, when the store has probes), chunked by row
        blocks, the plan as a JSON attribute. Refuses an incomplete or unsound
        store.

        Args:
            path: The ``.h5`` file to write (replaced if it exists).
            progress: Show a progress bar.

        Returns:
            The path.

        Raises:
            ValueError: If measurements are missing or a file is bad.
        """
        from curvlab.store.export import export_hdf5

        return export_hdf5(self, path, progress=progress)


def create(
    path,
    plan: SketchPlan,
    *,
    dtype: torch.dtype | str | None = None,
    num_probes: int = 30,
    overwrite: bool = False,
) -> MeasurementStore:
    """Create a measurement store for a SEIGH plan.

    Over an existing store of the same plan, dtype and probes this opens it (a
    rerun resumes); over one that differs it refuses, naming what differs,
    unless ``overwrite=True`` (which deletes its measurements).

    Args:
        path: The folder (created; must be empty or a store).
        plan: A ``method="eigh"`` plan (:func:`~curvlab.linalg.sketch_plan`).
        dtype: Dtype of the stored columns; ``None``: the plan's dtype.
        num_probes: Gaussian probes for the a-posteriori error (0 for none).
        overwrite: Replace an existing, different store.

    Returns:
        The store.

    Raises:
        TypeError: If ``plan`` is not a :class:`SketchPlan`, or ``dtype`` or
            ``num_probes`` have a wrong type.
        ValueError: If the plan is not SEIGH, ``num_probes < 0``, the folder
            holds something else, or a different store without ``overwrite``.

    Example:
        >>> import tempfile
        >>> from curvlab.linalg import sketch_plan
        >>> plan = sketch_plan(((100, 100), torch.float64, "cpu"), 5)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     store = create(tmp, plan, num_probes=3)
        ...     store.status().missing == list(range(10))
        True
    """
    if not isinstance(plan, SketchPlan):
        raise TypeError(f"plan must be a SketchPlan. Got {type(plan).__name__}.")
    if plan.method != "eigh":
        raise ValueError(
            f"The store holds SEIGH sketches (method 'eigh'). Got {plan.method!r}."
        )
    if isinstance(num_probes, bool) or not isinstance(num_probes, int):
        raise TypeError(f"num_probes must be an int. Got {type(num_probes).__name__}.")
    if num_probes < 0:
        raise ValueError(f"num_probes must be at least 0. Got {num_probes}.")
    name = plan.dtype if dtype is None else _dtype_name(dtype)
    if not getattr(torch, name).is_floating_point:
        raise ValueError(f"dtype must be floating. Got {name}.")
    root = Path(path)
    manifest = _manifest(plan, name, num_probes)
    existing = root / _MANIFEST
    if existing.is_file():
        old = json.loads(existing.read_text())
        keys = ("plan", "dtype", "num_probes", "probe_seed", "probe_role", "format")
        differs = [key for key in keys if old.get(key) != manifest[key]]
        if not differs:
            return MeasurementStore(root, old)
        if not overwrite:
            details = "; ".join(
                f"{key}: stored {old.get(key)!r}, asked {manifest[key]!r}"
                for key in differs
            )
            raise ValueError(
                f"{root} holds a different measurement store ({details}). Pass "
                "overwrite=True to delete it and start again."
            )
        for folder in (*_FOLDERS.values(), "solve"):
            shutil.rmtree(root / folder, ignore_errors=True)
    elif root.exists() and any(root.iterdir()):
        raise ValueError(
            f"{root} exists, is not empty and holds no measurement store "
            f"({_MANIFEST}). Choose an empty or new folder."
        )
    root.mkdir(parents=True, exist_ok=True)
    for folder in _FOLDERS.values():
        (root / folder).mkdir(exist_ok=True)
    _format.write_json(existing, manifest)
    return MeasurementStore(root, manifest)


def open(path) -> MeasurementStore:  # noqa: A001 - public name fixed by the issue
    """Open an existing measurement store.

    Args:
        path: The store's folder.

    Returns:
        The store.

    Raises:
        FileNotFoundError: If the folder holds no ``store.json``.
        ValueError: If it is of another format version or not a store.
    """
    manifest_path = Path(path) / _MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} holds no measurement store ({_MANIFEST}).")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("kind") != "curvlab.measurement_store":
        raise ValueError(f"{manifest_path} does not describe a measurement store.")
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has store format {manifest.get('format')}; this curvlab reads "
            f"format {FORMAT_VERSION}."
        )
    return MeasurementStore(Path(path), manifest)


def open_cached(
    cache: dict, root: str, plan_hash: str, during: str
) -> MeasurementStore:
    """Open the store at ``root`` once per process, keyed by ``(root, plan_hash)``.

    Dask tasks call this on workers, so a worker reads a store's metadata once.

    Args:
        cache: The caller's cache of opened stores.
        root: The store's folder.
        plan_hash: The plan the task was built for.
        during: What runs (for the message).

    Returns:
        The opened store.

    Raises:
        ValueError: If the store at ``root`` has another plan now.
    """
    key = (root, plan_hash)
    if key not in cache:
        store = open(root)
        if store.plan_hash != plan_hash:
            raise ValueError(f"The store at {root} changed plan during the {during}.")
        cache[key] = store
    return cache[key]

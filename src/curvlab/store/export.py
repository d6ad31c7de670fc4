"""Export a measurement store to one chunked HDF5 file (the monolithic array)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from curvlab.store._progress import progress_bar

__all__ = ["export_hdf5"]


def export_hdf5(store, path, *, progress: bool = True) -> Path:
    """Write ``measurements`` ``(D, s)`` (and ``probes`` ``(D, p)``) to HDF5.

    The file is written under a temporary name and renamed into place, by row
    blocks of the checksum chunk size (every read is CRC-checked), with HDF5
    chunks of ``(min(D, 16384), min(s, 64))``.

    Args:
        store: A :class:`~curvlab.store.MeasurementStore`.
        path: The ``.h5`` file (replaced if it exists).
        progress: Show a progress bar.

    Returns:
        The path.

    Raises:
        ValueError: If measurements are missing or a file is bad.
    """
    import h5py

    status = store.status()
    if not status.complete:
        raise ValueError(
            f"The store is incomplete: {len(status.missing)} sketch measurements "
            f"and {len(status.probes_missing)} probes missing (first missing: "
            f"{(status.missing or status.probes_missing)[:5]})."
        )
    problems = store.verify(checksums=False)
    if problems:
        raise ValueError(
            "The store has bad files: "
            + "; ".join(f"{p.file} ({p.reason})" for p in problems)
        )
    path = Path(path)
    D, step = store.dim, store.chunk_rows
    kinds = [("measurements", "sketch"), ("probes", "probe")]
    kinds = [(name, kind) for name, kind in kinds if store.count(kind)]
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    blocks = -(-D // step)
    try:
        with (
            h5py.File(tmp, "w") as f,
            progress_bar(blocks * len(kinds), "export HDF5", progress) as advance,
        ):
            f.attrs["plan"] = json.dumps(store.plan.to_dict())
            f.attrs["plan_hash"] = store.plan_hash
            f.attrs["probe_seed"] = store.probe_seed
            for name, kind in kinds:
                count = store.count(kind)
                dset = f.create_dataset(
                    name,
                    shape=(D, count),
                    dtype=store.np_dtype,
                    chunks=(min(D, 16384), min(count, 64)),
                )
                for start in range(0, D, step):
                    stop = min(start + step, D)
                    dset[start:stop] = store.read_rows(kind, range(count), start, stop)
                    advance(1)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

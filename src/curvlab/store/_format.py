r"""The file format of one stored measurement: a ``.npy`` file with a trailer.

Each measurement (a sketch column :math:`y_i = A\psi_i` or an a-posteriori probe
:math:`A\omega_j`) is one file. Its first bytes are a plain NumPy ``.npy`` file of
shape ``(D,)`` in the store's dtype, so ``numpy.load(path, mmap_mode="r")`` reads
it with no curvlab code. Behind the array (``numpy.load`` ignores bytes after
it) follow

1. the small float64 projections the solve needs, back to back (for instance
   :math:`\Phi^\top y_i`, ``s`` values),
2. a UTF-8 JSON record: format version, plan hash, seed, kind and index of the
   measurement, shape, dtype, the CRC-32 of every chunk of ``chunk_rows`` rows
   of the array and the CRC-32 of the projections,
3. a 16-byte footer: the magic ``b"CLSTORE1"`` and the JSON's length (uint64).

A file is written whole under a unique temporary name in its final folder,
then renamed into place with :func:`os.replace` (atomic on POSIX): a reader
sees either no file or a complete one (no ``fsync`` by default, see
:func:`write`). A file cut
short (torn or truncated), written for another plan or seed (foreign), copied
under another index (duplicated), of the wrong shape or dtype, or with a bit
flipped, fails :func:`check` with a reason and is never read as data. The CRCs
are per chunk of rows so that a reader of a row block (the streamed solve) checks
exactly the bytes it reads.

This module needs NumPy only.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np

#: Version of the on-disk format (store manifest and measurement files).
FORMAT_VERSION = 1
#: First 8 bytes of every footer.
MAGIC = b"CLSTORE1"
_FOOTER = struct.Struct("<8sQ")
#: Rows per checksummed chunk (256 KiB in float32).
CHUNK_ROWS = 1 << 16


class ColumnError(Exception):
    """A stored measurement file that must not be read as data."""


def _crc_chunks(data: np.ndarray, chunk_rows: int) -> list[int]:
    raw = memoryview(np.ascontiguousarray(data)).cast("B")
    step = chunk_rows * data.itemsize
    return [zlib.crc32(raw[i : i + step]) for i in range(0, len(raw), step)] or [0]


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
    header["shape"] = shape
    text = repr(header)
    # .npy v1.0: magic (6) + version (2) + length (2) + header, padded to 64 bytes
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def write(
    path: Path,
    data: np.ndarray,
    aux: dict[str, np.ndarray],
    meta: dict[str, Any],
    *,
    chunk_rows: int = CHUNK_ROWS,
    fsync: bool = False,
) -> None:
    """Write one measurement atomically (temporary file, then ``os.replace``).

    Args:
        path: Final path of the file.
        data: ``(D,)`` array in the store's dtype.
        aux: Named 1-D float64 projections, stored in this order.
        meta: JSON-able record (plan hash, seed, kind, index); shape, dtype,
            offsets and checksums are added here.
        chunk_rows: Rows per checksummed chunk.
        fsync: Flush the file to disk before the rename. Off by default: a
            killed process leaves its written pages to the OS, so only an OS
            crash can leave a renamed file whose data never reached the disk,
            and its size or CRCs then fail :func:`check` (``measure``
            re-measures it). Measured on this machine: 65 MB/s with ``fsync``.
    """
    data = np.ascontiguousarray(data)
    header = _npy_header(data.shape, data.dtype)
    aux_arrays = [
        np.ascontiguousarray(a, dtype="<f8").reshape(-1) for a in aux.values()
    ]
    aux_bytes = b"".join(a.tobytes() for a in aux_arrays)
    record = dict(meta)
    record.update(
        format=FORMAT_VERSION,
        shape=list(data.shape),
        dtype=data.dtype.name,
        data_offset=len(header),
        chunk_rows=chunk_rows,
        crc32=_crc_chunks(data, chunk_rows),
        aux=[[name, int(a.size)] for name, a in zip(aux, aux_arrays, strict=True)],
        aux_crc32=zlib.crc32(aux_bytes),
    )
    text = json.dumps(record, sort_keys=True).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(memoryview(data).cast("B"))
            f.write(aux_bytes)
            f.write(text)
            f.write(_FOOTER.pack(MAGIC, len(text)))
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_meta(path: Path) -> dict[str, Any]:
    """Read and structurally check a file's record (cheap: footer and JSON only).

    Checks the footer, the JSON, and that the file size matches the record.

    Args:
        path: The file.

    Returns:
        The record.

    Raises:
        ColumnError: If the file is torn, truncated or not a measurement file.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < _FOOTER.size:
                raise ColumnError(f"truncated: {size} bytes, no footer")
            f.seek(size - _FOOTER.size)
            magic, length = _FOOTER.unpack(f.read(_FOOTER.size))
            if magic != MAGIC or length > size - _FOOTER.size:
                raise ColumnError("torn or truncated: no valid footer at the end")
            f.seek(size - _FOOTER.size - length)
            meta = json.loads(f.read(length).decode())
    except OSError as error:
        raise ColumnError(f"unreadable: {error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ColumnError("torn: the record is not valid JSON") from error
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        rows = int(np.prod(meta["shape"]))
        aux_size = 8 * sum(n for _, n in meta["aux"])
        expected = meta["data_offset"] + rows * itemsize + aux_size
        expected += length + _FOOTER.size
    except (KeyError, TypeError, ValueError) as error:
        raise ColumnError(f"not a measurement record: {error}") from error
    if meta.get("format") != FORMAT_VERSION:
        raise ColumnError(
            f"format version {meta.get('format')}, expected {FORMAT_VERSION}"
        )
    if size != expected:
        raise ColumnError(f"truncated or padded: {size} bytes, expected {expected}")
    return meta


def check(
    path: Path, expected: dict[str, Any], *, checksums: bool = True
) -> dict[str, Any]:
    """Check a file against the store: record, identity and (optionally) CRCs.

    Args:
        path: The file.
        expected: Values the record must hold (plan hash, seed, kind, index,
            shape, dtype).
        checksums: Also read the data and projections and check their CRCs.

    Returns:
        The record.

    Raises:
        ColumnError: With the reason, if anything is wrong.
    """
    meta = read_meta(path)
    for key in ("kind", "index", "shape", "dtype", "seed", "plan_hash"):
        if meta.get(key) != expected[key]:
            what = {
                "index": "duplicated or renamed",
                "seed": "wrong seed",
                "plan_hash": "foreign (another plan)",
                "shape": "wrong shape",
                "dtype": "wrong dtype",
                "kind": "wrong kind",
            }[key]
            raise ColumnError(
                f"{what}: {key} is {meta.get(key)!r}, expected {expected[key]!r}"
            )
    with open(path, "rb") as f:
        try:
            if np.lib.format.read_magic(f) != (1, 0):
                raise ValueError("not a version 1.0 .npy header")
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        except ValueError as error:
            raise ColumnError(f"no valid .npy header: {error}") from error
        if list(shape) != meta["shape"] or dtype.name != meta["dtype"]:
            raise ColumnError(
                f"the .npy header says {shape} {dtype.name}, the record "
                f"{tuple(meta['shape'])} {meta['dtype']}"
            )
    if checksums:
        rows = meta["shape"][0]
        read_rows(path, meta, 0, rows)
        read_aux(path, meta)
    return meta


def read_rows(path: Path, meta: dict[str, Any], start: int, stop: int) -> np.ndarray:
    """Read rows ``start:stop`` and check the CRCs of the chunks they cover.

    ``start`` should be a multiple of ``chunk_rows`` and ``stop`` one or ``D``;
    otherwise the covering chunks are read whole.

    Args:
        path: The file.
        meta: Its record (:func:`read_meta`).
        start: First row.
        stop: One past the last row.

    Returns:
        ``(stop - start,)`` array in the stored dtype.

    Raises:
        ColumnError: If a chunk's CRC does not match.
    """
    dtype = np.dtype(meta["dtype"])
    rows = meta["shape"][0]
    chunk = meta["chunk_rows"]
    first, last = start // chunk, -(-stop // chunk)
    lo, hi = first * chunk, min(last * chunk, rows)
    out = np.empty(hi - lo, dtype=dtype)
    with open(path, "rb", buffering=0) as f:
        f.seek(meta["data_offset"] + lo * dtype.itemsize)
        got = f.readinto(memoryview(out).cast("B"))
    if got != out.nbytes:
        raise ColumnError(f"truncated: read {got} of {out.nbytes} bytes")
    raw = memoryview(out).cast("B")
    step = chunk * dtype.itemsize
    for j, c in enumerate(range(first, last)):
        if zlib.crc32(raw[j * step : (j + 1) * step]) != meta["crc32"][c]:
            raise ColumnError(f"checksum mismatch in rows {c * chunk}..")
    return out[start - lo : stop - lo]


def read_aux(path: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """Read the float64 projections stored behind the array, CRC-checked.

    Args:
        path: The file.
        meta: Its record.

    Returns:
        The projections by name.

    Raises:
        ColumnError: If their CRC does not match.
    """
    total = sum(n for _, n in meta["aux"])
    offset = meta["data_offset"]
    offset += int(np.prod(meta["shape"])) * np.dtype(meta["dtype"]).itemsize
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(8 * total)
    if len(raw) != 8 * total or zlib.crc32(raw) != meta["aux_crc32"]:
        raise ColumnError("checksum mismatch in the stored projections")
    values = np.frombuffer(raw, dtype="<f8")
    out, at = {}, 0
    for name, n in meta["aux"]:
        out[name] = values[at : at + n]
        at += n
    return out


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON file atomically.

    Args:
        path: Final path.
        record: JSON-able dict.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

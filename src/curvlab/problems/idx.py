"""MNIST and Fashion-MNIST read from their IDX files, without torchvision.

The IDX format (LeCun, Cortes & Burges, http://yann.lecun.com/exdb/mnist/)
stores one array per file: a big-endian 4-byte magic number ``0x0000TTNN``
(``TT`` the element type, ``0x08`` for ``uint8``; ``NN`` the number of
dimensions), then ``NN`` big-endian ``uint32`` dimension sizes, then the
elements in C order, big-endian. MNIST images have magic 2051 (``uint8``,
3-D: ``N x 28 x 28``) and labels 2049 (``uint8``, 1-D).

:func:`load_idx_dataset` reads the four files of MNIST or Fashion-MNIST,
plain or gzipped, from either layout:

* torchvision's, ``data_dir/MNIST/raw/<file>`` (``FashionMNIST/raw`` for
  Fashion-MNIST), or
* a flat folder, ``data_dir/<file>``.

It returns what ``torchvision.datasets.MNIST`` holds (``uint8`` images and
``int64`` labels, in file order); :func:`curvlab.problems.vision.load_vision`
preprocesses them.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from curvlab.problems._labels import check_labels

__all__ = [
    "IDX_FILES",
    "find_idx_files",
    "load_idx_dataset",
    "load_idx_split",
    "missing_message",
    "read_idx",
    "write_idx",
]

#: The four files of MNIST-like data sets: (train images, train labels, test
#: images, test labels).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Element type code -> big-endian numpy dtype.
_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file, plain or gzipped (detected from its first bytes).

    Args:
        path: The file.

    Returns:
        The array, in native byte order, with the dtype and shape of the file.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a well-formed IDX file (bad magic number,
            unknown type, size that does not match the header, broken gzip),
            naming the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path} is not a readable gzip file: {error}.") from error
    if len(raw) < 4:
        raise ValueError(
            f"{path} is not an IDX file: it holds {len(raw)} bytes, fewer than the "
            "4-byte magic number."
        )
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES or raw[3] == 0:
        magic = int.from_bytes(raw[:4], "big")
        raise ValueError(
            f"{path} is not an IDX file: magic number {magic} (0x{magic:08x}); "
            "expected 0x0000TTNN with type TT in "
            f"{', '.join(f'0x{c:02x}' for c in _TYPES)} (MNIST: 2051 for "
            "images, 2049 for labels)."
        )
    dtype, ndim = _TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{path} is truncated: its header announces {ndim} dimensions but the "
            f"file holds {len(raw)} bytes."
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path} has {len(raw)} bytes; its header (shape {shape}, "
            f"{dtype.name}) needs {expected}. The file is truncated or corrupt."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool = False) -> None:
    """Write an array as an IDX file (the inverse of :func:`read_idx`).

    Args:
        path: Where to write.
        array: Array of dtype ``uint8``, ``int8``, ``int16``, ``int32``,
            ``float32`` or ``float64`` with 1 to 255 dimensions.
        compress: Write it gzipped.

    Raises:
        ValueError: If the dtype or the number of dimensions cannot be stored.
    """
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}.")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX stores 1 to 255 dimensions. Got {array.ndim}.")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(
        array.shape, dtype=">u4"
    ).tobytes(order="C")
    raw = header + np.ascontiguousarray(array, dtype=_TYPES[code]).tobytes()
    Path(path).write_bytes(gzip.compress(raw) if compress else raw)


def find_idx_files(
    data_dir: str | Path, folder: str = "MNIST"
) -> tuple[dict[str, Path], list[str]]:
    """Locate the four IDX files of an MNIST-like data set.

    Each file is looked up, in this order, as ``data_dir/<folder>/raw/<name>``,
    the same with ``.gz``, ``data_dir/<name>`` and ``data_dir/<name>.gz``.

    Args:
        data_dir: The folder given by the user.
        folder: torchvision's folder name of the data set (``"MNIST"``,
            ``"FashionMNIST"``).

    Returns:
        The paths found, keyed by the names in :data:`IDX_FILES`, and the names
        not found.
    """
    root = Path(data_dir).expanduser()
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in IDX_FILES:
        candidates = (
            root / folder / "raw" / name,
            root / folder / "raw" / f"{name}.gz",
            root / name,
            root / f"{name}.gz",
        )
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    return found, missing


def missing_message(data_dir: str | Path, folder: str, missing: list[str]) -> str:
    """Explain which IDX files are missing where, and which layouts are read.

    Args:
        data_dir: The folder given by the user.
        folder: torchvision's folder name of the data set.
        missing: Names from :data:`IDX_FILES` that were not found.

    Returns:
        The message.
    """
    return (
        f"{folder} files are missing in {data_dir}: expected "
        f"{', '.join(f'{folder}/raw/{name}' for name in IDX_FILES)} "
        "(torchvision's layout), or the same four files directly in the folder; "
        f"each may be gzipped (.gz). Missing {', '.join(missing)}. curvlab never "
        "downloads data: place the files there."
    )


def load_idx_dataset(
    data_dir: str | Path, folder: str = "MNIST", *, num_classes: int = 10
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Read the train and test splits of MNIST or Fashion-MNIST from IDX files.

    Args:
        data_dir: Folder in one of the layouts of :func:`find_idx_files`.
        folder: ``"MNIST"`` or ``"FashionMNIST"`` (torchvision's folder name).
        num_classes: Labels must lie in ``0 .. num_classes - 1``.

    Returns:
        ``(X_train, y_train, X_test, y_test)``: ``uint8`` images of shape
        ``(N, 1, H, W)`` and ``int64`` labels, in file order.

    Raises:
        FileNotFoundError: Naming the folder and the missing files.
        ValueError: If a file is malformed, images are not 3-D ``uint8``,
            labels not 1-D ``uint8`` within range, or their counts differ.
    """
    X_train, y_train = load_idx_split(
        data_dir, folder, train=True, num_classes=num_classes
    )
    X_test, y_test = load_idx_split(
        data_dir, folder, train=False, num_classes=num_classes
    )
    return X_train, y_train, X_test, y_test


def load_idx_split(
    data_dir: str | Path,
    folder: str = "MNIST",
    *,
    train: bool = True,
    num_classes: int = 10,
) -> tuple[Tensor, Tensor]:
    """Read one split of MNIST or Fashion-MNIST from IDX files.

    Args:
        data_dir: Folder in one of the layouts of :func:`find_idx_files`.
        folder: ``"MNIST"`` or ``"FashionMNIST"`` (torchvision's folder name).
        train: The train split (``train-*`` files) or the test split
            (``t10k-*`` files).
        num_classes: Labels must lie in ``0 .. num_classes - 1``.

    Returns:
        ``uint8`` images of shape ``(N, 1, H, W)`` and ``int64`` labels, in
        file order.

    Raises:
        FileNotFoundError: Naming the folder and the missing files (all four
            files are required, as torchvision does).
        ValueError: If a file is malformed, images are not 3-D ``uint8``,
            labels not 1-D ``uint8`` within range, or their counts differ.
    """
    found, missing = find_idx_files(data_dir, folder)
    if missing:
        raise FileNotFoundError(missing_message(data_dir, folder, missing))
    images, labels = IDX_FILES[:2] if train else IDX_FILES[2:]
    return _split(found[images], found[labels], num_classes)


def _split(
    images_path: Path, labels_path: Path, num_classes: int
) -> tuple[Tensor, Tensor]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{images_path} must hold uint8 images of shape (N, H, W) (magic 2051). "
            f"Got {images.dtype} of shape {images.shape}."
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{labels_path} must hold uint8 labels of shape (N,) (magic 2049). "
            f"Got {labels.dtype} of shape {labels.shape}."
        )
    check_labels(images_path, len(images), labels_path, labels, num_classes)
    X = torch.from_numpy(images).unsqueeze(1)
    return X, torch.from_numpy(labels.astype(np.int64))

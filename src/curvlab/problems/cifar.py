"""CIFAR-10 and CIFAR-100 read from their Python pickle batches, without torchvision.

The "python version" archives of Krizhevsky (2009),
https://www.cs.toronto.edu/~kriz/cifar.html, unpack into one folder per data set:

* ``cifar-10-batches-py/``: ``data_batch_1`` to ``data_batch_5`` (10,000 train
  images each) and ``test_batch`` (10,000), labels under ``b"labels"``;
* ``cifar-100-python/``: ``train`` (50,000) and ``test`` (10,000), fine labels
  (100 classes) under ``b"fine_labels"``.

Each file is a pickled dict whose ``b"data"`` entry is a ``uint8`` array of shape
``(N, 3072)``: every row is one 32x32 image, row-major, red plane first, then
green, then blue (so ``row.reshape(3, 32, 32)`` is the ``(C, H, W)`` image).
Labels are a list (or array) of ``N`` ints. The archive's ``batches.meta`` and
``meta`` files hold only class names and are not read.

The folder is looked up as ``data_dir/<folder>``, where ``torchvision`` and the
archive put it, or is ``data_dir`` itself when its name is the folder's.

Unpickling runs code named in the file, so the pickles are read with an
unpickler that accepts only what these batches hold (NumPy arrays, lists,
strings, numbers); anything else is refused as a damaged file.

:func:`load_cifar_split` returns what ``torchvision.datasets.CIFAR10`` holds in
channels-first order (``uint8`` images ``(N, 3, 32, 32)`` and ``int64`` labels,
in file order). :func:`write_cifar_batch` writes the same format, for tests and
for data sets generated for the purpose.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from curvlab.problems._labels import check_labels

__all__ = [
    "CIFAR_DATASETS",
    "check_cifar_files",
    "cifar_folder",
    "load_cifar_split",
    "read_cifar_batch",
    "write_cifar_batch",
]


class _CifarSpec(NamedTuple):
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    archive: str


#: The two CIFAR data sets: folder, batch files, label key and class count.
CIFAR_DATASETS: dict[str, _CifarSpec] = {
    "cifar10": _CifarSpec(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        10,
        "cifar-10-python.tar.gz",
    ),
    "cifar100": _CifarSpec(
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        ("test",),
        "fine_labels",
        100,
        "cifar-100-python.tar.gz",
    ),
}

_IMAGE_SHAPE = (3, 32, 32)
_ROW = 3 * 32 * 32
# The only globals a CIFAR pickle refers to: NumPy's array reconstruction (module
# path of NumPy 1 and 2) and the codec Python 3 uses to pickle bytes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that builds only NumPy arrays and plain Python values."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which a CIFAR batch never holds"
            )
        return super().find_class(module, name)


def cifar_folder(data_dir: str | Path, dataset: str = "cifar10") -> Path:
    """Return the folder that should hold the batch files of ``dataset``.

    Args:
        data_dir: The folder given by the user.
        dataset: ``"cifar10"`` or ``"cifar100"``.

    Returns:
        ``data_dir`` itself when its name is the data set's folder name
        (``cifar-10-batches-py``, ``cifar-100-python``), else
        ``data_dir/<folder name>``.
    """
    root = Path(data_dir).expanduser()
    folder = CIFAR_DATASETS[dataset].folder
    return root if root.name == folder else root / folder


def read_cifar_batch(
    path: str | Path, *, label_key: str = "labels", num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled CIFAR batch.

    Args:
        path: The batch file.
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100). The
            dict's keys may be ``bytes`` (the original files) or ``str``.
        num_classes: Labels must lie in ``0 .. num_classes - 1``.

    Returns:
        ``uint8`` images of shape ``(N, 3, 32, 32)`` and ``int64`` labels ``(N,)``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a readable pickle of a CIFAR batch (not a
            dict, ``data`` or the labels missing, wrong dtype or shape, labels
            out of range, counts that differ), naming the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # a damaged pickle can fail in many ways
        raise ValueError(
            f"{path} is not a readable CIFAR batch (a Python pickle): {error}. "
            "The file is truncated or corrupt; extract it again from the archive."
        ) from error
    if not isinstance(batch, dict):
        raise ValueError(
            f"{path} must hold a pickled dict with 'data' and '{label_key}'. "
            f"Got {type(batch).__name__}."
        )
    entries = {
        key.decode("latin1") if isinstance(key, bytes) else key: value
        for key, value in batch.items()
    }
    missing = [key for key in ("data", label_key) if key not in entries]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(repr(k) for k in missing)}; a CIFAR batch "
            f"holds 'data' and '{label_key}'. Got keys "
            f"{sorted(map(str, entries))}."
        )
    data = entries["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        kind = (
            f"{data.dtype} of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise ValueError(
            f"{path}: 'data' must be a uint8 array of shape (N, {_ROW}). Got {kind}."
        )
    if data.shape[1] != _ROW:
        raise ValueError(
            f"{path}: 'data' must have shape (N, {_ROW}) (3x32x32 images, row-major "
            f"CHW). Got {data.shape}."
        )
    try:
        labels = np.asarray(entries[label_key], dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: '{label_key}' must be a list of ints.") from error
    if labels.shape != (len(data),):
        raise ValueError(
            f"{path} holds {len(data)} images but '{label_key}' has shape "
            f"{labels.shape}; expected ({len(data)},)."
        )
    check_labels(path, len(data), path, labels, num_classes)
    return data.reshape(-1, *_IMAGE_SHAPE), labels


def write_cifar_batch(
    path: str | Path,
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    label_key: str = "labels",
) -> None:
    """Write a CIFAR batch in the original format (the inverse of reading it).

    The dict has ``bytes`` keys ``b"data"`` (``uint8`` ``(N, 3072)``) and
    ``b"labels"`` or ``b"fine_labels"`` (a list of ints), like the files of the
    archives.

    Args:
        path: Where to write.
        images: ``uint8`` images of shape ``(N, 3, 32, 32)`` or ``(N, 3072)``.
        labels: ``N`` integer labels.
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100).

    Raises:
        ValueError: If the images are not ``uint8`` of a CIFAR shape or the
            label count differs.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] not in (_IMAGE_SHAPE, (_ROW,)):
        raise ValueError(
            f"images must be uint8 of shape (N, 3, 32, 32) or (N, {_ROW}). Got "
            f"{images.dtype} of shape {images.shape}."
        )
    labels = [int(label) for label in labels]
    if len(labels) != len(images):
        raise ValueError(
            f"labels must have one entry per image ({len(images)}). Got {len(labels)}."
        )
    batch = {
        b"data": np.ascontiguousarray(images.reshape(len(images), _ROW)),
        label_key.encode(): labels,
    }
    Path(path).write_bytes(pickle.dumps(batch, protocol=2))


def load_cifar_split(
    data_dir: str | Path, dataset: str = "cifar10", *, train: bool = True
) -> tuple[Tensor, Tensor]:
    """Read one split of CIFAR-10 or CIFAR-100 from the pickle batches.

    The train split of CIFAR-10 is ``data_batch_1`` to ``data_batch_5`` in this
    order; every other split is a single file.

    Args:
        data_dir: Folder holding the data set's folder (see :func:`cifar_folder`).
        dataset: ``"cifar10"`` or ``"cifar100"``.
        train: The train or the test split.

    Returns:
        ``uint8`` images of shape ``(N, 3, 32, 32)`` and ``int64`` labels, in
        file order.

    Raises:
        ValueError: If ``dataset`` is unknown or a file is damaged (naming it).
        FileNotFoundError: Naming every missing file with the path where it
            should be.
    """
    if dataset not in CIFAR_DATASETS:
        raise ValueError(
            f"dataset must be one of {sorted(CIFAR_DATASETS)}. Got {dataset!r}."
        )
    spec = CIFAR_DATASETS[dataset]
    paths = check_cifar_files(data_dir, dataset, train=train)
    parts = [
        read_cifar_batch(p, label_key=spec.label_key, num_classes=spec.num_classes)
        for p in paths
    ]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


def check_cifar_files(
    data_dir: str | Path, dataset: str = "cifar10", *, train: bool | None = None
) -> list[Path]:
    """Check that the batch files of ``dataset`` exist.

    Args:
        data_dir: The folder given by the user.
        dataset: ``"cifar10"`` or ``"cifar100"``.
        train: Check the train files, the test files, or both (``None``).

    Returns:
        The paths of the files checked, in reading order.

    Raises:
        FileNotFoundError: Naming each missing file with its expected path, the
            archive to extract, and the archive's path when it lies in
            ``data_dir`` unextracted.
    """
    spec = CIFAR_DATASETS[dataset]
    folder = cifar_folder(data_dir, dataset)
    names = {
        True: spec.train_files,
        False: spec.test_files,
        None: spec.train_files + spec.test_files,
    }[train]
    paths = [folder / name for name in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        root = Path(data_dir).expanduser()
        archive = root / spec.archive
        hint = (
            f"{archive} is there: extract it with `tar -xzf {archive} -C {root}`."
            if archive.is_file()
            else f"Extract {spec.archive} "
            f"(https://www.cs.toronto.edu/~kriz/cifar.html) into {root}."
        )
        raise FileNotFoundError(
            f"{spec.title} files are missing: {', '.join(map(str, missing))}. "
            f"Expected {', '.join(names)} in {folder}. {hint} curvlab never "
            "downloads data."
        )
    return paths

"""ImageNet-shaped data read from a folder of NumPy arrays, memory-mapped.

ImageNet has no single official array format, and decoding 1.28 million JPEGs is
a job for a data pipeline, not for a curvature library. curvlab therefore reads
images that were decoded and resized once, by any tool, into this layout::

    data_dir/imagenet/train/X.npy   uint8, (N, 224, 224, 3) or (N, 3, 224, 224)
    data_dir/imagenet/train/y.npy   integers, (N,), class indices 0 .. 999
    data_dir/imagenet/val/X.npy     the same for the validation split
    data_dir/imagenet/val/y.npy

``data_dir`` may also be the ``imagenet`` folder itself. ``X.npy`` holds raw
pixels, channels last (as PIL and most decoders give them) or channels first;
any side length is read (the ImageNet convention, and the paper's, is a 224x224
center crop). ``.npy`` is NumPy's own format (:func:`numpy.save`), so the files
can be written by a loop that fills an :func:`numpy.lib.format.open_memmap`
array without holding the data set in memory.

:func:`load_array_split` opens ``X.npy`` memory-mapped (copy-on-write, so nothing
is ever written back) and returns a ``uint8`` tensor view of shape
``(N, 3, H, W)`` over it: nothing is read from disk until a batch is used, and
a data set far larger than memory can be used as is. Labels are read whole.
:func:`write_array_split` writes the format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from curvlab.problems._labels import check_labels

__all__ = [
    "ARRAY_SPLITS",
    "IMAGENET_FILES",
    "array_folder",
    "check_array_files",
    "load_array_split",
    "write_array_split",
]

#: Split name -> folder name under ``imagenet/``.
ARRAY_SPLITS = {"train": "train", "test": "val"}

#: The four files, relative to ``data_dir``.
IMAGENET_FILES = tuple(
    f"imagenet/{folder}/{name}"
    for folder in ARRAY_SPLITS.values()
    for name in ("X.npy", "y.npy")
)

_FOLDER = "imagenet"


def array_folder(data_dir: str | Path) -> Path:
    """Return the ``imagenet`` folder: ``data_dir`` itself or ``data_dir/imagenet``.

    Args:
        data_dir: The folder given by the user.

    Returns:
        The folder holding ``train/`` and ``val/``.
    """
    root = Path(data_dir).expanduser()
    return root if root.name == _FOLDER else root / _FOLDER


def check_array_files(data_dir: str | Path, *, train: bool | None = None) -> list[Path]:
    """Check that ``X.npy`` and ``y.npy`` exist for the requested splits.

    Args:
        data_dir: The folder given by the user.
        train: Check the train files, the validation files, or both (``None``).

    Returns:
        The paths checked: ``X.npy`` then ``y.npy`` of each split.

    Raises:
        FileNotFoundError: Naming each missing file with its expected path and
            describing the format.
    """
    folder = array_folder(data_dir)
    splits = {True: ("train",), False: ("test",), None: ("train", "test")}[train]
    paths = [
        folder / ARRAY_SPLITS[split] / name
        for split in splits
        for name in ("X.npy", "y.npy")
    ]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"ImageNet array files are missing: {', '.join(map(str, missing))}. "
            f"Expected {folder}/train/X.npy and y.npy, and {folder}/val/X.npy and "
            "y.npy: X uint8 images (N, H, W, 3) or (N, 3, H, W), y integer class "
            "indices (N,), written with numpy.save (see curvlab.problems.arrays). "
            "curvlab never downloads data."
        )
    return paths


def load_array_split(
    data_dir: str | Path, *, train: bool = True, num_classes: int = 1000
) -> tuple[Tensor, Tensor]:
    """Open one split of an array folder, the images memory-mapped.

    Args:
        data_dir: Folder in the layout of this module.
        train: The train split (``train/``) or the validation split (``val/``).
        num_classes: Labels must lie in ``0 .. num_classes - 1``.

    Returns:
        A ``uint8`` tensor of shape ``(N, 3, H, W)`` that views the mapped file
        (non-contiguous when the file is channels-last) and ``int64`` labels.

    Raises:
        FileNotFoundError: If a file is missing, naming it.
        ValueError: If a file is not a readable ``.npy`` file, or holds the
            wrong dtype, shape or label range (naming the file).
    """
    X_path, y_path = check_array_files(data_dir, train=train)
    X = _open(X_path, mmap=True)
    y = _open(y_path, mmap=False)
    if X.dtype != np.uint8 or X.ndim != 4:
        raise ValueError(
            f"{X_path} must hold uint8 images of shape (N, H, W, 3) or (N, 3, H, W). "
            f"Got {X.dtype} of shape {X.shape}."
        )
    last, first = X.shape[3] == 3, X.shape[1] == 3
    if last == first:
        raise ValueError(
            f"{X_path} has shape {X.shape}: expected 3 channels on axis 1 "
            "(N, 3, H, W) or on axis 3 (N, H, W, 3), not on both or neither."
        )
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(
            f"{y_path} must hold integer labels of shape (N,). Got {y.dtype} of "
            f"shape {y.shape}."
        )
    check_labels(X_path, len(X), y_path, y, num_classes)
    images = torch.from_numpy(X)
    if last:
        images = images.permute(0, 3, 1, 2)
    return images, torch.from_numpy(y.astype(np.int64))


def write_array_split(
    folder: str | Path,
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
) -> None:
    """Write ``X.npy`` and ``y.npy`` of one split into ``folder``.

    Args:
        folder: The split's folder, e.g. ``data_dir/imagenet/train`` (created).
        images: ``uint8`` images, ``(N, H, W, 3)`` or ``(N, 3, H, W)``.
        labels: ``N`` integer labels.

    Raises:
        ValueError: If the images are not 4-D ``uint8`` or the counts differ.
    """
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"images must be 4-D uint8. Got {images.dtype} of shape {images.shape}."
        )
    if labels.shape != (len(images),):
        raise ValueError(
            f"labels must have shape ({len(images)},). Got {labels.shape}."
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "X.npy", images)
    np.save(folder / "y.npy", labels)


def _open(path: Path, *, mmap: bool) -> np.ndarray:
    try:
        # Copy-on-write: a writable view for torch, nothing written back.
        return np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(
            f"{path} is not a readable .npy file ({error}). The file is truncated "
            "or corrupt; write it again with numpy.save."
        ) from error

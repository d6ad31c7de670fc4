"""SVHN read from its MATLAB files with SciPy, without torchvision.

The cropped-digits format of SVHN (Netzer et al., 2011,
http://ufldl.stanford.edu/housenumbers/) comes as two MATLAB (v5) files,
``train_32x32.mat`` (73,257 images) and ``test_32x32.mat`` (26,032). Each holds

* ``X``: ``uint8`` images of shape ``(32, 32, 3, N)`` (height, width, channel,
  sample), and
* ``y``: labels of shape ``(N, 1)`` in ``1 .. 10``, where ``10`` stands for the
  digit 0.

:func:`load_svhn_split` reads one file with :func:`scipy.io.loadmat` and returns
what ``torchvision.datasets.SVHN`` holds: ``uint8`` images of shape
``(N, 3, 32, 32)`` and ``int64`` labels with 10 mapped to 0, in file order. The
files sit directly in ``data_dir`` (torchvision's ``root``).
:func:`write_svhn_mat` writes the same format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
import torch
from torch import Tensor

__all__ = [
    "SVHN_FILES",
    "check_svhn_files",
    "load_svhn_split",
    "read_svhn_mat",
    "write_svhn_mat",
]

#: The two files: (train, test).
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def check_svhn_files(data_dir: str | Path, *, train: bool | None = None) -> list[Path]:
    """Check that the SVHN files exist in ``data_dir``.

    Args:
        data_dir: The folder given by the user.
        train: Check the train file, the test file, or both (``None``).

    Returns:
        The paths checked.

    Raises:
        FileNotFoundError: Naming each missing file with its expected path.
    """
    root = Path(data_dir).expanduser()
    names = {True: SVHN_FILES[:1], False: SVHN_FILES[1:], None: SVHN_FILES}[train]
    paths = [root / name for name in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"SVHN files are missing: {', '.join(map(str, missing))}. Expected "
            f"{', '.join(names)} (the cropped-digits format, "
            f"http://ufldl.stanford.edu/housenumbers/) directly in {root}. curvlab "
            "never downloads data."
        )
    return paths


def load_svhn_split(
    data_dir: str | Path, *, train: bool = True
) -> tuple[Tensor, Tensor]:
    """Read the train or the test split of SVHN.

    Args:
        data_dir: Folder holding ``train_32x32.mat`` and ``test_32x32.mat``.
        train: The train or the test split.

    Returns:
        ``uint8`` images of shape ``(N, 3, 32, 32)`` and ``int64`` labels in
        ``0 .. 9`` (the files' 10 is the digit 0), in file order.

    Raises:
        FileNotFoundError: If the file is missing, naming its expected path.
        ValueError: If the file is not a readable MATLAB file, lacks ``X`` or
            ``y``, or holds arrays of the wrong dtype, shape or range (naming
            the file).
    """
    (path,) = check_svhn_files(data_dir, train=train)
    return read_svhn_mat(path)


def read_svhn_mat(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read one SVHN ``.mat`` file (see :func:`load_svhn_split`).

    Args:
        path: The file.

    Returns:
        ``uint8`` images ``(N, 3, 32, 32)`` and ``int64`` labels in ``0 .. 9``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is damaged or holds the wrong arrays, naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        content = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as error:  # damaged files fail in many ways inside SciPy
        raise ValueError(
            f"{path} is not a readable MATLAB file ({type(error).__name__}: "
            f"{error}). The file is truncated or corrupt; SVHN's files are MATLAB "
            "v5 files that scipy.io.loadmat reads."
        ) from error
    missing = [key for key in ("X", "y") if key not in content]
    if missing:
        raise ValueError(
            f"{path} lacks {' and '.join(missing)}; an SVHN file holds X "
            "(32, 32, 3, N) uint8 and y (N, 1)."
        )
    X, y = content["X"], content["y"]
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise ValueError(
            f"{path}: X must be uint8 of shape (32, 32, 3, N). Got {X.dtype} of "
            f"shape {X.shape}."
        )
    num = X.shape[3]
    if y.size != num or y.ndim not in (1, 2) or y.dtype.kind not in "iuf":
        raise ValueError(
            f"{path}: y must hold {num} labels, shape ({num}, 1). Got {y.dtype} of "
            f"shape {y.shape}."
        )
    labels = y.reshape(-1)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise ValueError(f"{path}: y must hold integer labels.")
    labels = labels.astype(np.int64)
    if num and (labels.min() < 0 or labels.max() > 10):
        raise ValueError(
            f"{path} holds labels in [{labels.min()}, {labels.max()}]; expected 1 "
            "to 10 (10 for the digit 0)."
        )
    labels[labels == 10] = 0
    images = np.ascontiguousarray(X.transpose(3, 2, 0, 1))
    return torch.from_numpy(images), torch.from_numpy(labels)


def write_svhn_mat(
    path: str | Path, images: np.ndarray, labels: Sequence[int] | np.ndarray
) -> None:
    """Write images and labels as an SVHN ``.mat`` file (the inverse of reading).

    Args:
        path: Where to write.
        images: ``uint8`` images of shape ``(N, 3, 32, 32)``.
        labels: ``N`` labels in ``0 .. 9``; 0 is stored as 10, as in SVHN.

    Raises:
        ValueError: If the images are not ``uint8`` ``(N, 3, 32, 32)`` or the
            labels do not fit.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32):
        raise ValueError(
            "images must be uint8 of shape (N, 3, 32, 32). Got "
            f"{images.dtype} of shape {images.shape}."
        )
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.shape != (len(images),) or (
        len(labels) and (labels.min() < 0 or labels.max() > 9)
    ):
        raise ValueError(
            f"labels must be {len(images)} digits in 0 .. 9. Got shape {labels.shape}."
        )
    y = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
    X = np.ascontiguousarray(images.transpose(2, 3, 1, 0))
    scipy.io.savemat(Path(path), {"X": X, "y": y})

"""Torchvision image data sets read from a local folder, never downloaded.

:func:`load_vision` reads MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100 and SVHN
through torchvision (the ``vision`` extra). It checks that the files are there
before torchvision is imported, so a missing file gives a clear
``FileNotFoundError`` even without torchvision, and curvlab never downloads
anything unless asked to with ``download=True``. Only the file reading depends
on torchvision: the arrays are converted to tensors without its transforms.

MNIST and Fashion-MNIST need no torchvision: when it is missing or fails to
import, or when the files are not in torchvision's layout, their IDX files are
read by :mod:`curvlab.problems.idx`, which returns the same ``uint8`` arrays, so
the tensors are the same. Their files may sit in torchvision's layout
(``MNIST/raw/<file>``, ``FashionMNIST/raw/<file>``) or directly in
``data_dir``, plain or gzipped.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from curvlab.problems import idx
from curvlab.problems.data import DataSplit, resize_images

__all__ = [
    "VISION_DATASETS",
    "check_files",
    "import_torchvision_datasets",
    "load_vision",
]


class _VisionSpec(NamedTuple):
    torchvision_name: str
    files: tuple[str, ...]


_MNIST_FILES = idx.IDX_FILES
# Data sets stored as IDX files, readable without torchvision.
_IDX_DATASETS = ("mnist", "fashion_mnist")

#: The data sets :func:`load_vision` reads, with the files it expects under
#: ``data_dir`` (the layout torchvision writes when it downloads them). MNIST and
#: Fashion-MNIST are also read from a flat folder and gzipped files (see
#: :func:`curvlab.problems.idx.find_idx_files`).
VISION_DATASETS: dict[str, _VisionSpec] = {
    "mnist": _VisionSpec("MNIST", tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES)),
    "fashion_mnist": _VisionSpec(
        "FashionMNIST", tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES)
    ),
    "cifar10": _VisionSpec(
        "CIFAR10",
        tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))
        + ("cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"),
    ),
    "cifar100": _VisionSpec(
        "CIFAR100",
        ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
    ),
    "svhn": _VisionSpec("SVHN", ("train_32x32.mat", "test_32x32.mat")),
}


def load_vision(
    dataset: str,
    data_dir: str | Path,
    *,
    size: int | None = None,
    standardize: bool = True,
    dtype: torch.dtype = torch.float32,
    download: bool = False,
) -> DataSplit:
    """Read a torchvision data set from a local folder, without transforms.

    The official train and test splits are used as they are (MNIST 60k/10k,
    CIFAR 50k/10k, SVHN 73,257/26,032), in file order, with no augmentation.
    Pixels are scaled to ``[0, 1]`` and shaped ``(N, C, H, W)``; only the file
    reading goes through torchvision (MNIST and Fashion-MNIST: through
    :mod:`curvlab.problems.idx` when torchvision cannot be imported or the files
    are flat or gzipped; the tensors are the same).

    Args:
        dataset: One of ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``,
            ``"cifar100"``, ``"svhn"``.
        data_dir: Folder holding the files listed in :data:`VISION_DATASETS`
            (the layout torchvision's ``root`` argument uses). For MNIST and
            Fashion-MNIST the four IDX files may also sit directly in it, and
            may be gzipped.
        size: If given, resize to ``size x size`` with :func:`resize_images`.
        standardize: Standardise each channel with the mean and standard
            deviation of the train split.
        dtype: Floating dtype of the inputs (and of the preprocessing); labels
            are ``int64``.
        download: Let torchvision download missing files. Off by default:
            curvlab never downloads unless asked.

    Returns:
        The train and test tensors.

    Raises:
        ValueError: If ``dataset`` is unknown, or an IDX file of MNIST or
            Fashion-MNIST is malformed.
        FileNotFoundError: If ``download`` is off and files are missing.
        ImportError: If torchvision cannot be imported (not for MNIST and
            Fashion-MNIST unless ``download`` is on).
    """
    if dataset not in VISION_DATASETS:
        raise ValueError(
            f"dataset must be one of {sorted(VISION_DATASETS)}. Got {dataset!r}."
        )
    root = Path(data_dir).expanduser()
    if not download:
        check_files(dataset, root)
    X_train, y_train = _vision_arrays(dataset, str(root), True, download)
    X_test, y_test = _vision_arrays(dataset, str(root), False, download)
    X_train, X_test = X_train.to(dtype) / 255.0, X_test.to(dtype) / 255.0
    if size is not None:
        X_train, X_test = resize_images(X_train, size), resize_images(X_test, size)
    if standardize:
        mean = X_train.mean(dim=(0, 2, 3), keepdim=True)
        std = X_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
    return DataSplit(X_train, y_train.clone(), X_test, y_test.clone())


def check_files(dataset: str, data_dir: Path) -> None:
    """Check that the files of a torchvision data set exist under ``data_dir``.

    Args:
        dataset: A key of :data:`VISION_DATASETS`.
        data_dir: The folder to look in.

    Raises:
        FileNotFoundError: Naming the folder and the missing files.
    """
    spec = VISION_DATASETS[dataset]
    if dataset in _IDX_DATASETS:
        _, missing = idx.find_idx_files(data_dir, spec.torchvision_name)
        if missing:
            raise FileNotFoundError(
                idx.missing_message(data_dir, spec.torchvision_name, missing)
            )
        return
    missing = [name for name in spec.files if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{spec.torchvision_name} files are missing in {data_dir}: expected "
            f"{', '.join(spec.files)}; missing {', '.join(missing)}. curvlab never "
            "downloads data: place the files there (torchvision's layout), or call "
            "load_vision(..., download=True) once to let torchvision fetch them."
        )


def import_torchvision_datasets() -> Any:
    """Import ``torchvision.datasets``, or explain how to get it.

    Returns:
        The ``torchvision.datasets`` module.

    Raises:
        ImportError: If torchvision is missing or fails to import (for example
            when it was built for another torch version).
    """
    # A torchvision built for another torch raises RuntimeError on import, so any
    # exception counts as "not available".
    try:
        import torchvision.datasets as datasets
    except Exception as error:
        raise ImportError(
            "Reading image data sets from files needs torchvision, which could not "
            f"be imported ({type(error).__name__}: {error}). "
            "Install it with `pip install curvlab[vision]`."
        ) from error
    return datasets


@functools.lru_cache(maxsize=4)
def _vision_arrays(
    dataset: str, root: str, train: bool, download: bool
) -> tuple[Tensor, Tensor]:
    """Raw ``uint8`` images and ``int64`` labels of one split, cached."""
    spec = VISION_DATASETS[dataset]
    if dataset in _IDX_DATASETS and not download:
        # torchvision reads only the plain files of its own layout; the IDX
        # reader reads those too, and the flat and gzipped ones.
        if not all((Path(root) / name).is_file() for name in spec.files):
            return idx.load_idx_split(root, spec.torchvision_name, train=train)
        try:
            datasets = import_torchvision_datasets()
        except ImportError:
            return idx.load_idx_split(root, spec.torchvision_name, train=train)
    else:
        datasets = import_torchvision_datasets()
    cls = getattr(datasets, spec.torchvision_name)
    if dataset == "svhn":
        split = "train" if train else "test"
        data = cls(root=root, split=split, download=download)
        # SVHN keeps (N, 3, 32, 32) arrays and maps label 10 to 0 itself.
        return torch.as_tensor(np.asarray(data.data)), _labels(data.labels)
    data = cls(root=root, train=train, download=download)
    images = torch.as_tensor(np.asarray(data.data))
    # MNIST-like sets hold (N, H, W), CIFAR (N, H, W, C).
    if images.ndim == 3:
        return images.unsqueeze(1), _labels(data.targets)
    return images.permute(0, 3, 1, 2).contiguous(), _labels(data.targets)


def _labels(labels: Any) -> Tensor:
    return torch.as_tensor(np.asarray(labels), dtype=torch.int64)

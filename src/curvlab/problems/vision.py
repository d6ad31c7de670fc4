r"""Image data sets read from their files in a local folder, never downloaded.

:func:`load_vision` reads MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100 and SVHN
with curvlab's own readers; torchvision is never imported (its PyPI build does
not even import beside a CPU build of torch):

=================  ===========================================  ==================
data set           files under ``data_dir``                     reader
=================  ===========================================  ==================
``mnist``          ``MNIST/raw/*-idx?-ubyte`` or flat, ``.gz``  :mod:`~.idx`
``fashion_mnist``  ``FashionMNIST/raw/*-idx?-ubyte`` or flat    :mod:`~.idx`
``cifar10``        ``cifar-10-batches-py/data_batch_1..5``,     :mod:`~.cifar`
                   ``test_batch`` (Python pickles)
``cifar100``       ``cifar-100-python/train``, ``test``         :mod:`~.cifar`
``svhn``           ``train_32x32.mat``, ``test_32x32.mat``      :mod:`~.svhn`
=================  ===========================================  ==================

These are the layouts torchvision writes when it downloads the sets, so a
folder prepared for torchvision works as it is.

**Normalisation.** Pixels are scaled to ``[0, 1]`` and, by default, each channel
is standardised with the mean and standard deviation of the **train split,
computed from the files**:

.. math::
    x \mapsto (x - \mu_c) / \sigma_c, \qquad
    \mu_c, \sigma_c = \text{mean and std of channel } c
    \text{ over all train pixels.}

This is what the papers' code does for the data sets where it standardises:
DeepOBS, whose ``cifar10_3c3d`` and ``cifar100_allcnnc`` the sketched-overlap
paper uses, normalises CIFAR-10 with ``(0.49139968, 0.48215841, 0.44653091)``,
``(0.24703223, 0.24348513, 0.26158784)`` and CIFAR-100 with ``(0.50707516,
0.48654887, 0.44091784)``, ``(0.26733429, 0.25643846, 0.27615047)``: exactly these
train-set statistics, computed once and pasted in. LayerHessians uses the same
statistics rounded (CIFAR-10 ``(125.3, 123.0, 113.9) / 255``,
``(63.0, 62.1, 66.7) / 255``; MNIST ``0.1307``, ``0.3081``). curvlab computes
them instead of pasting them so that one rule covers every set and every
folder: on the official files it gives the published constants (up to float
rounding; curvlab's sample standard deviation differs from the population one
by a relative 1e-8 over 51 million pixels), and on files generated for a test
it still yields standardised inputs. Where LayerHessians did not standardise
(Fashion-MNIST and SVHN, mapped to ``[-1, 1]`` by a mean and std of 0.5),
curvlab standardises with the train statistics all the same; pass
``standardize=False`` for the ``[0, 1]`` pixels. The ImageNet arrays of
:mod:`~.arrays` are the exception: see :data:`IMAGENET_MEAN_STD`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from curvlab.problems import cifar, idx, svhn
from curvlab.problems.data import DataSplit, resize_images

__all__ = [
    "IMAGENET_MEAN_STD",
    "VISION_DATASETS",
    "check_files",
    "load_vision",
]

#: Per-channel mean and standard deviation of ImageNet's train set, in ``[0, 1]``
#: pixels: the published constants every ImageNet ResNet-18 (torchvision's
#: included) is trained with. Used as they are, because computing them from an
#: array folder would read the whole train split (about 190 GB at 224x224).
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class _VisionSpec(NamedTuple):
    title: str
    files: tuple[str, ...]
    read: Callable[[Path, bool], tuple[Tensor, Tensor]]


def _svhn_reader(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    return svhn.load_svhn_split(root, train=train)


def _idx_spec(folder: str) -> _VisionSpec:
    return _VisionSpec(
        folder,
        tuple(f"{folder}/raw/{name}" for name in idx.IDX_FILES),
        lambda root, train: idx.load_idx_split(root, folder, train=train),
    )


def _cifar_spec(key: str, title: str) -> _VisionSpec:
    data = cifar.CIFAR_DATASETS[key]
    return _VisionSpec(
        title,
        tuple(f"{data.folder}/{name}" for name in data.train_files + data.test_files),
        lambda root, train: cifar.load_cifar_split(root, key, train=train),
    )


#: The data sets :func:`load_vision` reads: a title, the files expected under
#: ``data_dir`` (torchvision's layout; MNIST and Fashion-MNIST may also be flat
#: and gzipped, the CIFAR folders may be ``data_dir`` itself) and the reader.
VISION_DATASETS: dict[str, _VisionSpec] = {
    "mnist": _idx_spec("MNIST"),
    "fashion_mnist": _idx_spec("FashionMNIST"),
    "cifar10": _cifar_spec("cifar10", "CIFAR10"),
    "cifar100": _cifar_spec("cifar100", "CIFAR100"),
    "svhn": _VisionSpec("SVHN", svhn.SVHN_FILES, _svhn_reader),
}


def load_vision(
    dataset: str,
    data_dir: str | Path,
    *,
    size: int | None = None,
    pad: int = 0,
    standardize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> DataSplit:
    """Read an image data set from a local folder.

    The official train and test splits are used as they are (MNIST 60k/10k,
    CIFAR 50k/10k, SVHN 73,257/26,032), in file order, with no augmentation.
    Pixels are scaled to ``[0, 1]`` and shaped ``(N, C, H, W)``.

    Args:
        dataset: One of ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``,
            ``"cifar100"``, ``"svhn"``.
        data_dir: Folder holding the files listed in :data:`VISION_DATASETS`.
        size: If given, resize to ``size x size`` with :func:`resize_images`.
        pad: Zero-pad every image by this many pixels on each side (black in
            ``[0, 1]`` pixels), as LayerHessians pads MNIST to 32x32. The
            statistics for standardising are those of the unpadded images, so
            the border becomes ``-mean / std``, as with torchvision's
            ``Pad``, ``ToTensor``, ``Normalize``.
        standardize: Standardise each channel with the mean and standard
            deviation of the train split, computed from the files (see the
            module docstring).
        dtype: Floating dtype of the inputs (and of the preprocessing); labels
            are ``int64``.

    Returns:
        The train and test tensors.

    Raises:
        ValueError: If ``dataset`` is unknown, ``pad`` is negative, or a file is
            damaged (naming it).
        FileNotFoundError: If files are missing, naming each and where it
            should be.
    """
    if dataset not in VISION_DATASETS:
        raise ValueError(
            f"dataset must be one of {sorted(VISION_DATASETS)}. Got {dataset!r}."
        )
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be a non-negative int. Got {pad!r}.")
    root = Path(data_dir).expanduser()
    check_files(dataset, root)
    splits = []
    for train in (True, False):
        images, labels = _vision_arrays(dataset, str(root), train)
        # ``to`` copies the cached uint8 images, so the in-place steps are safe.
        splits.append((images.to(dtype).div_(255.0), labels.clone()))
    (X_train, y_train), (X_test, y_test) = splits
    if size is not None:
        X_train, X_test = resize_images(X_train, size), resize_images(X_test, size)
    if standardize:
        mean = X_train.mean(dim=(0, 2, 3), keepdim=True)
        std = X_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    if pad:
        X_train = torch.nn.functional.pad(X_train, (pad,) * 4)
        X_test = torch.nn.functional.pad(X_test, (pad,) * 4)
    if standardize:
        X_train = X_train.sub_(mean).div_(std)
        X_test = X_test.sub_(mean).div_(std)
    return DataSplit(X_train, y_train, X_test, y_test)


def check_files(dataset: str, data_dir: Path) -> None:
    """Check that the files of a data set exist under ``data_dir``.

    Args:
        dataset: A key of :data:`VISION_DATASETS`.
        data_dir: The folder to look in.

    Raises:
        FileNotFoundError: Naming the folder, the missing files and where each
            should be.
    """
    if dataset in ("mnist", "fashion_mnist"):
        folder = VISION_DATASETS[dataset].title
        _, missing = idx.find_idx_files(data_dir, folder)
        if missing:
            raise FileNotFoundError(idx.missing_message(data_dir, folder, missing))
    elif dataset == "svhn":
        svhn.check_svhn_files(data_dir)
    else:
        cifar.check_cifar_files(data_dir, dataset)


@functools.lru_cache(maxsize=4)
def _vision_arrays(dataset: str, root: str, train: bool) -> tuple[Tensor, Tensor]:
    """Raw ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels, cached."""
    return VISION_DATASETS[dataset].read(Path(root), train)

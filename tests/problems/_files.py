"""Small data sets written in their real file formats, for the problem tests."""

import numpy as np

from curvlab.problems import arrays, cifar, idx, svhn

NUM_TRAIN, NUM_TEST = 300, 40


def fake_images(num, shape, seed):
    return np.random.default_rng(seed).integers(0, 256, (num, *shape), dtype=np.uint8)


def fake_labels(num, num_classes, seed):
    """Every class as often as ``num`` allows, in a seeded order."""
    return np.random.default_rng(seed).permutation(np.arange(num) % num_classes)


def fake_split(shape, num_classes, seed=0):
    """``(X_train, y_train, X_test, y_test)`` as numpy arrays."""
    return (
        fake_images(NUM_TRAIN, shape, seed),
        fake_labels(NUM_TRAIN, num_classes, seed),
        fake_images(NUM_TEST, shape, seed + 1),
        fake_labels(NUM_TEST, num_classes, seed + 1),
    )


def write_fake_mnist(data_dir, folder="MNIST", seed=0):
    """The four IDX files in torchvision's layout."""
    split = fake_split((28, 28), 10, seed)
    raw = data_dir / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in zip(idx.IDX_FILES, split, strict=True):
        idx.write_idx(raw / name, array.astype(np.uint8))
    return split


def write_fake_cifar(data_dir, dataset="cifar10", seed=0):
    """The pickle batches (CIFAR-10: train split over five files)."""
    spec = cifar.CIFAR_DATASETS[dataset]
    split = fake_split((3, 32, 32), spec.num_classes, seed)
    X_train, y_train, X_test, y_test = split
    folder = data_dir / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(NUM_TRAIN), len(spec.train_files))
    for name, part in zip(spec.train_files, parts, strict=True):
        cifar.write_cifar_batch(
            folder / name, X_train[part], y_train[part], label_key=spec.label_key
        )
    (name,) = spec.test_files
    cifar.write_cifar_batch(folder / name, X_test, y_test, label_key=spec.label_key)
    return split


def write_fake_svhn(data_dir, seed=0):
    split = fake_split((3, 32, 32), 10, seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    svhn.write_svhn_mat(data_dir / "train_32x32.mat", split[0], split[1])
    svhn.write_svhn_mat(data_dir / "test_32x32.mat", split[2], split[3])
    return split


def write_fake_imagenet(data_dir, *, num_train=20, num_test=10, size=32, last=True):
    """Tiny ImageNet-like arrays: ``size x size`` images, labels in 0..999."""
    shape = (size, size, 3) if last else (3, size, size)
    rng = np.random.default_rng(0)
    split = (
        fake_images(num_train, shape, 0),
        rng.integers(0, 1000, num_train),
        fake_images(num_test, shape, 1),
        rng.integers(0, 1000, num_test),
    )
    folder = arrays.array_folder(data_dir)
    arrays.write_array_split(folder / "train", split[0], split[1])
    arrays.write_array_split(folder / "val", split[2], split[3])
    return split

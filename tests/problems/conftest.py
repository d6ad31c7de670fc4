"""Fixtures for the problem tests: fake torchvision data sets in a temp folder."""

import sys
import types

import numpy as np
import pytest

from curvlab.problems import vision

NUM_TRAIN, NUM_TEST = 300, 40


def _images(num: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num, *shape), dtype=np.uint8)


def _labels(num: int, num_classes: int) -> np.ndarray:
    return np.arange(num) % num_classes


class _FakeMNIST:
    shape = (28, 28)
    num_classes = 10

    def __init__(self, root, train, download):
        assert not download
        num = NUM_TRAIN if train else NUM_TEST
        self.data = _images(num, self.shape, seed=int(train))
        self.targets = list(_labels(num, self.num_classes))


class _FakeCIFAR10(_FakeMNIST):
    shape = (32, 32, 3)


class _FakeCIFAR100(_FakeMNIST):
    shape = (32, 32, 3)
    num_classes = 100


class _FakeSVHN:
    def __init__(self, root, split, download):
        assert not download
        num = NUM_TRAIN if split == "train" else NUM_TEST
        self.data = _images(num, (3, 32, 32), seed=int(split == "train"))
        self.labels = _labels(num, 10)


@pytest.fixture
def fake_torchvision(monkeypatch):
    """Replace torchvision by a stub whose data sets hold random uint8 images."""
    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = _FakeMNIST
    datasets.FashionMNIST = _FakeMNIST
    datasets.CIFAR10 = _FakeCIFAR10
    datasets.CIFAR100 = _FakeCIFAR100
    datasets.SVHN = _FakeSVHN
    datasets.num_train, datasets.num_test = NUM_TRAIN, NUM_TEST
    package = types.ModuleType("torchvision")
    package.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    vision._vision_arrays.cache_clear()
    yield datasets
    vision._vision_arrays.cache_clear()


@pytest.fixture
def no_torchvision(monkeypatch):
    """Make ``import torchvision`` fail, as it does beside a mismatched torch."""
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    vision._vision_arrays.cache_clear()
    yield
    vision._vision_arrays.cache_clear()


@pytest.fixture
def data_dir(tmp_path):
    """A folder holding (empty) files for every torchvision data set."""
    for spec in vision.VISION_DATASETS.values():
        for name in spec.files:
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    return tmp_path

"""Fixtures for the problem tests: small data sets written in their real formats."""

import sys

import pytest

from curvlab.problems import vision
from problems._files import (
    write_fake_cifar,
    write_fake_mnist,
    write_fake_svhn,
)


@pytest.fixture(autouse=True)
def _fresh_cache():
    vision._vision_arrays.cache_clear()
    yield
    vision._vision_arrays.cache_clear()


@pytest.fixture
def no_torchvision(monkeypatch):
    """Make ``import torchvision`` fail, as it does beside a mismatched torch."""
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)


@pytest.fixture
def fake_data(tmp_path):
    """A folder with small MNIST, Fashion-MNIST, CIFAR-10/100 and SVHN files.

    Returns the folder and, per data set, the uint8 arrays written
    ``(X_train, y_train, X_test, y_test)`` (images as stored: MNIST ``(N, 28,
    28)``, the others ``(N, 3, 32, 32)``).
    """
    written = {
        "mnist": write_fake_mnist(tmp_path, "MNIST", seed=0),
        "fashion_mnist": write_fake_mnist(tmp_path, "FashionMNIST", seed=2),
        "cifar10": write_fake_cifar(tmp_path, "cifar10", seed=4),
        "cifar100": write_fake_cifar(tmp_path, "cifar100", seed=6),
        "svhn": write_fake_svhn(tmp_path, seed=8),
    }
    return tmp_path, written

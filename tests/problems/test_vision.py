import re

import pytest
import torch

from curvlab.problems import vision


def test_check_files_names_folder_and_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        vision.check_files("mnist", tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "MNIST/raw/train-images-idx3-ubyte" in message
    assert "never downloads" in message


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("svhn", "test_32x32.mat"),
        ("fashion_mnist", "FashionMNIST/raw/t10k-labels-idx1-ubyte"),
    ],
)
def test_load_vision_checks_files_before_torchvision(
    tmp_path, no_torchvision, dataset, expected
):
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        vision.load_vision(dataset, tmp_path)


def test_load_vision_reports_only_the_missing_files(data_dir, no_torchvision):
    (data_dir / "test_32x32.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing test_32x32\.mat\. curvlab"):
        vision.load_vision("svhn", data_dir)


def test_unimportable_torchvision_gives_install_hint(data_dir, no_torchvision):
    with pytest.raises(ImportError, match=re.escape("pip install curvlab[vision]")):
        vision.load_vision("cifar10", data_dir)  # MNIST needs no torchvision


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="must be one of.*'cifar10'.*Got 'imagenet'"):
        vision.load_vision("imagenet", tmp_path)


@pytest.mark.parametrize(
    ("dataset", "shape"),
    [
        ("mnist", (1, 28, 28)),
        ("fashion_mnist", (1, 28, 28)),
        ("cifar10", (3, 32, 32)),
        ("cifar100", (3, 32, 32)),
        ("svhn", (3, 32, 32)),
    ],
)
def test_load_vision_converts_to_standardised_tensors(
    data_dir, fake_torchvision, dataset, shape
):
    split = vision.load_vision(dataset, data_dir, dtype=torch.float64)
    assert split.X_train.shape == (fake_torchvision.num_train, *shape)
    assert split.X_test.shape == (fake_torchvision.num_test, *shape)
    assert split.X_train.dtype == torch.float64
    assert split.y_train.dtype == torch.int64
    mean = split.X_train.mean(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-10, rtol=0)


def test_load_vision_resizes_without_normalising(data_dir, fake_torchvision):
    split = vision.load_vision("mnist", data_dir, size=16, standardize=False)
    assert split.X_train.shape == (fake_torchvision.num_train, 1, 16, 16)
    assert float(split.X_train.min()) >= 0.0
    assert float(split.X_train.max()) <= 1.0


def test_load_vision_copies_cached_labels(data_dir, fake_torchvision):
    first = vision.load_vision("cifar10", data_dir)
    first.y_train.zero_()
    second = vision.load_vision("cifar10", data_dir)
    assert second.y_train.max() > 0

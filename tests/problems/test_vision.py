import re

import numpy as np
import pytest
import torch

from curvlab.problems import vision
from problems._files import NUM_TEST, NUM_TRAIN


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
def test_missing_files_are_named(tmp_path, dataset, expected):
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        vision.load_vision(dataset, tmp_path)


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
def test_every_data_set_without_torchvision(fake_data, no_torchvision, dataset, shape):
    data_dir, written = fake_data
    split = vision.load_vision(dataset, data_dir, dtype=torch.float64)
    assert split.X_train.shape == (NUM_TRAIN, *shape)
    assert split.X_test.shape == (NUM_TEST, *shape)
    assert split.X_train.dtype == torch.float64
    assert split.y_train.dtype == torch.int64
    X_train, y_train, X_test, y_test = written[dataset]
    assert split.y_train.tolist() == y_train.tolist()
    assert split.y_test.tolist() == y_test.tolist()
    # the documented normalisation: the train split's channel statistics
    pixels = torch.from_numpy(X_train.reshape(NUM_TRAIN, *shape)).double() / 255
    mean = pixels.mean(dim=(0, 2, 3), keepdim=True)
    std = pixels.std(dim=(0, 2, 3), keepdim=True)
    test = torch.from_numpy(X_test.reshape(NUM_TEST, *shape)).double() / 255
    torch.testing.assert_close(split.X_test, (test - mean) / std)
    train_mean = split.X_train.mean(dim=(0, 2, 3))
    torch.testing.assert_close(train_mean, torch.zeros_like(train_mean))


def test_without_standardisation_pixels_are_in_unit_range(fake_data):
    data_dir, written = fake_data
    split = vision.load_vision("cifar10", data_dir, standardize=False)
    expected = torch.from_numpy(written["cifar10"][0]).float() / 255
    torch.testing.assert_close(split.X_train, expected, rtol=0, atol=0)


def test_resize_without_normalising(fake_data):
    split = vision.load_vision("mnist", fake_data[0], size=16, standardize=False)
    assert split.X_train.shape == (NUM_TRAIN, 1, 16, 16)
    assert float(split.X_train.min()) >= 0.0
    assert float(split.X_train.max()) <= 1.0


def test_cached_arrays_are_not_changed_by_callers(fake_data):
    data_dir, written = fake_data
    first = vision.load_vision("cifar10", data_dir)
    first.y_train.zero_()
    first.X_train.zero_()
    second = vision.load_vision("cifar10", data_dir, standardize=False)
    assert second.y_train.tolist() == written["cifar10"][1].tolist()
    np.testing.assert_array_equal(
        (second.X_train * 255).round().to(torch.uint8).numpy(), written["cifar10"][0]
    )


def test_torchvision_is_never_imported(fake_data, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def guarded(name, *args, **kwargs):
        assert not name.startswith("torchvision"), "torchvision was imported"
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)
    for dataset in vision.VISION_DATASETS:
        vision.load_vision(dataset, fake_data[0])


def test_pad_keeps_the_unpadded_statistics(fake_data):
    split = vision.load_vision("svhn", fake_data[0], pad=3)
    plain = vision.load_vision("svhn", fake_data[0])
    assert split.X_train.shape == (NUM_TRAIN, 3, 38, 38)
    torch.testing.assert_close(split.X_test[:, :, 3:-3, 3:-3], plain.X_test)
    with pytest.raises(ValueError, match="pad must be a non-negative int"):
        vision.load_vision("svhn", fake_data[0], pad=-1)

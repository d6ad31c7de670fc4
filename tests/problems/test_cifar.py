"""CIFAR-10 and CIFAR-100 from their pickle batches, through the registry."""

import pickle
import re

import numpy as np
import pytest
import torch

from curvlab import problems
from curvlab.problems import cifar
from problems._files import NUM_TEST, NUM_TRAIN, write_fake_cifar


def _standardised(X_train, X):
    """The documented preprocessing: /255, then the train split's channel stats."""
    train = torch.from_numpy(X_train).double() / 255
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True)
    return ((torch.from_numpy(X).double() / 255 - mean) / std).float()


@pytest.mark.parametrize(
    ("dataset", "name", "num_classes"),
    [("cifar10", "cifar10_3c3d", 10), ("cifar100", "cifar100_allcnnc", 100)],
)
def test_problem_reads_the_batches(
    tmp_path, no_torchvision, dataset, name, num_classes
):
    X_train, y_train, X_test, y_test = write_fake_cifar(tmp_path, dataset)
    problem = problems.get(name, data_dir=tmp_path)
    assert problem.num_classes == num_classes
    assert problem.train_data.X.shape == (NUM_TRAIN, 3, 32, 32)
    assert problem.test_data.X.shape == (NUM_TEST, 3, 32, 32)
    # file order across the five CIFAR-10 batches, labels as written
    assert problem.train_data.y.tolist() == y_train.tolist()
    assert problem.test_data.y.tolist() == y_test.tolist()
    torch.testing.assert_close(
        problem.train_data.X, _standardised(X_train, X_train), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        problem.test_data.X, _standardised(X_train, X_test), rtol=0, atol=1e-5
    )
    mean = problem.train_data.X.mean(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.zeros(3), rtol=0, atol=1e-5)
    X, y = problem.test_data[0]
    with torch.no_grad():
        assert torch.isfinite(problem.loss_fn(problem.model(X[:4]), y[:4]))


def test_rows_are_chw_images(tmp_path):
    """A row of b'data' is the red plane, then green, then blue, each row-major."""
    image = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    image[0, 1, 2, 5] = 200  # green, row 2, column 5
    cifar.write_cifar_batch(tmp_path / "b", image, [3])
    row = pickle.loads((tmp_path / "b").read_bytes(), encoding="bytes")[b"data"][0]
    assert row[1024 + 2 * 32 + 5] == 200
    images, labels = cifar.read_cifar_batch(tmp_path / "b")
    assert images.shape == (1, 3, 32, 32)
    assert images[0, 1, 2, 5] == 200
    assert labels.tolist() == [3]


def test_str_keys_and_label_arrays_are_read(tmp_path):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    batch = {"data": data, "fine_labels": np.array([99, 0])}
    (tmp_path / "t").write_bytes(pickle.dumps(batch))
    images, labels = cifar.read_cifar_batch(
        tmp_path / "t", label_key="fine_labels", num_classes=100
    )
    np.testing.assert_array_equal(images.reshape(2, -1), data)
    assert labels.tolist() == [99, 0]


def test_folder_itself_can_be_data_dir(tmp_path):
    X_train, *_ = write_fake_cifar(tmp_path, "cifar10")
    images, _ = cifar.load_cifar_split(tmp_path / "cifar-10-batches-py")
    np.testing.assert_array_equal(images.numpy(), X_train)


@pytest.mark.parametrize(
    ("dataset", "remove", "expected"),
    [
        ("cifar10", "data_batch_3", "cifar-10-batches-py/data_batch_3"),
        ("cifar10", "test_batch", "cifar-10-batches-py/test_batch"),
        ("cifar100", "train", "cifar-100-python/train"),
    ],
)
def test_missing_file_is_named_with_its_place(tmp_path, dataset, remove, expected):
    write_fake_cifar(tmp_path, dataset)
    folder = tmp_path / cifar.CIFAR_DATASETS[dataset].folder
    (folder / remove).unlink()
    name = "cifar10_lenet5" if dataset == "cifar10" else "cifar100_3c3d"
    with pytest.raises(FileNotFoundError) as info:
        problems.get(name, data_dir=tmp_path)
    message = str(info.value)
    assert f"missing: {tmp_path / expected}." in message
    assert f"in {folder}" in message
    assert "never downloads" in message


def test_empty_folder_points_to_the_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Extract cifar-10-python\.tar\.gz"):
        problems.get("cifar10_3c3d", data_dir=tmp_path)
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(f"{tmp_path / 'cifar-100-python.tar.gz'} is there: extract"),
    ):
        problems.get("cifar100_allcnnc", data_dir=tmp_path)


def _batch(**entries):
    return pickle.dumps({key.encode(): value for key, value in entries.items()})


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled",))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (lambda raw: raw[: len(raw) // 2], "not a readable CIFAR batch"),
        (lambda raw: b"", "not a readable CIFAR batch"),
        (lambda raw: b"not a pickle at all", "not a readable CIFAR batch"),
        (lambda raw: pickle.dumps([1, 2]), "must hold a pickled dict"),
        (lambda raw: _batch(data=np.zeros((2, 3072), np.uint8)), "lacks 'labels'"),
        (
            lambda raw: _batch(data=np.zeros((2, 3071), np.uint8), labels=[0, 1]),
            r"shape \(N, 3072\)",
        ),
        (
            lambda raw: _batch(data=np.zeros((2, 3072), np.float32), labels=[0, 1]),
            "must be a uint8 array",
        ),
        (
            lambda raw: _batch(data=np.zeros((2, 3072), np.uint8), labels=[0]),
            "holds 2 images but 'labels' has shape",
        ),
        (
            lambda raw: _batch(data=np.zeros((2, 3072), np.uint8), labels=[0, 10]),
            r"labels in \[0, 10\]; expected 0 to 9",
        ),
        (lambda raw: pickle.dumps({b"data": _Evil()}), "refers to builtins.print"),
    ],
)
def test_damaged_batch_is_named(tmp_path, content, match):
    write_fake_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(ValueError, match=match) as info:
        problems.get("cifar10_3c3d", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_write_refuses_wrong_images(tmp_path):
    with pytest.raises(ValueError, match=r"uint8 of shape \(N, 3, 32, 32\)"):
        cifar.write_cifar_batch(tmp_path / "b", np.zeros((1, 32, 32, 3)), [0])
    with pytest.raises(ValueError, match="one entry per image"):
        cifar.write_cifar_batch(tmp_path / "b", np.zeros((2, 3072), np.uint8), [0])

"""The IDX reader: real file format, layouts, gzip, errors, registry problems."""

import gzip
import re
import struct

import numpy as np
import pytest
import torch

from curvlab import problems
from curvlab.problems import idx, vision
from curvlab.problems.data import resize_images

NUM_TRAIN, NUM_TEST = 60, 20
FILES = idx.IDX_FILES


def _raw_images(images):
    """LeCun's format written by hand: magic 2051, N, rows, cols (big-endian)."""
    return struct.pack(">IIII", 2051, *images.shape) + images.tobytes()


def _raw_labels(labels):
    return struct.pack(">II", 2049, len(labels)) + labels.tobytes()


def fake_mnist(seed=0):
    """Random 28x28 uint8 images, every class in both splits."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, num in (("train", NUM_TRAIN), ("t10k", NUM_TEST)):
        labels = rng.permutation(np.arange(num) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (num, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-images-idx3-ubyte"] = images
        arrays[f"{prefix}-labels-idx1-ubyte"] = labels
    return arrays


def write_fake_mnist(folder, *, compress=False, seed=0):
    """Write the four files of a tiny fake MNIST into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = fake_mnist(seed)
    for name, array in arrays.items():
        raw = _raw_images(array) if array.ndim == 3 else _raw_labels(array)
        path = folder / (name + ".gz" if compress else name)
        path.write_bytes(gzip.compress(raw) if compress else raw)
    return arrays


@pytest.fixture(autouse=True)
def _fresh_cache():
    vision._vision_arrays.cache_clear()
    yield
    vision._vision_arrays.cache_clear()


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_reads_the_real_format(tmp_path, compress):
    arrays = write_fake_mnist(tmp_path, compress=compress)
    for name, expected in arrays.items():
        path = tmp_path / (name + ".gz" if compress else name)
        data = idx.read_idx(path)
        assert data.dtype == np.uint8
        np.testing.assert_array_equal(data, expected)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 7], dtype=np.int8),
        np.array([[-300, 2], [5, 30000]], dtype=np.int16),
        np.array([-(2**31), 2**31 - 1], dtype=np.int32),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
        np.array([np.pi, -np.e]),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_write_read_round_trip(tmp_path, array, compress):
    path = tmp_path / "a.idx"
    idx.write_idx(path, array, compress=compress)
    back = idx.read_idx(path)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_write_idx_matches_lecuns_header(tmp_path):
    images = fake_mnist()["train-images-idx3-ubyte"]
    idx.write_idx(tmp_path / "x", images)
    assert (tmp_path / "x").read_bytes() == _raw_images(images)


def test_write_idx_refuses_unstorable_arrays(tmp_path):
    with pytest.raises(ValueError, match="cannot store dtype int64"):
        idx.write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="1 to 255 dimensions"):
        idx.write_idx(tmp_path / "x", np.zeros((), dtype=np.uint8))


@pytest.mark.parametrize(
    ("layout", "compress"),
    [("MNIST/raw", False), ("MNIST/raw", True), (".", False), (".", True)],
)
def test_load_idx_dataset_in_every_layout(tmp_path, layout, compress):
    arrays = write_fake_mnist(tmp_path / layout, compress=compress)
    X_train, y_train, X_test, y_test = idx.load_idx_dataset(tmp_path)
    assert X_train.shape == (NUM_TRAIN, 1, 28, 28)
    assert X_train.dtype == torch.uint8
    assert y_train.dtype == torch.int64
    np.testing.assert_array_equal(
        X_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"]
    )
    np.testing.assert_array_equal(y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(
        X_test[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"]
    )
    np.testing.assert_array_equal(y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_fashion_mnist_uses_its_own_folder(tmp_path):
    write_fake_mnist(tmp_path / "FashionMNIST" / "raw", seed=1)
    with pytest.raises(FileNotFoundError, match=r"MNIST files are missing"):
        idx.load_idx_dataset(tmp_path, "MNIST")
    X_train, *_ = idx.load_idx_dataset(tmp_path, "FashionMNIST")
    assert X_train.shape == (NUM_TRAIN, 1, 28, 28)


def test_missing_files_name_the_folder_and_the_files(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as info:
        idx.load_idx_dataset(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "MNIST/raw/train-images-idx3-ubyte" in message
    assert "Missing t10k-labels-idx1-ubyte. curvlab never downloads" in message
    with pytest.raises(FileNotFoundError, match="Missing t10k-labels-idx1-ubyte"):
        problems.get("mnist_mini", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda raw: b"", "holds 0 bytes"),
        (lambda raw: struct.pack(">I", 1234) + raw[4:], "magic number 1234"),
        (lambda raw: raw[:-5], "truncated or corrupt"),
        (lambda raw: raw[:10], "truncated"),
        (lambda raw: gzip.compress(raw)[:-12], "not a readable gzip file"),
    ],
)
def test_corrupt_files_are_named(tmp_path, corrupt, match):
    write_fake_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(ValueError, match=match) as info:
        idx.load_idx_dataset(tmp_path)
    assert str(path) in str(info.value)


def test_inconsistent_files_are_refused(tmp_path):
    write_fake_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(_raw_labels(np.zeros(NUM_TRAIN - 1, dtype=np.uint8)))
    with pytest.raises(ValueError, match="holds 60 images but .* holds 59 labels"):
        idx.load_idx_dataset(tmp_path)
    labels.write_bytes(_raw_labels(np.full(NUM_TRAIN, 10, dtype=np.uint8)))
    with pytest.raises(
        ValueError, match=r"holds labels in \[10, 10\]; expected 0 to 9"
    ):
        idx.load_idx_dataset(tmp_path)
    # images and labels swapped
    images = tmp_path / "train-images-idx3-ubyte"
    labels.write_bytes(images.read_bytes())
    with pytest.raises(ValueError, match=re.escape("uint8 labels of shape (N,)")):
        idx.load_idx_dataset(tmp_path)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_mini_without_torchvision(tmp_path, no_torchvision, compress):
    arrays = write_fake_mnist(tmp_path, compress=compress)
    problem = problems.get("mnist_mini", data_dir=tmp_path, batch_size=32)
    assert problem.num_params == 7030
    assert problem.train_data.num_samples == NUM_TRAIN
    assert problem.test_data.num_samples == NUM_TEST
    # ToTensor's /255, Resize(16) (bilinear, antialiased), no normalisation
    images = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).unsqueeze(1)
    expected = resize_images(images.float() / 255.0, 16)
    torch.testing.assert_close(problem.test_data.X, expected, rtol=0, atol=0)
    labels = arrays["t10k-labels-idx1-ubyte"]
    assert problem.test_data.y.tolist() == labels.tolist()
    X, y = problem.test_data[0]
    assert torch.isfinite(problem.loss_fn(problem.model(X), y))


def test_balanced_subset_and_other_mnist_problems(tmp_path, no_torchvision):
    write_fake_mnist(tmp_path / "MNIST" / "raw")
    write_fake_mnist(tmp_path / "FashionMNIST" / "raw", compress=True, seed=1)
    mini = problems.get("mnist_mini", data_dir=tmp_path, num_samples=20)
    assert torch.bincount(mini.train_data.y).tolist() == [2] * 10
    for name in ("mnist_lenet5", "fmnist_lenet5"):
        problem = problems.get(name, data_dir=tmp_path)
        assert problem.train_data.X.shape == (NUM_TRAIN, 1, 28, 28)
        mean = problem.train_data.X.mean()
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)


def test_empty_files_are_reported_as_corrupt(tmp_path, no_torchvision):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        (raw / name).touch()
    with pytest.raises(ValueError, match="MNIST/raw/train-images-idx3-ubyte"):
        vision.load_vision("mnist", tmp_path)


def test_torchvisions_layout_is_read_without_it(tmp_path, no_torchvision):
    arrays = write_fake_mnist(tmp_path / "MNIST" / "raw")
    split = vision.load_vision("mnist", tmp_path, standardize=False)
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 255
    torch.testing.assert_close(split.X_train[:, 0], expected, rtol=0, atol=0)


def test_flat_and_gzipped_files(tmp_path, no_torchvision):
    arrays = write_fake_mnist(tmp_path, compress=True)
    split = vision.load_vision("mnist", tmp_path, standardize=False)
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 255
    torch.testing.assert_close(split.X_train[:, 0], expected, rtol=0, atol=0)

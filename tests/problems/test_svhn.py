"""SVHN from its .mat files, through the registry."""

import numpy as np
import pytest
import scipy.io
import torch

from curvlab import problems
from curvlab.problems import svhn
from problems._files import NUM_TEST, NUM_TRAIN, write_fake_svhn


def test_problem_reads_the_mat_files(tmp_path, no_torchvision):
    X_train, y_train, X_test, y_test = write_fake_svhn(tmp_path)
    problem = problems.get("svhn_vgg11bn", data_dir=tmp_path, num_samples=50)
    assert problem.num_params == 28_157_706
    assert problem.train_data.X.shape == (50, 3, 32, 32)
    assert torch.bincount(problem.train_data.y).tolist() == [5] * 10
    assert problem.test_data.y.tolist() == y_test.tolist()
    train = torch.from_numpy(X_train).double() / 255
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True)
    expected = ((torch.from_numpy(X_test).double() / 255 - mean) / std).float()
    torch.testing.assert_close(problem.test_data.X, expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        out = problem.model(problem.test_data.X[:4])
    assert torch.isfinite(problem.loss_fn(out, problem.test_data.y[:4]))


def test_the_real_layout_and_label_10(tmp_path):
    """X is (32, 32, 3, N) uint8, y is (N, 1) with 10 for the digit 0."""
    X = np.zeros((32, 32, 3, 2), dtype=np.uint8)
    X[4, 7, 2, 1] = 99  # sample 1, blue, row 4, column 7
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": X, "y": [[10], [3]]})
    images, labels = svhn.load_svhn_split(tmp_path)
    assert images.shape == (2, 3, 32, 32)
    assert images.dtype == torch.uint8
    assert images[1, 2, 4, 7] == 99
    assert int(images.sum()) == 99
    assert labels.tolist() == [0, 3]


def test_write_read_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), np.uint8)
    svhn.write_svhn_mat(tmp_path / "a.mat", images, [0, 1, 9, 0, 5])
    content = scipy.io.loadmat(tmp_path / "a.mat")
    assert content["y"].ravel().tolist() == [10, 1, 9, 10, 5]
    back, labels = svhn.read_svhn_mat(tmp_path / "a.mat")
    np.testing.assert_array_equal(back.numpy(), images)
    assert labels.tolist() == [0, 1, 9, 0, 5]


@pytest.mark.parametrize("missing", ["train_32x32.mat", "test_32x32.mat"])
def test_missing_file_is_named_with_its_place(tmp_path, missing):
    write_fake_svhn(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError) as info:
        problems.get("svhn_vgg11bn", data_dir=tmp_path)
    message = str(info.value)
    assert f"missing: {tmp_path / missing}." in message
    assert f"directly in {tmp_path}" in message
    assert "never downloads" in message


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (lambda raw: raw[: len(raw) // 2], "not a readable MATLAB file"),
        (lambda raw: b"", "not a readable MATLAB file"),
        (lambda raw: b"garbage" * 40, "not a readable MATLAB file"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8)}, "lacks y"),
        ({"X": np.zeros((2, 3, 32, 32), np.uint8), "y": [[1], [2]]}, "X must be"),
        ({"X": np.zeros((32, 32, 3, 2), np.float64), "y": [[1], [2]]}, "X must be"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": [[1]]}, "y must hold 2"),
        (
            {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": [[1], [11]]},
            r"labels in \[1, 11\]",
        ),
    ],
)
def test_damaged_file_is_named(tmp_path, content, match):
    write_fake_svhn(tmp_path)
    path = tmp_path / "test_32x32.mat"
    if callable(content):
        path.write_bytes(content(path.read_bytes()))
    else:
        scipy.io.savemat(path, content)
    with pytest.raises(ValueError, match=match) as info:
        svhn.load_svhn_split(tmp_path, train=False)
    assert str(path) in str(info.value)


def test_fake_split_sizes(tmp_path):
    write_fake_svhn(tmp_path)
    images, labels = svhn.load_svhn_split(tmp_path, train=True)
    assert images.shape == (NUM_TRAIN, 3, 32, 32)
    assert labels.shape == (NUM_TRAIN,)
    assert svhn.load_svhn_split(tmp_path, train=False)[0].shape[0] == NUM_TEST

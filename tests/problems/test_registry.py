import dataclasses
import math
import re

import pytest
import torch

from curvlab import problems
from curvlab.problems import Problem, balanced_subset, registry
from curvlab.problems.models import num_params

BUNDLED_D = {
    "digits_cnn": 1898,
    "digits_logreg": 650,
    "digits_mlp": 3190,
    "mnist5k_mini": 7030,
    "mnist5k_mlp": 59210,
    "synthetic_regression": 499,
}


def test_names_are_sorted_and_split_into_bundled_and_file_based():
    all_names = problems.names()
    assert all_names == sorted(all_names)
    assert problems.names(bundled=True) == sorted(BUNDLED_D)
    file_based = problems.names(bundled=False)
    assert {"mnist_mini", "cifar10_3c3d", "cifar100_allcnnc"} <= set(file_based)
    assert sorted(problems.names(bundled=True) + file_based) == all_names


@pytest.mark.parametrize("name", sorted(BUNDLED_D))
def test_bundled_problem_builds_and_evaluates(name):
    problem = problems.get(name)
    assert isinstance(problem, Problem)
    assert problem.name == name
    assert problem.num_params == BUNDLED_D[name]
    assert not problem.model.training
    assert problem.description
    X, y = problem.train_data[0]
    out = problem.model(X[:8])
    width = problem.num_classes or y.shape[1]
    assert out.shape == (8, width)
    loss = problem.loss_fn(out, y[:8])
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    assert len(problem.train_data) == 1  # bundled default: one batch per split
    assert problem.test_data.num_samples > 0


def test_problem_is_frozen():
    problem = problems.get("digits_logreg")
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.name = "other"


def test_same_seed_same_problem_and_global_rng_untouched():
    state = torch.get_rng_state()
    first = problems.get("digits_mlp", seed=7)
    second = problems.get("digits_mlp", seed=7)
    other = problems.get("digits_mlp", seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    for p, q in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(first.train_data.X, second.train_data.X)
    assert not torch.equal(first.train_data.y, other.train_data.y)
    assert first.model is not second.model


def test_batch_size_and_deterministic_batches():
    problem = problems.get("digits_mlp", batch_size=100)
    assert len(problem.train_data) == math.ceil(1437 / 100)
    assert problem.train_data[-1][0].shape == (37, 64)
    assert len(problem.test_data) == 4
    for (X1, y1), (X2, y2) in zip(problem.train_data, problem.train_data, strict=True):
        assert torch.equal(X1, X2)
        assert torch.equal(y1, y2)


def test_num_samples_draws_lowest_indices_per_class():
    full = problems.get("mnist5k_mini")
    sub = problems.get("mnist5k_mini", num_samples=500, batch_size=128)
    assert sub.train_data.num_samples == 500
    assert torch.bincount(sub.train_data.y).tolist() == [50] * 10
    indices = balanced_subset(full.train_data.y, 500, 10)
    assert torch.equal(sub.train_data.X, full.train_data.X[indices])
    assert sub.test_data.num_samples == full.test_data.num_samples == 1000
    assert len(sub.train_data) == 4
    assert sub.num_params == 7030


def test_num_samples_for_regression_takes_the_first():
    full = problems.get("synthetic_regression")
    sub = problems.get("synthetic_regression", num_samples=50)
    assert torch.equal(sub.train_data.y, full.train_data.y[:50])
    with pytest.raises(ValueError, match="at most the 512 train samples"):
        problems.get("synthetic_regression", num_samples=513)


def test_num_samples_errors():
    with pytest.raises(ValueError, match="divisible by num_classes=10"):
        problems.get("digits_logreg", num_samples=55)
    with pytest.raises(ValueError, match="Class 0 needs 1000 examples"):
        problems.get("digits_logreg", num_samples=10000)


def test_float64():
    problem = problems.get("digits_cnn", dtype=torch.float64, batch_size=64)
    assert all(p.dtype == torch.float64 for p in problem.model.parameters())
    X, y = next(iter(problem.train_data))
    assert X.dtype == torch.float64
    assert y.dtype == torch.int64
    loss = problem.loss_fn(problem.model(X), y)
    assert loss.dtype == torch.float64
    assert torch.isfinite(loss)
    regression = problems.get("synthetic_regression", dtype=torch.float64)
    assert regression.train_data.y.dtype == torch.float64


def test_unknown_name_lists_available():
    with pytest.raises(
        ValueError, match="Unknown problem 'nope'. Available: .*digits_mlp"
    ):
        problems.get("nope")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be at least 1. Got 0"),
        ({"num_samples": 2.0}, TypeError, "num_samples must be an int or None"),
        ({"seed": "1"}, TypeError, "seed must be an int. Got str"),
        ({"dtype": torch.int64}, TypeError, "floating torch.dtype. Got torch.int64"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        problems.get("digits_logreg", **kwargs)


def test_file_based_problem_needs_data_dir():
    with pytest.raises(
        ValueError,
        match=r"'mnist_mini' reads MNIST from files: pass data_dir.*"
        r"MNIST/raw/train-images-idx3-ubyte.*never downloads",
    ):
        problems.get("mnist_mini")


def test_file_based_problem_names_missing_files(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(f"CIFAR-100 files are missing: {tmp_path}")
        + ".*cifar-100-python/train",
    ):
        problems.get("cifar100_allcnnc", data_dir=tmp_path)


def test_file_based_problem_without_torchvision(fake_data, no_torchvision):
    problem = problems.get("cifar10_lenet5", data_dir=fake_data[0])
    assert problem.num_params == 62006


def test_mnist_mini_from_files(fake_data):
    data_dir, written = fake_data
    problem = problems.get("mnist_mini", data_dir=data_dir, num_samples=100)
    assert problem.num_params == 7030
    assert problem.train_data.X.shape == (100, 1, 16, 16)
    assert torch.bincount(problem.train_data.y).tolist() == [10] * 10
    assert problem.test_data.num_samples == len(written["mnist"][3])
    X, y = problem.test_data[0]
    assert torch.isfinite(problem.loss_fn(problem.model(X), y))


@pytest.mark.parametrize(
    ("name", "num_classes"),
    [
        ("mnist_lenet5", 10),
        ("fmnist_lenet5", 10),
        ("cifar10_lenet5", 10),
        ("cifar10_3c3d", 10),
        ("cifar100_allcnnc", 100),
    ],
)
def test_file_based_problems_from_files(fake_data, name, num_classes):
    data_dir, written = fake_data
    problem = problems.get(name, data_dir=str(data_dir))
    assert problem.num_classes == num_classes
    # file-based default: batches of 256, last one kept
    num_train = len(written["mnist"][1])
    assert [len(yb) for _, yb in problem.train_data] == [256, num_train - 256]
    X, y = problem.test_data[0]
    with torch.no_grad():
        out = problem.model(X[:4])
    assert out.shape == (4, num_classes)
    assert torch.isfinite(problem.loss_fn(out, y[:4]))


# Every file-based problem's parameter count D: DeepOBS's for 3c3d and All-CNN-C,
# LayerHessians' for LeNet, VGG11_bn and ResNet18, torchvision's for ImageNet.
FILE_BASED_D = {
    "mnist_mini": 7_030,
    "mnist_lenet5": 61_706,
    "fmnist_lenet5": 61_706,
    "mnist_vgg11bn": 28_156_554,
    "mnist_resnet18": 11_172_810,
    "fmnist_vgg11bn": 28_156_554,
    "fmnist_resnet18": 11_172_810,
    "svhn_lenet5": 62_006,
    "svhn_resnet18": 11_173_962,
    "cifar10_lenet5": 62_006,
    "cifar10_3c3d": 895_210,
    "cifar10_allcnnc": 1_369_738,
    "cifar10_vgg11bn": 28_157_706,
    "cifar10_resnet18": 11_173_962,
    "cifar100_3c3d": 918_340,
    "cifar100_allcnnc": 1_387_108,
    "cifar100_vgg11bn": 28_526_436,
    "svhn_vgg11bn": 28_157_706,
    "imagenet_resnet18": 11_689_512,
}


def test_every_file_based_problem_is_pinned():
    assert sorted(FILE_BASED_D) == problems.names(bundled=False)


@pytest.mark.parametrize("name", sorted(FILE_BASED_D))
def test_file_based_parameter_counts(name):
    # the registry's own factory, on the meta device: shapes only, no data, no init
    with torch.device("meta"):
        model = registry._REGISTRY[name].build(0)
    assert num_params(model) == FILE_BASED_D[name]


def test_mnist_is_padded_to_32_for_vgg_and_resnet(fake_data):
    """LayerHessians' Pad(2), ToTensor, Normalize with the unpadded statistics."""
    data_dir, written = fake_data
    problem = problems.get("mnist_resnet18", data_dir=data_dir, batch_size=8)
    X = problem.train_data.X
    assert X.shape == (len(written["mnist"][1]), 1, 32, 32)
    pixels = torch.from_numpy(written["mnist"][0]).double() / 255
    border = float(-pixels.mean() / pixels.std())
    torch.testing.assert_close(X[:, :, :2, :], torch.full_like(X[:, :, :2, :], border))
    torch.testing.assert_close(
        X[:, :, :, -2:], torch.full_like(X[:, :, :, -2:], border)
    )
    expected = ((pixels - pixels.mean()) / pixels.std()).float()
    torch.testing.assert_close(X[:, 0, 2:-2, 2:-2], expected)
    Xb, yb = problem.train_data[0]
    with torch.no_grad():
        assert problem.model(Xb).shape == (8, 10)

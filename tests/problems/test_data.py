import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from curvlab.problems import BatchedData, balanced_subset
from curvlab.problems.data import (
    load_digits,
    load_mnist5k,
    make_regression,
    resize_images,
    seeded_split,
)


def _data(num_samples=10, batch_size=4):
    X = torch.arange(3 * num_samples, dtype=torch.float32).reshape(num_samples, 3)
    y = torch.arange(num_samples)
    return BatchedData(X, y, batch_size)


# ---------------------------------------------------------------- BatchedData


def test_batched_data_slices_in_order_and_keeps_uneven_last_batch():
    data = _data(num_samples=10, batch_size=4)
    assert len(data) == 3
    assert data.num_samples == 10
    assert [yb.tolist() for _, yb in data] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    torch.testing.assert_close(torch.cat([Xb for Xb, _ in data]), data.X)


def test_batched_data_is_deterministic_across_iterations():
    data = _data(num_samples=11, batch_size=3)
    first, second = list(data), list(data)
    assert len(first) == len(second) == 4
    for (X1, y1), (X2, y2) in zip(first, second, strict=True):
        assert torch.equal(X1, X2)
        assert torch.equal(y1, y2)


def test_batched_data_indexing():
    data = _data(num_samples=10, batch_size=4)
    assert data[-1][1].tolist() == [8, 9]
    assert torch.equal(data[1][0], data.X[4:8])
    with pytest.raises(IndexError, match=r"\[-3, 3\)\. Got 3"):
        data[3]
    with pytest.raises(TypeError, match="int"):
        data[0.5]


def test_batched_data_accepts_regression_targets_and_whole_batch():
    data = BatchedData(torch.zeros(5, 2), torch.zeros(5, 3), batch_size=100)
    assert len(data) == 1
    assert data[0][1].shape == (5, 3)
    assert "batch_size=100" in repr(data)


def test_batched_data_subset():
    data = _data(num_samples=10, batch_size=2).subset(torch.tensor([7, 1, 3]))
    assert data.y.tolist() == [7, 1, 3]
    assert data.batch_size == 2


def test_batched_data_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match=r"same N as X \(N=5\)\. Got \(4,\)"):
        BatchedData(torch.zeros(5, 2), torch.zeros(4), 2)


@pytest.mark.parametrize("batch_size", [0, -3])
def test_batched_data_rejects_small_batch_size(batch_size):
    with pytest.raises(
        ValueError, match=f"batch_size must be at least 1. Got {batch_size}"
    ):
        BatchedData(torch.zeros(5, 2), torch.zeros(5), batch_size)


def test_batched_data_rejects_wrong_types():
    with pytest.raises(TypeError, match="batch_size must be an int"):
        BatchedData(torch.zeros(5, 2), torch.zeros(5), 2.0)
    with pytest.raises(TypeError, match="X must be a torch.Tensor. Got list"):
        BatchedData([1, 2], torch.zeros(2), 1)
    with pytest.raises(ValueError, match="N >= 1"):
        BatchedData(torch.zeros(0, 2), torch.zeros(0), 1)


# ------------------------------------------------------------- balanced_subset


def test_balanced_subset_takes_lowest_indices_per_class():
    y = torch.tensor([2, 0, 1, 0, 2, 1, 0, 1, 2, 2])
    indices = balanced_subset(y, 6, 3)
    assert indices.tolist() == [0, 1, 2, 3, 4, 5]
    assert indices.dtype == torch.int64
    assert torch.bincount(y[indices], minlength=3).tolist() == [2, 2, 2]


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 3), min_size=8, max_size=60),
    per_class=st.integers(1, 3),
)
def test_balanced_subset_matches_definition(labels, per_class):
    y = torch.tensor(labels)
    counts = torch.bincount(y, minlength=4)
    if counts.min() < per_class:
        with pytest.raises(ValueError, match="needs"):
            balanced_subset(y, 4 * per_class, 4)
        return
    indices = balanced_subset(y, 4 * per_class, 4)
    expected = sorted(
        i
        for c in range(4)
        for i in [j for j, v in enumerate(labels) if v == c][:per_class]
    )
    assert indices.tolist() == expected


def test_balanced_subset_needs_divisible_num_samples():
    with pytest.raises(ValueError, match="divisible by num_classes=3.*num_samples=7"):
        balanced_subset(torch.tensor([0, 1, 2] * 5), 7, 3)


def test_balanced_subset_names_the_short_class():
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(ValueError, match="Class 2 needs 3 examples.*only 1"):
        balanced_subset(y, 9, 3)


def test_balanced_subset_rejects_bad_labels():
    with pytest.raises(
        ValueError, match=r"labels in \[0, 2\)\. Got labels in \[0, 5\]"
    ):
        balanced_subset(torch.tensor([0, 1, 5]), 2, 2)
    with pytest.raises(TypeError, match="integer tensor"):
        balanced_subset(torch.tensor([0.0, 1.0]), 2, 2)
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        balanced_subset(torch.zeros(2, 2, dtype=torch.int64), 2, 2)


# ------------------------------------------------------------------- loaders


def test_seeded_split_is_a_deterministic_partition():
    train, test = seeded_split(10, seed=3)
    assert len(train) == 8
    assert sorted(torch.cat([train, test]).tolist()) == list(range(10))
    again, _ = seeded_split(10, seed=3)
    assert torch.equal(train, again)
    other, _ = seeded_split(10, seed=4)
    assert not torch.equal(train, other)
    with pytest.raises(ValueError, match="train_fraction"):
        seeded_split(10, seed=0, train_fraction=1.0)


def test_load_digits_standardises_with_train_statistics():
    split = load_digits(seed=0)
    assert split.X_train.shape == (1437, 64)
    assert split.X_test.shape == (360, 64)
    assert split.y_train.dtype == torch.int64
    torch.testing.assert_close(
        split.X_train.mean(0), torch.zeros(64), atol=1e-5, rtol=0
    )
    std = split.X_train.std(0, unbiased=False)
    assert torch.all(((std - 1).abs() < 1e-4) | (std < 1e-6))
    assert torch.isfinite(split.X_test).all()
    image = load_digits(seed=0, image=True, dtype=torch.float64)
    assert image.X_train.shape == (1437, 1, 8, 8)
    assert image.X_train.dtype == torch.float64
    torch.testing.assert_close(image.X_train.reshape(-1, 64).float(), split.X_train)


def test_load_digits_split_depends_on_seed():
    assert torch.equal(load_digits(seed=1).y_train, load_digits(seed=1).y_train)
    assert not torch.equal(load_digits(seed=1).y_train, load_digits(seed=2).y_train)


def test_load_mnist5k_mini_is_16x16_in_unit_range():
    split = load_mnist5k(seed=0, size=16)
    assert split.X_train.shape == (4000, 1, 16, 16)
    assert split.X_test.shape == (1000, 1, 16, 16)
    assert float(split.X_train.min()) >= 0.0
    assert float(split.X_train.max()) <= 1.0
    labels = torch.cat([split.y_train, split.y_test])
    assert torch.bincount(labels).tolist() == [500] * 10


def test_resize_images_keeps_constants():
    X = torch.full((2, 3, 28, 28), 0.25)
    torch.testing.assert_close(resize_images(X, 16), torch.full((2, 3, 16, 16), 0.25))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)\. Got \(28, 28\)"):
        resize_images(torch.zeros(28, 28), 16)


def test_make_regression_is_seeded():
    split = make_regression(seed=5, num_train=20, num_test=6)
    assert split.X_train.shape == (20, 10)
    assert split.y_train.shape == (20, 3)
    assert split.X_test.shape == (6, 10)
    assert torch.equal(
        split.y_test, make_regression(seed=5, num_train=20, num_test=6).y_test
    )
    assert not math.isclose(
        float(split.y_train.sum()),
        float(make_regression(seed=6, num_train=20).y_train.sum()),
    )

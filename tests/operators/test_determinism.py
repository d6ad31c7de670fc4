"""The first product checks that the operator is deterministic."""

import pytest
import torch
from torch import nn

import curvlab as cl
from conftest import CASES

CASE = CASES[0]
D = sum(p.numel() for p in CASE.model.parameters())


class ShufflingData:
    """Yields the same samples in a new order on every pass, as shuffle=True does."""

    def __init__(self, X, y):
        self.X, self.y, self.g = X, y, torch.Generator().manual_seed(0)

    def __iter__(self):
        perm = torch.randperm(len(self.X), generator=self.g)
        for i in range(0, len(perm), 4):
            idx = perm[i : i + 4]
            yield self.X[idx], self.y[idx]


def test_shuffling_data_is_detected():
    X = torch.cat([x for x, _ in CASE.data])
    y = torch.cat([t for _, t in CASE.data])
    op = cl.HessianOperator(CASE.model, CASE.loss_fn, ShufflingData(X, y))
    with pytest.raises(cl.NonDeterministicError, match="shuffle=True"):
        op @ torch.zeros(D, dtype=torch.float64)


def test_dropout_in_train_mode_is_detected():
    model = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.Linear(4, 3)).double()
    model.train()
    op = cl.GGNOperator(model, CASE.loss_fn, CASE.data, train_mode=True)
    with pytest.raises(cl.NonDeterministicError, match="Dropout"):
        op @ torch.ones(op.shape[0], dtype=torch.float64)


def test_dropout_is_off_in_the_default_eval_mode():
    model = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.Linear(4, 3)).double()
    model.train()
    op = cl.HessianOperator(model, CASE.loss_fn, CASE.data)
    v = torch.ones(op.shape[0], dtype=torch.float64)
    assert torch.equal(op @ v, op @ v)
    assert model.training, "the operator must restore the model's mode"


def test_batchnorm_uses_running_statistics_by_default():
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).double()
    with torch.no_grad():
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(2.0)
    model.train()
    op = cl.HessianOperator(model, CASE.loss_fn, CASE.data)
    v = torch.randn(op.shape[0], dtype=torch.float64)
    before = model[1].running_mean.clone()
    out = op @ v
    assert torch.equal(model[1].running_mean, before)
    model.eval()
    reference = cl.HessianOperator(model, CASE.loss_fn, CASE.data)
    assert torch.equal(out, reference @ v)


def test_check_runs_once():
    calls = []

    class CountingData(list):
        def __iter__(self):
            calls.append(1)
            return super().__iter__()

    op = cl.HessianOperator(CASE.model, CASE.loss_fn, CountingData(CASE.data))
    calls.clear()
    v = torch.zeros(D, dtype=torch.float64)
    op @ v
    assert len(calls) == 2  # the product and the check
    op @ v
    assert len(calls) == 3

"""Operator smoke checks: OK, skipped and failing operators become records."""

import pytest
import torch
from torch import nn

from curvlab.experiments.check import OPERATOR_KINDS, check_operators, check_problem


def _setup(loss_fn=None, N=12):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    X = torch.randn(N, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    return model, loss_fn or nn.CrossEntropyLoss(), [(X[:8], y[:8]), (X[8:], y[8:])]


def test_every_operator_passes_on_a_supported_loss():
    seen = []
    checks = check_operators(
        *_setup(), on_progress=lambda event: seen.append(event.values["phase"])
    )
    assert [c.name for c in checks] == list(OPERATOR_KINDS) == seen
    assert [c.status for c in checks] == ["OK"] * 5
    for check in checks:
        assert check.ok
        assert check.message == ""
        assert check.first_seconds > 0
        assert check.product_seconds > 0
    # GGN and exact Fisher coincide for cross-entropy; both are PSD
    assert checks[1].rayleigh == pytest.approx(checks[2].rayleigh, rel=1e-12)
    assert checks[1].rayleigh > 0


def test_unsupported_loss_skips_ggn_and_fisher_kinds():
    model, _, data = _setup()
    data = [(X, torch.randn(len(X), 3, dtype=torch.float64)) for X, _ in data]
    checks = check_operators(model, nn.L1Loss(), data)
    statuses = {c.name: c.status for c in checks}
    assert statuses.pop("Hessian") == "OK"
    assert set(statuses.values()) == {"SKIP"}
    assert all(c.ok for c in checks)
    assert "CrossEntropyLoss" in checks[1].message


class _Shuffled:
    """Data whose batch order changes on every pass."""

    def __init__(self, data):
        self.data, self.calls = data, 0

    def __iter__(self):
        self.calls += 1
        return iter(self.data if self.calls % 2 else self.data[::-1])


def test_nondeterministic_data_fails_every_operator():
    model, loss_fn, data = _setup()
    checks = check_operators(model, loss_fn, _Shuffled(data))
    assert [c.status for c in checks] == ["FAIL"] * 5
    assert not any(c.ok for c in checks)
    assert all(c.message.startswith("NonDeterministicError") for c in checks)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="Unknown operator kinds"):
        check_operators(*_setup(), kinds=["Hessian", "KFAC"])


def test_check_problem_reports_sizes():
    report = check_problem("digits_logreg", num_samples=50, dtype=torch.float64)
    assert (report.num_params, report.num_data, report.num_batches) == (650, 50, 1)
    assert report.dtype == torch.float64
    assert report.device == torch.device("cpu")
    assert report.loss > 0
    assert report.gradient_seconds > 0
    assert report.ok


def test_check_problem_unknown_name():
    with pytest.raises(ValueError, match="Available: .*digits_mlp"):
        check_problem("no_such_problem")

"""Training with recorded curvature: eigenvalues and trace against dense truth."""

from dataclasses import replace

import pytest
import torch

from _truth import dense_hessian
from curvlab import DenseOperator, problems
from curvlab.experiments.train import (
    evaluate,
    exact_trace,
    record_steps,
    top_eigenvalues,
    train_and_record,
)

# eigsh runs at tol=1e-10 on float64 operators; the dense reference differs only by
# rounding, so 1e-8 relative leaves two orders of margin.
RTOL_EIGVALS = 1e-8
RTOL_TRACE = 1e-10


def _tiny(name: str) -> problems.Problem:
    return problems.get(name, num_samples=60, dtype=torch.float64, seed=0)


@pytest.mark.parametrize("name", ["synthetic_regression", "digits_logreg"])
def test_recorded_curvature_matches_dense_hessian(name):
    problem = _tiny(name)
    records = train_and_record(
        problem, steps=6, record_at=[6], lr=0.1, batch_size=16, num_eigvals=4
    )
    (record,) = records
    names = [n for n, _ in problem.model.named_parameters()]
    H = dense_hessian(problem.model, problem.loss_fn, list(problem.train_data), names)
    expected = torch.linalg.eigvalsh(H).flip(0)[:4]
    got = torch.tensor(record.eigvals, dtype=torch.float64)
    assert record.step == 6
    assert torch.allclose(got, expected, rtol=RTOL_EIGVALS, atol=0)
    assert record.trace == pytest.approx(float(H.trace()), rel=RTOL_TRACE)
    assert record.num_matvecs > 0


def test_training_lowers_the_loss_and_is_reproducible():
    runs = [
        train_and_record(_tiny("digits_logreg"), steps=30, record_at=[0, 30], seed=3)
        for _ in range(2)
    ]
    first, last = runs[0]
    assert last.train_loss < first.train_loss
    assert last.train_accuracy > first.train_accuracy
    assert 0 <= last.test_accuracy <= 1
    untimed = [[replace(r, seconds=0.0) for r in run] for run in runs]
    assert untimed[0] == untimed[1]


def test_progress_reports_every_stage():
    events = []
    train_and_record(
        _tiny("synthetic_regression"),
        steps=4,
        record_at=[2],
        num_eigvals=2,
        on_progress=lambda *event: events.append(event),
    )
    train = [e for e in events if e[0] == "train"]
    assert [e[2:] for e in train] == [(i, 4) for i in range(1, 5)]
    assert {e[:2] for e in events if e[0] != "train"} == {("eigsh", 2), ("trace", 2)}
    trace = [e for e in events if e[0] == "trace"]
    assert trace[-1][2:] == (499, 499)


def test_regression_has_no_accuracy():
    problem = _tiny("synthetic_regression")
    loss, accuracy = evaluate(problem.model, problem.loss_fn, problem.test_data)
    assert accuracy is None
    assert loss > 0


@pytest.mark.parametrize(
    ("steps", "every", "expected"),
    [(1000, 250, [0, 250, 500, 750, 1000]), (10, 4, [0, 4, 8, 10]), (0, 5, [0])],
)
def test_record_steps(steps, every, expected):
    assert record_steps(steps, every) == expected


@pytest.mark.parametrize(("steps", "every"), [(-1, 1), (5, 0)])
def test_record_steps_rejects_bad_values(steps, every):
    with pytest.raises(ValueError, match="must be at least"):
        record_steps(steps, every)


def test_train_and_record_rejects_bad_arguments():
    problem = _tiny("synthetic_regression")
    with pytest.raises(ValueError, match="record_at must lie in"):
        train_and_record(problem, steps=3, record_at=[4])
    with pytest.raises(ValueError, match="batch_size must lie in"):
        train_and_record(problem, steps=3, record_at=[], batch_size=61)
    with pytest.raises(ValueError, match="lr must be positive"):
        train_and_record(problem, steps=3, record_at=[], lr=0.0)


def _known_spectrum():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    eigvals = torch.linspace(-7.0, 5.0, 40, dtype=torch.float64)
    return DenseOperator((Q * eigvals) @ Q.T), eigvals


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("LA", [5.0, 4.6923077, 4.3846154]),
        ("LM", [-6.3846154, -6.6923077, -7.0]),
        ("SA", [-6.3846154, -6.6923077, -7.0]),
    ],
)
def test_top_eigenvalues_of_known_spectrum(which, expected):
    op, _ = _known_spectrum()
    result = top_eigenvalues(op, 3, which=which, seed=1)
    assert list(result.eigvals) == pytest.approx(expected, abs=1e-6)


def test_top_eigenvalues_is_reproducible_and_counts_products():
    op, _ = _known_spectrum()
    counts = []
    first = top_eigenvalues(op, 2, seed=5, on_matvec=counts.append)
    assert first == top_eigenvalues(op, 2, seed=5)
    assert counts == list(range(1, first.num_matvecs + 1))


def test_top_eigenvalues_rejects_bad_arguments():
    op, _ = _known_spectrum()
    with pytest.raises(ValueError, match="k must lie in"):
        top_eigenvalues(op, 40)
    with pytest.raises(ValueError, match="which must be"):
        top_eigenvalues(op, 2, which="BE")


@pytest.mark.parametrize("chunk_size", [1, 7, 40, 100])
def test_exact_trace_of_known_spectrum(chunk_size):
    op, eigvals = _known_spectrum()
    done = []
    trace = exact_trace(op, chunk_size=chunk_size, on_columns=done.append)
    assert trace == pytest.approx(float(eigvals.sum()), abs=1e-12)
    assert done[-1] == 40


def test_exact_trace_rejects_bad_chunk_size():
    op, _ = _known_spectrum()
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        exact_trace(op, chunk_size=0)

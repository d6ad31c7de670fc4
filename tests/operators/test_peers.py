"""Cross-checks against curvlinops on the same problems (skipped without it)."""

import pytest
import torch

import curvlab as cl
from _compare import rel_error
from conftest import RTOL_FLOAT64

curvlinops = pytest.importorskip("curvlinops")


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (cl.HessianOperator, "HessianLinearOperator"),
        (cl.GGNOperator, "GGNLinearOperator"),
        (cl.EmpiricalFisherOperator, "EFLinearOperator"),
    ],
)
def test_products_match_curvlinops(case, ours, theirs):
    named = dict(case.model.named_parameters())
    names = case.params or list(named)
    params = [named[n] for n in names]
    peer = getattr(curvlinops, theirs)(case.model, case.loss_fn, params, case.data)
    op = ours(case.model, case.loss_fn, case.data, params=case.params)
    V = torch.randn(op.shape[0], 4, dtype=torch.float64)
    assert rel_error(op @ V, peer @ V) < RTOL_FLOAT64


def test_problem_products_match_curvlinops():
    problem = cl.problems.get("digits_cnn", dtype=torch.float64, num_samples=200)
    params = list(problem.model.parameters())
    peer = curvlinops.HessianLinearOperator(
        problem.model, problem.loss_fn, params, problem.train_data
    )
    op = cl.HessianOperator(problem.model, problem.loss_fn, problem.train_data)
    V = torch.randn(op.shape[0], 3, dtype=torch.float64)
    assert rel_error(op @ V, peer @ V) < RTOL_FLOAT64

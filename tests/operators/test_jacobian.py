"""The data-set Jacobian and its transpose against torch.func.jacrev, and the peer."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jacrev

import curvlab as cl
from _compare import rel_error
from conftest import CASES, RTOL_FLOAT64, param_names
from curvlab.operators import NonDeterministicError, TransposedJacobianOperator


@torch.no_grad()
def dense_jacobian(model, data, names):
    """``(N C, D)``: per-batch jacrev of the outputs, stacked sample-major."""
    named = dict(model.named_parameters())
    params = {n: named[n].detach() for n in names}
    blocks = []
    for X, _ in data:

        def out(p, X=X):
            return functional_call(model, {**dict(model.named_parameters()), **p}, (X,))

        J = jacrev(out)(params)  # name -> (B, *out, *p.shape)
        B = X.shape[0]
        rows = out(params).reshape(B, -1).shape[1] * B
        blocks.append(torch.cat([J[n].reshape(rows, -1) for n in names], dim=1))
    return torch.cat(blocks)


def test_jacobian_matches_jacrev(case):
    names = param_names(case)
    J = cl.JacobianOperator(case.model, case.data, params=case.params)
    dense = dense_jacobian(case.model, case.data, names)
    assert J.shape == tuple(dense.shape)
    D = J.shape[1]
    V = torch.randn(D, 3, dtype=torch.float64)
    assert rel_error(J @ V, dense @ V) < RTOL_FLOAT64
    assert (J @ V[:, 0]).shape == (J.shape[0],)
    assert rel_error(J @ V[:, 0], dense @ V[:, 0]) < RTOL_FLOAT64
    sizes = [int(torch.Size(s).numel()) for s in J.param_shapes]
    V_list = [
        c.reshape(*s, 3) for c, s in zip(V.split(sizes), J.param_shapes, strict=True)
    ]
    assert rel_error(J @ V_list, dense @ V) < RTOL_FLOAT64
    assert rel_error(J @ [v[..., 0] for v in V_list], dense @ V[:, 0]) < RTOL_FLOAT64
    U = torch.randn(J.shape[0], 2, dtype=torch.float64)
    JT = J.T
    assert isinstance(JT, TransposedJacobianOperator)
    assert JT.shape == (D, J.shape[0])
    assert rel_error(JT @ U, dense.T @ U) < RTOL_FLOAT64
    assert rel_error(JT @ U[:, 0], dense.T @ U[:, 0]) < RTOL_FLOAT64
    assert rel_error(J.to_dense(), dense) < RTOL_FLOAT64
    assert rel_error(JT.to_dense(), dense.T) < RTOL_FLOAT64
    assert JT.adjoint().shape == J.shape


def test_ggn_is_jacobian_sandwich_for_mse_sum():
    case = next(c for c in CASES if c.name == "mlp_tanh_mse_sum")
    J = cl.JacobianOperator(case.model, case.data, max_cols=2)
    ggn = cl.GGNOperator(case.model, case.loss_fn, case.data)
    V = torch.randn(J.shape[1], 5, dtype=torch.float64)
    # sum of ||f - y||^2: output Hessian 2 I, scale 1
    assert rel_error(2 * (J.T @ (J @ V)), ggn @ V) < RTOL_FLOAT64


def test_sketched_svd_runs_on_the_jacobian():
    case = CASES[0]
    J = cl.JacobianOperator(case.model, case.data)
    dense = J.to_dense()
    result = cl.linalg.sketched_svd(J, 20, 30, seed=0)
    top = torch.linalg.svdvals(dense)[:3]
    assert torch.allclose(result.S[:3], top, rtol=0.05)


def test_jacobian_matches_curvlinops(case):
    curvlinops = pytest.importorskip("curvlinops")
    named = dict(case.model.named_parameters())
    params = [named[n] for n in param_names(case)]
    peer = curvlinops.JacobianLinearOperator(case.model, params, case.data)
    J = cl.JacobianOperator(case.model, case.data, params=case.params)
    V = torch.randn(J.shape[1], 3, dtype=torch.float64)
    assert rel_error(J @ V, peer @ V) < RTOL_FLOAT64
    U = torch.randn(J.shape[0], 2, dtype=torch.float64)
    assert rel_error(J.T @ U, peer.adjoint() @ U) < RTOL_FLOAT64


def test_jacobian_bad_input():
    case = CASES[0]
    J = cl.JacobianOperator(case.model, case.data)
    rows, D = J.shape
    with pytest.raises(ValueError, match=rf"\(N\*C,\) or \(N\*C, k\) with N\*C={rows}"):
        J.T @ torch.ones(rows + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"shape \(D,\) or \(D, k\) with D={D}"):
        J @ torch.ones(D + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="dtype torch.float64. Got torch.float32"):
        J.T @ torch.ones(rows)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        cl.JacobianOperator(lambda x: x, case.data)
    with pytest.raises(ValueError, match="at least one"):
        cl.JacobianOperator(case.model, [])


def test_jacobian_refuses_changing_data():
    case = CASES[0]

    class Shuffled:
        def __init__(self):
            self.calls = 0

        def __iter__(self):
            self.calls += 1
            batches = case.data if self.calls % 2 else case.data[::-1]
            return iter(batches)

    J = cl.JacobianOperator(case.model, Shuffled())
    with pytest.raises(NonDeterministicError, match="data order"):
        J @ torch.ones(J.shape[1], dtype=torch.float64)

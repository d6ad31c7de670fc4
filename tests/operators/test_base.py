"""The operator protocol: algebra, dense wrapper, blocks, SciPy export."""

import numpy
import pytest
import scipy.sparse.linalg
import torch

import curvlab as cl
from _compare import compare_matmat, rel_error
from _truth import dense_hessian
from conftest import CASES, RTOL_FLOAT64

CASE = CASES[0]


def _hessian(params=None, **kwargs):
    return cl.HessianOperator(
        CASE.model, CASE.loss_fn, CASE.data, params=params, **kwargs
    )


def test_dense_operator_round_trip():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(7, 7, generator=g, dtype=torch.float64)
    compare_matmat(cl.DenseOperator(A), A, 1e-14)
    S = A + A.T
    op = cl.DenseOperator(S, param_shapes=[(2, 2), (3,)])
    assert op.is_symmetric
    compare_matmat(op, S, 1e-14)


def test_dense_operator_symmetric_up_to_rounding():
    # issue 11, item 8: Q diag(l) Q^T in float64 was refused by eigsh and
    # sketched_eigh as "declares is_symmetric=False"
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    values = torch.zeros(60, dtype=torch.float64)
    values[:5] = torch.linspace(10.0, 1.0, 5, dtype=torch.float64)  # rank 5
    A = Q @ torch.diag(values) @ Q.T
    assert not torch.equal(A, A.T)  # rounding
    op = cl.DenseOperator(A)
    assert op.is_symmetric
    result = cl.linalg.eigsh(op, 3)
    assert torch.allclose(
        result.eigenvalues.sort(descending=True).values, values[:3], rtol=1e-8
    )
    sketch = cl.linalg.sketched_eigh(op, 20, 30, seed=0)
    assert torch.allclose(sketch.eigenvalues[:5], values[:5], rtol=1e-8)
    assert not cl.DenseOperator(A, symmetry_tol=0).is_symmetric
    B = A.clone()
    B[0, 1] += 1e-3  # clearly not symmetric
    assert not cl.DenseOperator(B).is_symmetric


def test_sum_scale_difference_and_product():
    H = _hessian()
    G = cl.GGNOperator(CASE.model, CASE.loss_fn, CASE.data)
    Hd, Gd = H.to_dense(), G.to_dense()
    compare_matmat(H + G, Hd + Gd, RTOL_FLOAT64)
    compare_matmat(2.5 * H - G / 2, 2.5 * Hd - Gd / 2, RTOL_FLOAT64)
    compare_matmat(-H, -Hd, RTOL_FLOAT64)
    compare_matmat(H @ G, Hd @ Gd, RTOL_FLOAT64)
    assert (H + G).is_symmetric
    assert not (H @ G).is_symmetric
    assert (G + 2 * G).is_psd
    assert not (G - G).is_psd


def test_algebra_refuses_mismatched_spaces():
    H = _hessian()
    small = _hessian(params=["0.bias"])
    with pytest.raises(ValueError, match="same parameter space"):
        H + small
    with pytest.raises(TypeError):
        H + 1.0


def test_block_is_the_diagonal_block_of_the_full_operator():
    full = _hessian()
    names = full.param_names
    Hd = full.to_dense()
    sizes = [p.numel() for p in CASE.model.parameters()]
    offsets = numpy.cumsum([0, *sizes])
    for i, name in enumerate(names):
        block = full.block([name])
        sl = slice(offsets[i], offsets[i + 1])
        compare_matmat(block, Hd[sl, sl], RTOL_FLOAT64)
    two = full.block([names[2], names[0]])
    idx = numpy.r_[offsets[2] : offsets[3], offsets[0] : offsets[1]]
    compare_matmat(two, Hd[numpy.ix_(idx, idx)], RTOL_FLOAT64)
    assert type(two) is cl.HessianOperator
    assert two.param_names == [names[2], names[0]]


def test_block_of_fisher_keeps_its_options():
    F = cl.FisherOperator(CASE.model, CASE.loss_fn, CASE.data, mc_samples=2, seed=3)
    block = F.block(["2.bias"])
    assert block.mc_samples == 2
    assert block.seed == 3
    assert block.num_data == F.num_data


def test_block_of_a_sum_is_the_sum_of_the_blocks():
    H = _hessian()
    G = cl.GGNOperator(CASE.model, CASE.loss_fn, CASE.data)
    names = [H.param_names[2], H.param_names[0]]
    residual = 2.0 * H - G
    assert residual.param_names == H.param_names
    block = residual.block(names)
    assert isinstance(block, cl.operators.SumOperator)
    assert block.param_names == names
    want = 2.0 * H.block(names).to_dense() - G.block(names).to_dense()
    compare_matmat(block, want, RTOL_FLOAT64)
    twin = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)).double()
    data = [(torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 3).double())]
    first, second = (
        cl.HessianOperator(twin, torch.nn.MSELoss(), data, params=[f"{i}.weight"])
        for i in (0, 1)
    )
    with pytest.raises(ValueError, match="differently named"):
        _ = (first + second).param_names
    dense = cl.DenseOperator(H.to_dense())
    assert (dense + dense).param_names is None
    with pytest.raises(TypeError, match="no diagonal blocks"):
        (dense + dense).block(names)


def test_block_refuses_parameters_outside_the_operator():
    op = _hessian(params=["0.weight"])
    with pytest.raises(ValueError, match="not among this operator's parameters"):
        op.block(["2.bias"])


def test_scipy_export_works_with_eigsh():
    op = _hessian()
    Hd = dense_hessian(CASE.model, CASE.loss_fn, CASE.data, op.param_names)
    vals = scipy.sparse.linalg.eigsh(op.to_scipy(), k=3, which="LA", tol=1e-12)[0]
    expected = torch.linalg.eigvalsh(Hd)[-3:].numpy()
    assert numpy.allclose(numpy.sort(vals), expected, rtol=1e-9, atol=1e-12)


def test_float32_products_agree_with_float64():
    """float32 products carry ~1e-7 relative rounding; 1e-4 allows the growth."""
    model32 = torch.nn.Sequential(
        torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)
    )
    model32.load_state_dict(CASE.model.state_dict())
    data32 = [(X.float(), y) for X, y in CASE.data]
    op32 = cl.HessianOperator(model32, CASE.loss_fn, data32)
    assert op32.dtype == torch.float32
    v = torch.randn(op32.shape[0], 2, dtype=torch.float64)
    assert rel_error((op32 @ v.float()).double(), _hessian() @ v) < 1e-4


def test_compiled_product_equals_eager():
    pytest.importorskip("torch._dynamo")
    eager = _hessian()
    compiled = _hessian(compile=True)
    v = torch.randn(eager.shape[0], 3, dtype=torch.float64)
    assert rel_error(compiled @ v, eager @ v) < RTOL_FLOAT64


@pytest.mark.parametrize(
    ("operator", "options"),
    [
        (cl.GGNOperator, {}),
        (cl.FisherOperator, {"mc_samples": 2, "seed": 3}),
        (cl.EmpiricalFisherOperator, {}),
    ],
    ids=["ggn", "mc-fisher", "empirical-fisher"],
)
def test_compiled_output_curvature_equals_eager(operator, options):
    """Compiled GGN-type products equal eager ones, MC Fisher labels included."""
    pytest.importorskip("torch._dynamo")
    args = (CASE.model, CASE.loss_fn, CASE.data)
    eager = operator(*args, **options)
    compiled = operator(*args, compile=True, **options)
    v = torch.randn(eager.shape[0], 3, dtype=torch.float64)
    assert rel_error(compiled @ v, eager @ v) < RTOL_FLOAT64

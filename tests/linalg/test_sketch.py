"""SEIGH, Nyström and the sketched SVD: exactness, streaming, errors, peers."""

from __future__ import annotations

import json

import pytest
import torch

import curvlab as cl
from curvlab import problems
from curvlab.linalg import (
    SketchedEigh,
    SketchPlan,
    measure,
    nystrom,
    sketch_plan,
    sketched_eigh,
    sketched_svd,
    solve,
    synthetic,
)
from curvlab.linalg.ssrft import TEST_MATRIX_KINDS

F64 = torch.float64
TOL = 1e-8  # exact recovery in float64: rounding of QR/lstsq/eigh is ~1e-14


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=_gen(seed), dtype=F64)


def _low_rank_signed(dim, values, seed=0):
    lam = torch.zeros(dim, dtype=F64)
    lam[: len(values)] = torch.tensor(values, dtype=F64)
    return synthetic.from_spectrum(lam, seed=seed)


def _fro(A):
    return float(torch.linalg.matrix_norm(A))


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("kind", TEST_MATRIX_KINDS)
@pytest.mark.parametrize(("num_outer", "num_inner"), [(5, 10), (8, 16), (5, 5)])
def test_seigh_recovers_exact_low_rank(kind, num_outer, num_inner):
    A, lam = synthetic.low_rank(80, 5, seed=1)
    result = sketched_eigh(A, num_outer, num_inner, test_matrix=kind, seed=3)
    assert result.num_matvecs == num_inner
    assert result.eigenvalues.shape == (num_outer,)
    assert result.eigenvectors.shape == (80, num_outer)
    torch.testing.assert_close(result.eigenvalues[:5], lam[:5], rtol=0, atol=TOL)
    torch.testing.assert_close(
        result.eigenvalues[5:], lam[5:num_outer], rtol=0, atol=TOL
    )
    assert _fro(result.to_dense() - A) <= TOL * _fro(A)
    W = result.eigenvectors
    torch.testing.assert_close(W.T @ W, torch.eye(num_outer, dtype=F64))


@pytest.mark.parametrize("kind", TEST_MATRIX_KINDS)
def test_seigh_indefinite_low_rank_sorted_by_magnitude(kind):
    values = [-3.0, 2.5, -2.0, 1.0, -0.5]
    A, lam = _low_rank_signed(60, values, seed=2)
    result = sketched_eigh(A, 6, 12, test_matrix=kind)
    torch.testing.assert_close(
        result.eigenvalues[:5], torch.tensor(values, dtype=F64), rtol=0, atol=TOL
    )
    assert abs(float(result.eigenvalues[5])) <= TOL
    assert _fro(result.to_dense() - A) <= TOL * _fro(A)
    # the eigenvectors are those of A
    torch.testing.assert_close(
        A @ result.eigenvectors[:, :5],
        result.eigenvectors[:, :5] * result.eigenvalues[:5],
        rtol=0,
        atol=TOL,
    )


@pytest.mark.parametrize(
    ("name", "matrix", "num_outer"),
    [
        ("low_rank_plus_noise", synthetic.low_rank_plus_noise(200, 10, 1e-2), 20),
        ("polynomial", synthetic.polynomial_decay(200, 10, 1.0), 10),
        ("exponential", synthetic.exponential_decay(200, 10, 0.1), 10),
        ("indefinite", synthetic.indefinite(200, 10, 0.7), 20),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
@pytest.mark.parametrize("kind", TEST_MATRIX_KINDS)
def test_seigh_error_within_factor_of_best_rank_k(name, matrix, num_outer, kind):
    """Stated factor: ||A - Â||_F <= 4 tau_{k+1}(A) with s = 2k, over 3 seeds.

    tau_{k+1} is the best rank-k error. Measured worst ratios (seeds 0-4, all
    kinds): 3.5 (low rank + noise, k = 2 x signal rank), 2.7 (polynomial),
    1.8 (exponential), 2.6 (indefinite).
    """
    A, lam = matrix
    best = float((lam[num_outer:] ** 2).sum().sqrt())
    for seed in range(3):
        result = sketched_eigh(A, num_outer, 2 * num_outer, test_matrix=kind, seed=seed)
        assert _fro(A - result.to_dense()) <= 4 * best


def test_seigh_more_measurements_help_on_decaying_spectrum():
    A, lam = synthetic.polynomial_decay(300, 5, 2.0, seed=4)
    errors = [
        _fro(A - sketched_eigh(A, k, 2 * k, seed=1).to_dense()) for k in (5, 10, 40)
    ]
    assert errors[0] > errors[1] > errors[2]
    top = sketched_eigh(A, 40, 80, seed=1).eigenvalues[:5]
    torch.testing.assert_close(top, lam[:5], rtol=1e-3, atol=0)


# ---------------------------------------------------------- plan and streaming
def test_shuffled_blocks_equal_one_call():
    A, _ = synthetic.indefinite(120, 15, 0.8, seed=5)
    plan = sketch_plan(A, 12, 30, test_matrix="ssrft", seed=11)
    reference = sketched_eigh(A, 12, 30, test_matrix="ssrft", seed=11)
    perm = torch.randperm(30, generator=_gen(7)).tolist()
    sizes, start, blocks = [1, 7, 3, 11, 2, 6], 0, []
    for size in sizes:
        idx = perm[start : start + size]
        blocks.append((idx, measure(A, plan, idx)))
        start += size
    assert start == 30
    Y = torch.empty(120, 30, dtype=F64)
    for idx, block in reversed(blocks):
        Y[:, idx] = block
    result = solve(plan, Y)
    torch.testing.assert_close(
        result.eigenvalues, reference.eigenvalues, rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        result.to_dense(), reference.to_dense(), rtol=0, atol=1e-12
    )
    assert result.num_matvecs == reference.num_matvecs == 30


@pytest.mark.parametrize("kind", TEST_MATRIX_KINDS)
def test_measurement_reproducible_from_seed_and_index(kind):
    A, _ = synthetic.polynomial_decay(50, 3, seed=0)
    plan = sketch_plan(A, 4, 10, test_matrix=kind, seed=21)
    rebuilt = SketchPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert rebuilt == plan
    # test column 7 alone, on a fresh plan, is bit-identical to column 7 of all
    torch.testing.assert_close(
        rebuilt.test_columns([7])[:, 0],
        plan.test_columns(range(10))[:, 7],
        rtol=0,
        atol=0,
    )
    # and so is its measurement, up to the BLAS's blocking of A @ X
    torch.testing.assert_close(
        measure(A, rebuilt, [7])[:, 0],
        measure(A, plan, range(10))[:, 7],
        rtol=1e-14,
        atol=1e-15,
    )
    # test column 3 does not depend on num_inner or num_outer
    wider = sketch_plan(A, 6, 20, test_matrix=kind, seed=21)
    torch.testing.assert_close(
        wider.test_columns([3]), plan.test_columns([3]), rtol=0, atol=0
    )
    other = sketch_plan(A, 4, 10, test_matrix=kind, seed=22)
    assert not torch.allclose(other.test_columns([3]), plan.test_columns([3]))


def test_streaming_inner_sketch_equals_full_solve():
    A, _ = synthetic.exponential_decay(90, 5, 0.2, seed=3)
    plan = sketch_plan(A, 8, 20, test_matrix="gaussian", seed=1)
    outer = measure(A, plan, range(8))
    Z = torch.empty(20, 20, dtype=F64)
    for idx in ([19, 0, 5], list(range(1, 5)), list(range(6, 19))):
        Z[:, idx] = plan.inner_sketch(measure(A, plan, idx))
    streamed = solve(plan, outer, inner=Z)
    full = solve(plan, measure(A, plan, range(20)))
    torch.testing.assert_close(streamed.to_dense(), full.to_dense(), rtol=0, atol=1e-12)


def test_plan_dict_is_plain_and_validated():
    plan = sketch_plan(torch.eye(30, dtype=F64), 4, seed=2)
    values = plan.to_dict()
    assert values == {
        "method": "eigh",
        "shape": [30, 30],
        "num_outer": 4,
        "num_inner": 8,
        "test_matrix": "ssrft",
        "seed": 2,
        "dtype": "float64",
        "device": "cpu",
    }
    with pytest.raises(ValueError, match="has the keys"):
        SketchPlan.from_dict({**values, "extra": 1})
    with pytest.raises(ValueError, match=r"num_inner must lie in \[4, 30\]"):
        SketchPlan.from_dict({**values, "num_inner": 3})
    with pytest.raises(ValueError, match="real floating torch dtype"):
        SketchPlan.from_dict({**values, "dtype": "int64"})
    assert sketch_plan(((30, 30), F64, "cpu"), 4, seed=2) == plan


def test_block_size_does_not_change_result():
    A, _ = synthetic.polynomial_decay(70, 4, seed=2)
    a = sketched_eigh(A, 6, 14, seed=3)
    b = sketched_eigh(A, 6, 14, seed=3, block_size=4)
    torch.testing.assert_close(a.to_dense(), b.to_dense(), rtol=0, atol=1e-13)
    assert b.num_matvecs == 14
    assert (a.num_outer, a.num_inner, a.test_matrix, a.seed) == (6, 14, "ssrft", 3)


def test_truncate_and_apply():
    A, _ = synthetic.indefinite(40, 6, seed=1)
    result = sketched_eigh(A, 8, 16)
    top = result.truncate(3)
    assert isinstance(top, SketchedEigh)
    assert top.eigenvalues.shape == (3,)
    X = _randn(40, 2)
    torch.testing.assert_close(top @ X, top.to_dense() @ X)
    torch.testing.assert_close(top @ X[:, 0], top.to_dense() @ X[:, 0])
    with pytest.raises(ValueError, match="rank must lie in"):
        result.truncate(9)


def test_curvature_operator_and_float32():
    A, lam = synthetic.low_rank(50, 3, seed=0)
    op = cl.DenseOperator(A, is_psd=True)
    torch.testing.assert_close(
        sketched_eigh(op, 4, 8).eigenvalues[:3], lam[:3], rtol=0, atol=TOL
    )
    result32 = sketched_eigh(A.float(), 4, 8)
    assert result32.eigenvalues.dtype == torch.float32
    assert result32.plan.dtype == "float32"
    torch.testing.assert_close(
        result32.eigenvalues[:3], lam[:3].float(), rtol=0, atol=1e-4
    )


# ---------------------------------------------------------------------- Nyström
@pytest.mark.parametrize("kind", TEST_MATRIX_KINDS)
def test_nystrom_exact_on_psd_low_rank_with_half_the_measurements(kind):
    lam = torch.zeros(80, dtype=F64)
    lam[:6] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    A, lam = synthetic.from_spectrum(lam, seed=3)
    result = nystrom(A, 6, test_matrix=kind, seed=4)
    assert result.num_matvecs == 6  # SEIGH takes s = 2k = 12 for the same rank
    assert result.plan.method == "nystrom"
    torch.testing.assert_close(result.eigenvalues, lam[:6], rtol=0, atol=TOL)
    assert _fro(result.to_dense() - A) <= TOL * _fro(A)
    assert bool((result.eigenvalues >= 0).all())


def test_nystrom_psd_decay_beats_or_matches_seigh_at_equal_products():
    A, _ = synthetic.polynomial_decay(200, 5, 1.0, seed=2)
    ny = nystrom(A, 20, seed=0)
    se = sketched_eigh(A, 10, 20, seed=0)
    assert ny.num_matvecs == se.num_matvecs == 20
    assert _fro(A - ny.to_dense()) < _fro(A - se.to_dense())


def test_nystrom_refuses_indefinite():
    A, _ = synthetic.indefinite(50, 5, seed=0)
    with pytest.raises(ValueError, match="not positive definite"):
        nystrom(A, 10)
    with pytest.raises(ValueError, match="declares is_psd=False"):
        nystrom(cl.DenseOperator(A), 5)
    with pytest.raises(ValueError, match="no inner measurements"):
        sketch_plan(A, 5, 10, method="nystrom")


# ------------------------------------------------------------------------- SVD
@pytest.mark.parametrize("kind", TEST_MATRIX_KINDS)
@pytest.mark.parametrize("shape", [(60, 35), (35, 60), (50, 50)])
def test_ssvd_exact_on_rectangular_and_nonsymmetric_low_rank(kind, shape):
    m, n = shape
    A = _randn(m, 4, seed=1) @ _randn(4, n, seed=2)
    result = sketched_svd(A, 5, 11, test_matrix=kind, seed=2)
    assert result.num_matvecs == 11 + 5
    assert result.U.shape == (m, 5)
    assert result.V.shape == (n, 5)
    assert _fro(result.to_dense() - A) <= TOL * _fro(A)
    torch.testing.assert_close(
        result.S[:4], torch.linalg.svdvals(A)[:4], rtol=0, atol=TOL * _fro(A)
    )
    assert bool((result.S[:-1] >= result.S[1:]).all())


def test_ssvd_adjoint_sources_and_streaming():
    A = _randn(30, 3, seed=3) @ _randn(3, 30, seed=4)
    op = cl.DenseOperator(A)
    assert not op.is_symmetric
    via_adjoint = sketched_svd(op, 4, seed=1)
    via_tensor = sketched_svd(A, 4, seed=1)
    torch.testing.assert_close(via_adjoint.to_dense(), via_tensor.to_dense())

    class WithT:
        def __init__(self, M):
            self.M, self.shape, self.dtype, self.device = M, M.shape, M.dtype, M.device

        def __matmul__(self, X):
            return self.M @ X

        @property
        def T(self):
            return WithT(self.M.T)

    torch.testing.assert_close(
        sketched_svd(WithT(A), 4, seed=1).to_dense(), via_tensor.to_dense()
    )

    class NoAdjoint:
        shape, dtype, device = (30, 30), F64, torch.device("cpu")

        def __matmul__(self, X):
            return A @ X

    with pytest.raises(TypeError, match=r"adjoint\(\)"):
        sketched_svd(NoAdjoint(), 4)
    # two-stage, blocks in any order
    plan = sketch_plan(A, 4, 8, method="svd", seed=1)
    right = torch.cat([measure(A, plan, range(5)), measure(A, plan, range(5, 8))], 1)
    left = measure(A, plan, [3, 2, 1, 0], adjoint=True)[:, [3, 2, 1, 0]]
    streamed = solve(plan, right, adjoint_measurements=left)
    torch.testing.assert_close(
        streamed.to_dense(), via_tensor.to_dense(), rtol=0, atol=1e-12
    )
    with pytest.raises(ValueError, match="needs adjoint_measurements"):
        solve(plan, right)


# ------------------------------------------------------------------ bad input
def test_bad_sizes():
    A, _ = synthetic.low_rank(20, 2)
    with pytest.raises(ValueError, match=r"num_inner must lie in \[6, 20\]"):
        sketched_eigh(A, 6, 5)
    with pytest.raises(ValueError, match=r"num_outer must lie in \[1, 19\]"):
        sketched_eigh(A, 20, 20)
    with pytest.raises(ValueError, match=r"num_outer must lie in \[1, 19\]"):
        sketched_eigh(A, 0, 4)
    with pytest.raises(ValueError, match=r"num_inner must lie in \[4, 20\]"):
        sketched_eigh(A, 4, 21)
    with pytest.raises(TypeError, match="num_outer must be an int"):
        sketched_eigh(A, 2.0, 4)
    with pytest.raises(TypeError, match="seed must be an int"):
        sketched_eigh(A, 2, 4, seed=None)
    with pytest.raises(ValueError, match="test_matrix must be one of"):
        sketched_eigh(A, 2, 4, test_matrix="sparse")
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        sketched_eigh(A, 2, 4, block_size=0)


def test_wrong_operators():
    with pytest.raises(
        ValueError, match=r"must be square \(D, D\). Got shape \(5, 4\)"
    ):
        sketched_eigh(torch.ones(5, 4, dtype=F64), 2, 3)
    nonsym = _randn(10, 10)
    with pytest.raises(ValueError, match="must be symmetric"):
        sketched_eigh(cl.DenseOperator(nonsym), 2, 4)
    with pytest.raises(ValueError, match="must be symmetric"):
        sketched_eigh(nonsym, 2, 4)
    with pytest.raises(TypeError, match="must have shape, dtype, device"):
        sketched_eigh(object(), 2, 4)
    with pytest.raises(ValueError, match="needs a square operator"):
        sketch_plan(((5, 4), F64, "cpu"), 2)
    A, _ = synthetic.low_rank(20, 2)
    plan = sketch_plan(A, 2, 4)
    with pytest.raises(ValueError, match=r"operator has shape \(10, 10\), the plan"):
        measure(A[:10, :10], plan, [0])
    with pytest.raises(ValueError, match="operator has dtype torch.float32"):
        measure(A.float(), plan, [0])
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        measure(A, plan, [4])
    with pytest.raises(ValueError, match="Only an 'svd' sketch"):
        measure(A, plan, [0], adjoint=True)
    with pytest.raises(ValueError, match=r"measurements must have shape \(20, 4\)"):
        solve(plan, torch.zeros(20, 3, dtype=F64))
    with pytest.raises(ValueError, match="measurements must have dtype float64"):
        solve(plan, torch.zeros(20, 4))


def test_nan_products_name_the_step():
    A, _ = synthetic.low_rank(20, 2)

    class Broken:
        shape, dtype, device, is_symmetric = (20, 20), F64, torch.device("cpu"), True

        def __matmul__(self, X):
            out = A @ X
            out[0, -1] = float("nan")
            return out

    with pytest.raises(
        FloatingPointError, match="NaN or Inf in eigh measurements 0..3"
    ):
        sketched_eigh(Broken(), 2, 4)
    with pytest.raises(FloatingPointError, match="in nystrom measurements"):
        nystrom(Broken(), 2)


# ------------------------------------------------------------- real Hessians
def _train(model, loss_fn, data, steps, lr=0.1, batch_size=32, seed=0):
    X, y = next(iter(data))
    g = _gen(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(y), (batch_size,), generator=g)
        opt.zero_grad()
        loss_fn(model(X[i]), y[i]).backward()
        opt.step()
    model.eval()


def _top_magnitudes(op, k):
    """Reference |lambda|_1..k: ARPACK on the scipy export, tight tolerance."""
    from scipy.sparse.linalg import eigsh

    values = eigsh(op.to_scipy(), k=k, which="LM", tol=1e-10, return_eigenvectors=False)
    return torch.tensor(sorted(abs(v) for v in values)[::-1], dtype=F64)


def _relative_errors(result, reference):
    k = len(reference)
    return (result.eigenvalues[:k].abs() - reference).abs() / reference


def test_seigh_on_trained_digits_mlp_subset_hessian():
    """Fast variant: digits_mlp on 300 samples, 300 SGD steps (lr 0.1, batch 32).

    Reference |lambda| from ARPACK. Measured (seeds 0, 1): at 10% of D, top-3
    within 0.3%, top-10 within 1%.
    """
    problem = problems.get("digits_mlp", dtype=F64, num_samples=300)
    _train(problem.model, problem.loss_fn, problem.train_data, 300)
    H = cl.HessianOperator(problem.model, problem.loss_fn, problem.train_data)
    reference = _top_magnitudes(H, 10)
    k = round(0.1 * H.shape[0])
    result = sketched_eigh(H, k, 2 * k, seed=0)
    errors = _relative_errors(result, reference)
    assert float(errors[:3].max()) < 0.01
    assert float(errors.max()) < 0.02
    assert result.num_matvecs == 2 * k


@pytest.mark.slow
def test_seigh_on_trained_digits_mlp_hessian():
    """digits_mlp (D = 3190, 1437 samples), SGD as ``curvlab demo`` (lr 0.1, batch 32).

    Measured over seeds 0-2 after 1000 steps, num_outer = 5% of D, num_inner =
    2 num_outer: top-1 within 0.6%, top-3 within 1.5%, top-10 within 3.8%; at 10%
    of D top-10 within 1%. (The paper's 0.1-0.5% at 5% is on a spectrum with
    stronger outliers; an exact Rayleigh-Ritz on the same range would give
    0.02%, so the single-pass core solve, not the range, limits the accuracy.)
    """
    problem = problems.get("digits_mlp", dtype=F64)
    _train(problem.model, problem.loss_fn, problem.train_data, 1000)
    H = cl.HessianOperator(problem.model, problem.loss_fn, problem.train_data)
    dense = H.to_dense()
    dense = (dense + dense.T) / 2  # products are symmetric up to rounding
    lam = torch.linalg.eigvalsh(dense)
    reference = lam.abs().sort(descending=True).values[:10]
    D = H.shape[0]
    k = round(0.05 * D)
    errors = _relative_errors(sketched_eigh(dense, k, 2 * k, seed=0), reference)
    assert float(errors[0]) < 0.01
    assert float(errors[:3].max()) < 0.02
    assert float(errors.max()) < 0.05
    k = round(0.1 * D)
    errors = _relative_errors(sketched_eigh(dense, k, 2 * k, seed=0), reference)
    assert float(errors.max()) < 0.015


# ------------------------------------------------------------------ peers
def test_accuracy_matches_skerch_seigh():
    skerch_algorithms = pytest.importorskip("skerch.algorithms")
    A, lam = synthetic.polynomial_decay(300, 5, 1.0, seed=8)
    k, s = 20, 40
    top = lam[:5].abs()
    ours, theirs = [], []
    for seed in range(3):
        result = sketched_eigh(A, k, s, seed=seed)
        ours.append(float(((result.eigenvalues[:5].abs() - top).abs() / top).max()))
        ews, _ = skerch_algorithms.seigh(
            A,
            "cpu",
            F64,
            k,
            seed=1000 * (seed + 1),
            noise_type="ssrft",
            recovery_type=f"oversampled_{s}",
        )
        theirs.append(float(((ews[:5].abs() - top).abs() / top).max()))
    # skerch takes k + s = 60 products (no recycling), curvlab s = 40
    assert sum(ours) / 3 <= 2 * sum(theirs) / 3 + 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", TEST_MATRIX_KINDS)
def test_cuda_matches_cpu(kind):
    A, _ = synthetic.indefinite(300, 10, seed=0)
    cpu = sketched_eigh(A, 12, 24, test_matrix=kind, seed=5)
    gpu = sketched_eigh(A.cuda(), 12, 24, test_matrix=kind, seed=5)
    assert gpu.eigenvectors.device.type == "cuda"
    assert gpu.plan.device.startswith("cuda")
    torch.testing.assert_close(
        gpu.eigenvalues.cpu(), cpu.eigenvalues, rtol=0, atol=1e-10
    )
    # measurements taken on the GPU solve on the CPU plan alike
    plan = cpu.plan
    Y = measure(A.cuda(), plan, range(24)).cpu()
    torch.testing.assert_close(
        solve(plan, Y).eigenvalues, cpu.eigenvalues, rtol=0, atol=1e-10
    )

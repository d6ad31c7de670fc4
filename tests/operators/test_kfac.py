"""KFAC and EKFAC: theory, dense Kronecker truth, curvlinops, and bad input."""

import copy
import math

import pytest
import torch
from torch import nn

import curvlab as cl
from _compare import compare_matmat, rel_error
from _truth import dense_empirical_fisher, dense_ggn
from conftest import CASES, RTOL_FLOAT64, param_names

F64 = torch.float64
OPTIONS = [
    pytest.param({"separate_weight_and_bias": True}, id="separate"),
    pytest.param({"separate_weight_and_bias": False}, id="joint"),
]


# ------------------------------------------------------------------ helpers
def block_indices(op, block):
    """Flat indices of a Kronecker block's (d_out, d_in) coordinates, row-major."""
    offsets = [0]
    for s in op.param_shapes:
        offsets.append(offsets[-1] + math.prod(s))
    cols = []
    for pos in block.positions:
        shape = op.param_shapes[pos]
        width = math.prod(shape[1:])
        cols.append(
            offsets[pos] + torch.arange(shape[0] * width).reshape(shape[0], width)
        )
    return torch.cat(cols, dim=1).reshape(-1)


def dense_kronecker(op):
    """The block-diagonal matrix of kron(G, A) per block, built from the factors."""
    D = op.shape[0]
    K = torch.zeros(D, D, dtype=F64)
    for block in op.blocks:
        idx = block_indices(op, block)
        K[idx[:, None], idx[None, :]] = torch.kron(block.G, block.A)
    return K


def dense_ekfac(op):
    D = op.shape[0]
    K = torch.zeros(D, D, dtype=F64)
    for block, (QG, QA, s) in zip(op.blocks, op._eigen(), strict=True):
        idx = block_indices(op, block)
        Q = torch.kron(QG, QA)
        K[idx[:, None], idx[None, :]] = Q @ torch.diag(s.reshape(-1)) @ Q.T
    return K


def make_data(model_in, target, N, batches, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, *model_in, generator=g, dtype=F64)
    y = target(N, g)
    out, start = [], 0
    for b in batches:
        out.append((X[start : start + b], y[start : start + b]))
        start += b
    return out


def classes(C):
    return lambda N, g: torch.randint(0, C, (N,), generator=g)


def regression(*shape):
    return lambda N, g: torch.randn(N, *shape, generator=g, dtype=F64)


def binary(C):
    return lambda N, g: torch.randint(0, 2, (N, C), generator=g).double()


def mlp(act=nn.Tanh):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), act(), nn.Linear(4, 3)).double()


def deep_linear():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 4), nn.Linear(4, 3)).double()


def cnn(inplace=False):
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 3, stride=1, padding="same"),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(27, 3),
    ).double()


def ggn_block(op, truth, block):
    idx = block_indices(op, block)
    return truth[idx[:, None], idx[None, :]]


def assert_blocks_equal_ggn(op, truth):
    K = op.to_dense()
    covered = torch.zeros_like(K, dtype=torch.bool)
    for block in op.blocks:
        idx = block_indices(op, block)
        sub = K[idx[:, None], idx[None, :]]
        assert rel_error(sub, ggn_block(op, truth, block)) < RTOL_FLOAT64
        covered[idx[:, None], idx[None, :]] = True
    assert not K[~covered].any()


# ------------------------------------------------------------ exact in theory
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_deep_linear_mse_equals_ggn_blocks(options, reduction):
    """MSE on a deep linear network: KFAC is the GGN's layer blocks at any N."""
    model = deep_linear()
    loss_fn = nn.MSELoss(reduction=reduction)
    data = make_data((5,), regression(3), 11, [4, 4, 3])
    op = cl.KFACOperator(model, loss_fn, data, **options)
    names = [n for n, _ in model.named_parameters()]
    assert_blocks_equal_ggn(op, dense_ggn(model, loss_fn, data, names))


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize(
    ("loss_fn", "target"),
    [
        (nn.CrossEntropyLoss(), classes(3)),
        (nn.CrossEntropyLoss(reduction="sum"), classes(3)),
        (nn.BCEWithLogitsLoss(), binary(3)),
    ],
    ids=["ce_mean", "ce_sum", "bce_mean"],
)
def test_one_data_point_equals_ggn_blocks(options, loss_fn, target):
    model = mlp()
    data = make_data((5,), target, 1, [1])
    op = cl.KFACOperator(model, loss_fn, data, **options)
    names = [n for n, _ in model.named_parameters()]
    assert_blocks_equal_ggn(op, dense_ggn(model, loss_fn, data, names))


def test_one_data_point_empirical_and_mc():
    """With one sample, empirical and MC KFAC are the EF and MC-Fisher blocks."""
    model, loss_fn = mlp(), nn.CrossEntropyLoss()
    data = make_data((5,), classes(3), 1, [1])
    names = [n for n, _ in model.named_parameters()]
    op = cl.KFACOperator(model, loss_fn, data, fisher_type="empirical")
    assert_blocks_equal_ggn(op, dense_empirical_fisher(model, loss_fn, data, names))
    op = cl.KFACOperator(model, loss_fn, data, fisher_type="mc", mc_samples=5, seed=3)
    mc = cl.FisherOperator(model, loss_fn, data, mc_samples=5, seed=3).to_dense()
    assert_blocks_equal_ggn(op, mc)


def test_forward_only_is_input_moment():
    model = mlp()
    data = make_data((5,), classes(3), 6, [6])
    op = cl.KFACOperator(model, nn.CrossEntropyLoss(), data, fisher_type="forward-only")
    X = data[0][0]
    A = X.T @ X / 6
    assert rel_error(op.blocks[0].A, A) < RTOL_FLOAT64
    assert torch.equal(op.blocks[0].G, torch.eye(4, dtype=F64))
    assert torch.equal(op.blocks[1].G, torch.eye(4, dtype=F64))


def test_batching_does_not_change_factors():
    """Mean reduction weights batches by size: one batch or uneven ones agree."""
    model, loss_fn = mlp(), nn.CrossEntropyLoss()
    data = make_data((5,), classes(3), 11, [4, 4, 3])
    whole = [(torch.cat([X for X, _ in data]), torch.cat([y for _, y in data]))]
    a = cl.KFACOperator(model, loss_fn, data).to_dense()
    b = cl.KFACOperator(model, loss_fn, whole).to_dense()
    assert rel_error(a, b) < RTOL_FLOAT64


# ------------------------------------------------- dense Kronecker matrix truth
@pytest.mark.parametrize("options", OPTIONS)
def test_operator_equals_dense_kronecker(case, options):
    op = cl.KFACOperator(
        case.model, case.loss_fn, case.data, params=case.params, **options
    )
    K = dense_kronecker(op)
    compare_matmat(op, K, RTOL_FLOAT64)
    assert op.is_psd
    assert rel_error(op.trace(), torch.trace(K)) < RTOL_FLOAT64
    assert rel_error(op.frobenius_norm(), K.norm()) < RTOL_FLOAT64


@pytest.mark.parametrize("damping", [1e-3, 0.5])
@pytest.mark.parametrize("options", OPTIONS)
def test_logdet_and_exact_inverse_equal_dense(case, options, damping):
    op = cl.KFACOperator(
        case.model, case.loss_fn, case.data, params=case.params, **options
    )
    K = dense_kronecker(op) + damping * torch.eye(op.shape[0], dtype=F64)
    assert rel_error(op.logdet(damping), torch.linalg.slogdet(K)[1]) < RTOL_FLOAT64
    assert rel_error(op.det(damping), torch.linalg.det(K)) < RTOL_FLOAT64
    inverse = op.inverse(damping)
    compare_matmat(inverse, torch.linalg.inv(K), RTOL_FLOAT64)
    V = torch.randn(op.shape[0], 2, dtype=F64)
    assert rel_error(inverse @ V, torch.linalg.solve(K, V)) < RTOL_FLOAT64
    assert inverse.shape == op.shape
    assert (inverse.dtype, inverse.device) == (op.dtype, op.device)


def test_heuristic_damping_matches_its_formula():
    model, loss_fn = mlp(), nn.CrossEntropyLoss()
    data = make_data((5,), classes(3), 11, [4, 4, 3])
    op = cl.KFACOperator(model, loss_fn, data)
    damping = 1e-2
    inverse = op.inverse(damping, method="heuristic")
    D = op.shape[0]
    expected = torch.zeros(D, D, dtype=F64)
    gamma = damping**0.5
    for block in op.blocks:
        G, A = block.G, block.A
        pi = ((torch.trace(A) / A.shape[0]) / (torch.trace(G) / G.shape[0])) ** 0.5
        eye_g = torch.eye(G.shape[0], dtype=F64)
        eye_a = torch.eye(A.shape[0], dtype=F64)
        inv = torch.kron(
            torch.linalg.inv(G + gamma / pi * eye_g),
            torch.linalg.inv(A + gamma * pi * eye_a),
        )
        idx = block_indices(op, block)
        expected[idx[:, None], idx[None, :]] = inv
    compare_matmat(inverse, expected, RTOL_FLOAT64)
    # the heuristic is not the inverse of K + damping I
    exact = op.inverse(damping).to_dense()
    assert rel_error(inverse.to_dense(), exact) > 1e-3


def test_undamped_mse_inverse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3)).double()
    data = make_data((5,), regression(3), 40, [40])
    op = cl.KFACOperator(model, nn.MSELoss(), data, separate_weight_and_bias=False)
    K = dense_kronecker(op)
    V = torch.randn(op.shape[0], 2, dtype=F64)
    assert rel_error(op.inverse(0.0) @ V, torch.linalg.solve(K, V)) < 1e-8
    assert rel_error(op.logdet(), torch.linalg.slogdet(K)[1]) < RTOL_FLOAT64


def test_block_is_diagonal_block():
    model = deep_linear()
    data = make_data((5,), regression(3), 40, [40])
    op = cl.KFACOperator(model, nn.MSELoss(), data)
    K = dense_kronecker(op)
    block = op.block(["1.weight", "1.bias"])
    idx = torch.cat([block_indices(op, b) for b in op.blocks[2:4]])
    assert rel_error(block.to_dense(), K[idx[:, None], idx[None, :]]) < RTOL_FLOAT64


class CountedPasses(list):
    """A list of batches that counts how often it is iterated."""

    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


@pytest.mark.parametrize("kind", ["KFAC", "EKFAC"])
@pytest.mark.parametrize(
    ("names", "joint"),
    [
        (["2.bias", "0.weight", "0.bias"], False),  # reordered, from the factors
        (["2.weight", "2.bias"], True),  # a whole joint block, from the factors
        (["0.weight"], True),  # half a joint block: rebuilt on the subset
    ],
)
def test_block_is_the_submatrix(kind, names, joint):
    model, loss_fn = mlp(), nn.CrossEntropyLoss()
    data = CountedPasses(make_data((5,), classes(3), 11, [4, 4, 3]))
    options = {"separate_weight_and_bias": not joint}
    op = getattr(cl, f"{kind}Operator")(model, loss_fn, data, **options)
    dense = op.to_dense()
    passes = data.passes
    offsets, start = {}, 0
    for name, shape in zip(op.param_names, op.param_shapes, strict=True):
        offsets[name] = torch.arange(start, start + math.prod(shape))
        start += math.prod(shape)
    idx = torch.cat([offsets[n] for n in names])
    block = op.block(names)
    assert block.param_names == names
    assert (data.passes > passes) == (names == ["0.weight"])
    sub = dense[idx[:, None], idx[None, :]]
    if kind == "EKFAC" and names == ["0.weight"]:
        # EKFAC's scales of half a joint block are not a submatrix: rebuilt
        rebuilt = cl.EKFACOperator(model, loss_fn, data, params=names, **options)
        sub = rebuilt.to_dense()
    assert rel_error(block.to_dense(), sub) < RTOL_FLOAT64
    damped = sub + 1e-2 * torch.eye(len(idx), dtype=F64)
    assert rel_error(block.logdet(1e-2), torch.linalg.slogdet(damped)[1]) < RTOL_FLOAT64


def test_inplace_activation_gives_same_factors():
    data = make_data((1, 6, 6), classes(3), 5, [3, 2])
    loss_fn = nn.CrossEntropyLoss()
    a = cl.KFACOperator(cnn(inplace=False), loss_fn, data).to_dense()
    b = cl.KFACOperator(cnn(inplace=True), loss_fn, data).to_dense()
    assert rel_error(a, b) < RTOL_FLOAT64


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_asymmetric_same_padding_equals_explicit_padding():
    torch.manual_seed(4)
    conv = nn.Conv2d(1, 2, 2, padding="same")
    padded = nn.Conv2d(1, 2, 2)
    padded.load_state_dict(conv.state_dict())
    tail = [nn.Tanh(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3)]
    same = nn.Sequential(conv, *tail).double()
    explicit = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), padded, *tail).double()
    data = make_data((1, 5, 5), classes(3), 4, [4])
    loss_fn = nn.CrossEntropyLoss()
    a = cl.KFACOperator(same, loss_fn, data).to_dense()
    b = cl.KFACOperator(explicit, loss_fn, data).to_dense()
    assert rel_error(a, b) < RTOL_FLOAT64


def test_mc_is_fixed_per_seed_and_converges():
    model, loss_fn = mlp(), nn.CrossEntropyLoss()
    data = make_data((5,), classes(3), 11, [4, 4, 3])
    exact = cl.KFACOperator(model, loss_fn, data).to_dense()

    def mc(m, seed):
        kfac = cl.KFACOperator(
            model, loss_fn, data, fisher_type="mc", mc_samples=m, seed=seed
        )
        return kfac.to_dense()

    assert torch.equal(mc(2, 0), mc(2, 0))
    assert not torch.equal(mc(2, 0), mc(2, 1))
    assert rel_error(mc(2000, 0), exact) < 0.1


# ------------------------------------------------------------------- EKFAC
@pytest.mark.parametrize("options", OPTIONS)
def test_ekfac_scales_are_ggn_diagonal_in_kronecker_basis(case, options):
    """Type-2 EKFAC = diag of the exact GGN block in the KFAC eigenbasis.

    For the CNN the per-example gradients are summed over the positions where
    a convolution is applied (curvlinops' convention), which is what makes the
    scales the GGN's diagonal in that basis.
    """
    op = cl.EKFACOperator(
        case.model, case.loss_fn, case.data, params=case.params, **options
    )
    truth = dense_ggn(case.model, case.loss_fn, case.data, param_names(case))
    for block, (QG, QA, s) in zip(op.blocks, op._eigen(), strict=True):
        Q = torch.kron(QG, QA)
        diag = torch.diagonal(Q.T @ ggn_block(op, truth, block) @ Q)
        assert rel_error(s.reshape(-1), diag) < RTOL_FLOAT64
    K = dense_ekfac(op)
    compare_matmat(op, K, RTOL_FLOAT64)
    assert rel_error(op.trace(), torch.trace(K)) < RTOL_FLOAT64
    assert rel_error(op.frobenius_norm(), K.norm()) < RTOL_FLOAT64
    damping = 1e-2
    Kd = K + damping * torch.eye(op.shape[0], dtype=F64)
    assert rel_error(op.logdet(damping), torch.linalg.slogdet(Kd)[1]) < RTOL_FLOAT64
    V = torch.randn(op.shape[0], 3, dtype=F64)
    assert rel_error(op.inverse(damping) @ V, torch.linalg.solve(Kd, V)) < 1e-10


def test_ekfac_empirical_scales_are_ef_diagonal():
    model, loss_fn = cnn(), nn.CrossEntropyLoss()
    data = make_data((1, 6, 6), classes(3), 5, [3, 2])
    op = cl.EKFACOperator(model, loss_fn, data, fisher_type="empirical")
    names = [n for n, _ in model.named_parameters()]
    truth = dense_empirical_fisher(model, loss_fn, data, names)
    for block, (QG, QA, s) in zip(op.blocks, op._eigen(), strict=True):
        Q = torch.kron(QG, QA)
        diag = torch.diagonal(Q.T @ ggn_block(op, truth, block) @ Q)
        assert rel_error(s.reshape(-1), diag) < RTOL_FLOAT64


def test_ekfac_reduce_uses_reduce_basis_and_full_per_example_gradient():
    model, loss_fn = cnn(), nn.CrossEntropyLoss()
    data = make_data((1, 6, 6), classes(3), 5, [3, 2])
    op = cl.EKFACOperator(model, loss_fn, data, kfac_approx="reduce")
    kfac = cl.KFACOperator(model, loss_fn, data, kfac_approx="reduce")
    names = [n for n, _ in model.named_parameters()]
    truth = dense_ggn(model, loss_fn, data, names)
    for block, kblock, (QG, QA, s) in zip(
        op.blocks, kfac.blocks, op._eigen(), strict=True
    ):
        assert rel_error(block.A, kblock.A) < RTOL_FLOAT64
        Q = torch.kron(QG, QA)
        diag = torch.diagonal(Q.T @ ggn_block(op, truth, block) @ Q)
        assert rel_error(s.reshape(-1), diag) < RTOL_FLOAT64


# --------------------------------------------------------------- curvlinops
def _peer_cases():
    """The shared cases, plus a CNN with enough data for unique reduce bases.

    With rank-deficient factors (reduce on few samples) the eigenbasis inside the
    null space is arbitrary and EKFAC's scales there depend on it; any basis is
    correct, so EKFAC is compared with curvlinops where the factors are regular.
    """
    data = make_data((1, 6, 6), classes(3), 24, [10, 10, 4], seed=5)
    extra = [("cnn_reduce_regular", cnn(), nn.CrossEntropyLoss(), data, None)]
    return [(c.name, c.model, c.loss_fn, c.data, c.params) for c in CASES] + extra


PEER_CASES = _peer_cases()


@pytest.mark.parametrize("fisher_type", ["type-2", "empirical", "forward-only"])
@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("peer_case", PEER_CASES, ids=[c[0] for c in PEER_CASES])
def test_matches_curvlinops(peer_case, options, kfac_approx, fisher_type):
    curvlinops = pytest.importorskip("curvlinops")
    name, model, loss_fn, data, params = peer_case
    named = dict(model.named_parameters())
    tensors = [named[n] for n in (params or named)]
    kwargs = {"fisher_type": fisher_type, "kfac_approx": kfac_approx, **options}
    V = torch.randn(sum(t.numel() for t in tensors), 3, dtype=F64)
    op = cl.KFACOperator(model, loss_fn, data, params=params, **kwargs)
    peer = curvlinops.KFACLinearOperator(model, loss_fn, tensors, data, **kwargs)
    assert rel_error(op @ V, peer @ V) < RTOL_FLOAT64
    assert rel_error(op.trace(), peer.trace) < RTOL_FLOAT64
    assert rel_error(op.frobenius_norm(), peer.frobenius_norm) < RTOL_FLOAT64
    regular = kfac_approx == "expand" or name == "cnn_reduce_regular"
    if fisher_type == "forward-only" or not regular:
        return
    op = cl.EKFACOperator(model, loss_fn, data, params=params, **kwargs)
    peer = curvlinops.EKFACLinearOperator(model, loss_fn, tensors, data, **kwargs)
    assert rel_error(op @ V, peer @ V) < RTOL_FLOAT64


@pytest.mark.parametrize("kind", ["KFAC", "EKFAC"])
def test_exact_inverse_matches_curvlinops(case, kind):
    curvlinops = pytest.importorskip("curvlinops")
    from curvlinops.inverse import KFACInverseLinearOperator

    named = dict(case.model.named_parameters())
    tensors = [named[n] for n in (case.params or named)]
    args = (case.model, case.loss_fn)
    op = getattr(cl, f"{kind}Operator")(*args, case.data, params=case.params)
    peer = getattr(curvlinops, f"{kind}LinearOperator")(
        *args, tensors, case.data, fisher_type="type-2"
    )
    peer_inverse = KFACInverseLinearOperator(peer, damping=1e-2, use_exact_damping=True)
    V = torch.randn(op.shape[0], 3, dtype=F64)
    assert rel_error(op.inverse(1e-2) @ V, peer_inverse @ V) < RTOL_FLOAT64


class ClassesSecond(nn.Module):
    """(B, T, C) logits to the (B, C, T) layout CrossEntropyLoss expects."""

    def forward(self, x):
        return x.transpose(1, 2)


def _sequence_problem(loss):
    torch.manual_seed(3)
    layers = [nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)]
    if loss == "mse":
        target, loss_fn = regression(6, 3), nn.MSELoss()
    elif loss == "bce":
        target, loss_fn = (
            lambda N, g: torch.randint(0, 2, (N, 6, 3), generator=g).double(),
            nn.BCEWithLogitsLoss(reduction="sum"),
        )
    else:
        layers.append(ClassesSecond())
        target = lambda N, g: torch.randint(0, 3, (N, 6), generator=g)  # noqa: E731
        loss_fn = nn.CrossEntropyLoss()
    model = nn.Sequential(*layers).double()
    return model, loss_fn, make_data((6, 4), target, 9, [5, 4])


@pytest.mark.parametrize("fisher_type", ["type-2", "empirical"])
@pytest.mark.parametrize("loss", ["mse", "bce", "ce"])
@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
def test_sequence_linear_matches_curvlinops(kfac_approx, loss, fisher_type):
    """Linear layers applied at every position of a sequence of length T = 6.

    The loss has T terms per sample; the type-2 factors backpropagate each output
    column for all positions at once (cross terms between positions included), as
    curvlinops does.
    """
    curvlinops = pytest.importorskip("curvlinops")
    model, loss_fn, data = _sequence_problem(loss)
    params = list(model.parameters())
    kwargs = {"kfac_approx": kfac_approx, "fisher_type": fisher_type}
    op = cl.KFACOperator(model, loss_fn, data, **kwargs)
    peer = curvlinops.KFACLinearOperator(model, loss_fn, params, data, **kwargs)
    V = torch.randn(op.shape[0], 2, dtype=F64)
    assert rel_error(op @ V, peer @ V) < RTOL_FLOAT64


# ----------------------------------------------------------------- bad input
CASE = CASES[0]


@pytest.fixture(scope="module")
def kfac():
    return cl.KFACOperator(CASE.model, CASE.loss_fn, CASE.data)


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), float("inf")])
def test_bad_damping(kfac, bad):
    for call in (kfac.logdet, kfac.det, kfac.inverse):
        with pytest.raises(
            ValueError, match=rf"damping must be a finite number >= 0. Got {bad}"
        ):
            call(bad)
    with pytest.raises(TypeError, match="damping must be a real number >= 0. Got str"):
        kfac.inverse("1e-3")


def test_cross_entropy_needs_damping(kfac):
    for call in (kfac.logdet, kfac.det, kfac.inverse):
        with pytest.raises(ValueError, match="softmax Hessian.*Got damping=0"):
            call(0.0)


def test_singular_mse_needs_damping():
    model = deep_linear()
    data = make_data((5,), regression(3), 2, [2])  # A has rank 2 < 5
    op = cl.KFACOperator(model, nn.MSELoss(), data)
    with pytest.raises(ValueError, match="singular to working precision"):
        op.logdet()


def test_bad_inverse_method(kfac):
    with pytest.raises(ValueError, match=r"method must be one of .*Got 'cg'"):
        kfac.inverse(1e-3, method="cg")
    ekfac = cl.EKFACOperator(CASE.model, CASE.loss_fn, CASE.data)
    with pytest.raises(ValueError, match="method='exact' only"):
        ekfac.inverse(1e-3, method="heuristic")


def test_wrong_input_shape_and_dtype(kfac):
    D = kfac.shape[0]
    with pytest.raises(ValueError, match=rf"shape \(D,\) or \(D, k\) with D={D}"):
        kfac @ torch.zeros(D + 1, dtype=F64)
    with pytest.raises(ValueError, match=r"dtype torch.float64. Got torch.float32"):
        kfac @ torch.zeros(D)
    inverse = kfac.inverse(1e-2)
    with pytest.raises(ValueError, match=r"Got \(3, 1\)"):
        inverse @ torch.zeros(3, 1, dtype=F64)
    with pytest.raises(ValueError, match=r"dtype torch.float64. Got torch.float32"):
        inverse @ [torch.zeros(s) for s in kfac.param_shapes]


def test_unsupported_layer_is_refused_by_name():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).double()
    with pytest.raises(
        NotImplementedError, match=r"'1.weight' belongs to a BatchNorm1d"
    ):
        cl.KFACOperator(model, CASE.loss_fn, CASE.data)
    # selecting only supported layers works
    cl.KFACOperator(model, CASE.loss_fn, CASE.data, params=["0.weight", "2.bias"])


def test_unsupported_conv_configuration():
    model = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten()).double()
    data = [(torch.randn(2, 2, 3, 3, dtype=F64), torch.randint(0, 2, (2,)))]
    with pytest.raises(NotImplementedError, match="groups=1. Layer '0' has groups=2"):
        cl.KFACOperator(model, nn.CrossEntropyLoss(), data)


def test_weight_tying_is_refused():
    torch.manual_seed(0)
    first, last = nn.Linear(3, 3), nn.Linear(3, 3)
    last.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), last).double()
    data = [(torch.randn(4, 3, dtype=F64), torch.randint(0, 3, (4,)))]
    with pytest.raises(ValueError, match=r"'0.weight' is shared .*weight tying"):
        cl.KFACOperator(model, nn.CrossEntropyLoss(), data)


def test_layer_called_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(torch.tanh(self.fc(x)))

    data = [(torch.randn(4, 3, dtype=F64), torch.randint(0, 3, (4,)))]
    with pytest.raises(ValueError, match="'fc' was called 2 times"):
        cl.KFACOperator(Twice().double(), nn.CrossEntropyLoss(), data)


def test_layer_not_called_as_module_is_refused():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return nn.functional.linear(x, self.fc.weight, self.fc.bias)

    data = [(torch.randn(4, 3, dtype=F64), torch.randint(0, 3, (4,)))]
    with pytest.raises(ValueError, match=r"\['fc'\] did not run as modules"):
        cl.KFACOperator(Functional().double(), nn.CrossEntropyLoss(), data)


def test_bad_options():
    args = (CASE.model, CASE.loss_fn, CASE.data)
    with pytest.raises(ValueError, match=r"fisher_type must be one of .*Got 'exact'"):
        cl.KFACOperator(*args, fisher_type="exact")
    with pytest.raises(ValueError, match=r"kfac_approx must be one of .*Got 'mean'"):
        cl.KFACOperator(*args, kfac_approx="mean")
    with pytest.raises(ValueError, match="mc_samples must be a positive int. Got 0"):
        cl.KFACOperator(*args, fisher_type="mc", mc_samples=0)
    with pytest.raises(ValueError, match="mc_samples applies to fisher_type='mc'"):
        cl.KFACOperator(*args, mc_samples=3)
    with pytest.raises(ValueError, match="forward-only' has none"):
        cl.EKFACOperator(*args, fisher_type="forward-only")
    with pytest.raises(NotImplementedError, match="support CrossEntropyLoss"):
        cl.KFACOperator(CASE.model, nn.L1Loss(), CASE.data)


def test_random_model_is_detected():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.Linear(4, 3)).double()
    model.train()
    with pytest.raises(cl.NonDeterministicError, match="random"):
        cl.KFACOperator(model, CASE.loss_fn, CASE.data, train_mode=True)
    cl.KFACOperator(model, CASE.loss_fn, CASE.data)  # eval mode by default


def test_ekfac_mc_scales_are_mc_fisher_diagonal():
    """MC EKFAC uses the labels of the MC Fisher with the same seed."""
    model, loss_fn = mlp(), nn.CrossEntropyLoss()
    data = make_data((5,), classes(3), 11, [4, 4, 3])
    kwargs = {"mc_samples": 3, "seed": 2}
    op = cl.EKFACOperator(model, loss_fn, data, fisher_type="mc", **kwargs)
    truth = cl.FisherOperator(model, loss_fn, data, **kwargs).to_dense()
    for block, (QG, QA, s) in zip(op.blocks, op._eigen(), strict=True):
        Q = torch.kron(QG, QA)
        diag = torch.diagonal(Q.T @ ggn_block(op, truth, block) @ Q)
        assert rel_error(s.reshape(-1), diag) < RTOL_FLOAT64


def test_float32_matches_float64():
    data = make_data((1, 6, 6), classes(3), 5, [3, 2])
    data32 = [(X.float(), y) for X, y in data]
    loss_fn = nn.CrossEntropyLoss()
    for cls in (cl.KFACOperator, cl.EKFACOperator):
        op64 = cls(cnn(), loss_fn, data)
        op32 = cls(cnn().float(), loss_fn, data32)
        assert op32.dtype == torch.float32
        V = torch.randn(op64.shape[0], 2, dtype=F64)
        assert rel_error((op32 @ V.float()).double(), op64 @ V) < 1e-4
        inv32 = op32.inverse(1e-2) @ V.float()
        assert rel_error(inv32.double(), op64.inverse(1e-2) @ V) < 1e-4


@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
def test_strided_dilated_conv_matches_curvlinops(kfac_approx):
    curvlinops = pytest.importorskip("curvlinops")
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=2, dilation=2),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3),
    ).double()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    data = make_data((2, 8, 8), classes(3), 30, [16, 14])
    kwargs = {"fisher_type": "type-2", "kfac_approx": kfac_approx}
    params = list(model.parameters())
    V = torch.randn(sum(p.numel() for p in params), 2, dtype=F64)
    for ours, theirs in [
        (cl.KFACOperator, curvlinops.KFACLinearOperator),
        (cl.EKFACOperator, curvlinops.EKFACLinearOperator),
    ]:
        op = ours(model, loss_fn, data, **kwargs)
        peer = theirs(model, loss_fn, params, data, **kwargs)
        assert rel_error(op @ V, peer @ V) < RTOL_FLOAT64


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fisher_type", ["type-2", "mc", "empirical"])
def test_cuda_equals_cpu(case, fisher_type):
    model = copy.deepcopy(case.model).cuda()
    data = [(X.cuda(), y.cuda()) for X, y in case.data]
    kwargs = {"params": case.params, "fisher_type": fisher_type}
    gpu = cl.KFACOperator(model, case.loss_fn, data, **kwargs)
    cpu = cl.KFACOperator(case.model, case.loss_fn, case.data, **kwargs)
    assert gpu.device.type == "cuda"
    V = torch.randn(cpu.shape[0], 3, dtype=F64)
    if fisher_type != "mc":  # MC labels come from the device's generator
        assert rel_error((gpu @ V.cuda()).cpu(), cpu @ V) < RTOL_FLOAT64
        inverse = gpu.inverse(1e-2) @ V.cuda()
        assert rel_error(inverse.cpu(), cpu.inverse(1e-2) @ V) < 1e-9
    else:
        assert torch.isfinite(gpu @ V.cuda()).all()

"""Blocks of an operator: default blocks and the block of an operator sum."""

from curvlab.operators import SumOperator
from curvlab.subspace.spectra import block_operator, default_blocks
from subspace.spectra._cases import close


def test_default_blocks_group_bias_with_weight(hessian):
    assert default_blocks(hessian) == {
        "0": ["0.weight", "0.bias"],
        "2": ["2.weight", "2.bias"],
    }
    assert default_blocks(hessian, biases=False) == {
        "0.weight": ["0.weight"],
        "2.weight": ["2.weight"],
    }
    assert default_blocks(hessian - hessian) == default_blocks(hessian)


def test_ggn_block_plus_residual_block_is_hessian_block(hessian, ggn):
    residual = hessian - ggn
    assert isinstance(residual, SumOperator)
    for names in (["0.weight", "0.bias"], ["2.weight"], ["2.bias", "0.bias"]):
        H = block_operator(hessian, names).to_dense()
        G = block_operator(ggn, names).to_dense()
        R = block_operator(residual, names)
        assert isinstance(R, SumOperator)
        close(G + R.to_dense(), H)

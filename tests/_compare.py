"""One comparison that every operator gets: all input formats against a dense matrix."""

from __future__ import annotations

import numpy
import torch


def rel_error(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def compare_matmat(op, dense: torch.Tensor, rtol: float, num_cols: int = 3):
    """Check vector, matrix, list inputs, to_dense, adjoint and the SciPy export."""
    D = dense.shape[0]
    assert op.shape == (D, D)
    g = torch.Generator().manual_seed(1)
    V = torch.randn(D, num_cols, generator=g, dtype=dense.dtype)
    v = V[:, 0]

    assert rel_error(op @ V, dense @ V) < rtol
    out_v = op @ v
    assert out_v.shape == (D,)
    assert rel_error(out_v, dense @ v) < rtol

    # parameter-shaped lists, with and without a column axis
    sizes = [int(torch.Size(s).numel()) for s in op.param_shapes]
    V_list = [
        c.reshape(*s, num_cols)
        for c, s in zip(V.split(sizes), op.param_shapes, strict=True)
    ]
    out_list = op @ V_list
    assert [o.shape for o in out_list] == [x.shape for x in V_list]
    flat = torch.cat([o.reshape(-1, num_cols) for o in out_list])
    assert rel_error(flat, dense @ V) < rtol
    v_list = [x[..., 0] for x in V_list]
    out_vlist = op @ v_list
    assert [o.shape for o in out_vlist] == [x.shape for x in v_list]

    assert rel_error(op.to_dense(), dense) < rtol
    assert rel_error(op.adjoint() @ V, dense.T @ V) < rtol

    sp = op.to_scipy()
    assert sp.dtype == numpy.float64
    Vn = V.numpy()
    assert rel_error(torch.from_numpy(sp @ Vn), dense @ V) < rtol
    assert rel_error(torch.from_numpy(sp.matvec(Vn[:, 0])), dense @ v) < rtol
    assert rel_error(torch.from_numpy(sp.rmatvec(Vn[:, 0])), dense.T @ v) < rtol

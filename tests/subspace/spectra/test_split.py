"""The Hessian split into its GGN and the residual, layer by layer."""

import torch

from curvlab.subspace.spectra import ggn_residual_split
from subspace.spectra._cases import close, dense_block


def test_split_spectra(hessian, ggn):
    split = ggn_residual_split(hessian, ggn, method="exact", top_k=2)
    H, G = hessian.to_dense(), ggn.to_dense()
    close(split.hessian.full.eigenvalues, torch.linalg.eigvalsh(H))
    close(split.ggn.full.eigenvalues, torch.linalg.eigvalsh(G))
    close(split.residual.full.eigenvalues, torch.linalg.eigvalsh(H - G))
    assert float(split.ggn.full.eigenvalues.min()) > -1e-12  # PSD
    names = ["2.weight", "2.bias"]
    want = torch.linalg.eigvalsh(
        dense_block(H, hessian, names) - dense_block(G, hessian, names)
    )
    close(split.residual.blocks["2"].eigenvalues, want)
    assert split.residual.blocks["2"].num_matvecs == 0  # from the dense H and G
    # the operator-algebra path (Lanczos on H - G) agrees
    lanczos = ggn_residual_split(
        hessian, ggn, {"2": names}, method="lanczos", top_k=2, tol=1e-12, full=False
    )
    close(
        lanczos.residual.blocks["2"].top_eigenvalues,
        split.residual.blocks["2"].top_eigenvalues,
        1e-8,
    )

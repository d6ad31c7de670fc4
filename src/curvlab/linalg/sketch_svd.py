r"""Single-pass sketched SVD of non-symmetric and rectangular operators.

Tropp, Yurtsever, Udell & Cevher (2019, §3-§4): for :math:`A \in
\mathbb{R}^{m \times n}`, independent test matrices :math:`\Psi \in
\mathbb{R}^{n \times s}`, :math:`\Phi \in \mathbb{R}^{m \times s}` (core) and
:math:`\Upsilon \in \mathbb{R}^{m \times k}` (co-range),

.. math::

    Y_{\mathrm{in}} = A \Psi, \quad Z = \Phi^\top Y_{\mathrm{in}}, \quad
    Q = \operatorname{orth}(Y_{\mathrm{in}}[:, :k]), \quad
    P = \operatorname{orth}(A^\top \Upsilon),

    C = (\Phi^\top Q)^{+} Z \big((\Psi^\top P)^{+}\big)^\top = U_C \Sigma V_C^\top,
    \quad A \approx (Q U_C)\, \Sigma\, (P V_C)^\top.

As in SEIGH, the range sketch recycles the first ``k`` core products, so the
cost is ``s`` products with :math:`A` and ``k`` with :math:`A^\top`. Exact when
:math:`\operatorname{rank} A \le k`.

**The adjoint.** Products with :math:`A^\top` come from, in this order:
``op.adjoint()`` (curvlab operators; a symmetric one returns itself),
``op.mT`` (tensors) or ``op.T`` (SciPy-style objects). An operator with none of
them is refused with a message saying so.
"""

from __future__ import annotations

import dataclasses

from curvlab.linalg.sketch import (
    LinearMap,
    SketchedSVD,
    _measure_all,
    sketch_plan,
    solve,
)

__all__ = ["sketched_svd"]


def sketched_svd(
    op,
    num_outer: int,
    num_inner: int | None = None,
    *,
    test_matrix: str = "ssrft",
    seed: int = 0,
    block_size: int | None = None,
) -> SketchedSVD:
    r"""Single-pass sketched SVD :math:`A \approx U \Sigma V^\top`.

    Equivalent to :func:`~curvlab.linalg.sketch_plan` with ``method="svd"``,
    :func:`~curvlab.linalg.measure` of all ``s`` right measurements and all ``k``
    adjoint ones (``adjoint=True``), and :func:`~curvlab.linalg.solve`.

    Args:
        op: ``(m, n)`` operator: a tensor, or an object with ``shape``, ``dtype``,
            ``device``, ``@`` and an adjoint (module docstring).
        num_outer: ``k``, the rank, ``1 <= k < min(m, n)``.
        num_inner: ``s``, core products, ``k <= s <= min(m, n)``; default
            ``min(2k, min(m, n))``.
        test_matrix: ``"ssrft"``, ``"gaussian"`` or ``"rademacher"``.
        seed: Non-negative seed.
        block_size: Products per call (default: all at once).

    Returns:
        ``U`` ``(m, k)``, ``S`` ``(k,)`` descending, ``V`` ``(n, k)``,
        ``num_matvecs = s + k`` and the plan.

    Raises:
        ValueError: If a size is out of range or ``op`` is not 2-D.
        TypeError: If ``op`` lacks ``shape``/``dtype``/``device``/``@`` or an
            adjoint.
        FloatingPointError: If a product is NaN or Inf.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> kw = dict(generator=g, dtype=torch.float64)
        >>> A = torch.randn(40, 3, **kw) @ torch.randn(3, 25, **kw)
        >>> result = sketched_svd(A, 4)
        >>> torch.allclose(result.to_dense(), A, atol=1e-10), result.num_matvecs
        (True, 12)
    """
    counted = LinearMap(op, what="op")
    plan = sketch_plan(
        counted, num_outer, num_inner, method="svd", test_matrix=test_matrix, seed=seed
    )
    right = _measure_all(counted, plan, block_size)
    left = _measure_all(counted, plan, block_size, adjoint=True)
    result = solve(plan, right, adjoint_measurements=left)
    return dataclasses.replace(result, num_matvecs=counted.num_matvecs)

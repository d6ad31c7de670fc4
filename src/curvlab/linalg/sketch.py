r"""Sketched low-rank decompositions: SEIGH, Nyström, and their two stages.

A sketch touches the operator :math:`A` only through products with random test
vectors, in one pass and in any order; a small dense problem then recovers a
low-rank approximation. This module splits every method into

1. a plan (:func:`sketch_plan`, a :class:`SketchPlan`): the shape, the number of
   measurements, the kind of test matrix, the seed, dtype and device, a dict of
   plain values (``to_dict``/``from_dict``) that any worker can rebuild;
2. measurements (:func:`measure`): products of :math:`A` with test columns that
   depend on ``(seed, index)`` alone, so blocks can be taken in any order, on any
   worker, and stored;
3. the solve (:func:`solve`): from the measurements to the decomposition.

:func:`sketched_eigh`, :func:`nystrom` and :func:`~curvlab.linalg.sketched_svd`
compose the three in memory.

**SEIGH** (Fernandez, Schneider, Mahsereci & Hennig 2025, Alg. 2; the symmetric
case of the single-pass approximation with a core sketch of Tropp, Yurtsever,
Udell & Cevher 2019, §3-§4). With
independent test matrices :math:`\Psi, \Phi \in \mathbb{R}^{D \times s}`
(``s = num_inner``) and ``k = num_outer <= s``:

.. math::

    Y_{\mathrm{in}} = A \Psi, \quad Z = \Phi^\top Y_{\mathrm{in}}
    \in \mathbb{R}^{s \times s}, \quad
    Y = Y_{\mathrm{in}}[:, :k], \quad Q = \operatorname{orth}(Y),

    C = (\Phi^\top Q)^{+}\, Z\, \big((\Psi^\top Q)^{+}\big)^\top, \quad
    \tfrac12 (C + C^\top) = U \Lambda U^\top, \quad
    A \approx (Q U) \Lambda (Q U)^\top.

The outer sketch :math:`Y` *recycles* the first ``k`` inner products, so the
cost is ``s`` products (paper: ``k_i`` HVPs, ``k_i ≈ 2 k_o``). Pairs are sorted
by descending :math:`|\lambda|`. The approximation is exact when
:math:`\operatorname{rank} A \le k`: then :math:`A = Q Q^\top A Q Q^\top` and the
two least-squares problems (full column rank with probability one) return
:math:`C = Q^\top A Q`.

**Nyström** for positive semi-definite :math:`A` (GGN, Fisher), the stable
shifted implementation of Tropp, Yurtsever, Udell & Cevher (2017b, Alg. 3): with
:math:`Y = A \Omega` (``k`` products, :math:`\Omega = Q_\Omega R_\Omega`),

.. math::

    Y' = Y R_\Omega^{-1} = A Q_\Omega, \quad
    \nu = \sqrt{D}\, \epsilon\, \|Y'\|_2, \quad Y_\nu = Y' + \nu Q_\Omega,

    L L^\top = Q_\Omega^\top Y_\nu, \quad E = Y_\nu L^{-\top} = U \Sigma V^\top,
    \quad A \approx U \max(\Sigma^2 - \nu I, 0) U^\top,

i.e. :math:`A \approx Y (\Omega^\top Y)^{+} Y^\top`, exact for
:math:`\operatorname{rank} A \le k` with ``k`` products: half of SEIGH's
``s = 2k``.

References:
    - Tropp, Yurtsever, Udell & Cevher (2019). Streaming low-rank matrix
      approximation with an application to scientific simulation. SIAM J. Sci.
      Comput. 41(4) (arXiv 1902.08651), §3-§4 and §6.
    - Tropp, Yurtsever, Udell & Cevher (2017b). Fixed-rank approximation of a
      positive-semidefinite matrix from streaming data. NeurIPS 2017, Alg. 3.
    - Fernandez, Schneider, Mahsereci & Hennig (2025). Connecting parameter
      magnitudes and Hessian eigenspaces at scale using sketched methods. TMLR
      (arXiv 2504.14701), Alg. 2 (SEIGH).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from curvlab._checks import check_int
from curvlab.linalg._operator import (
    CountedOperator,
    check_product_finite,
    check_product_shape,
)
from curvlab.linalg.ssrft import (
    TEST_MATRIX_KINDS,
    RandomTestMatrix,
    _as_indices,
    random_test_matrix,
)

__all__ = [
    "SketchPlan",
    "SketchedEigh",
    "SketchedSVD",
    "measure",
    "nystrom",
    "sketch_plan",
    "sketched_eigh",
    "solve",
]

#: Sketch methods a :class:`SketchPlan` describes.
METHODS = ("eigh", "nystrom", "svd")

# Stream numbers ("roles") of the test matrices of one sketch.
_RIGHT, _LEFT_INNER, _LEFT_OUTER = 0, 1, 2


# -------------------------------------------------------------------- operators
class LinearMap:
    """A (possibly rectangular) linear map that counts products and checks them.

    The square, symmetric case is :class:`~curvlab.linalg._operator.CountedOperator`;
    this adds rectangular operators and their adjoints for the sketched SVD.
    The adjoint is found, in this order, as ``op.adjoint()`` (curvlab operators,
    lineax/linear_operator style), ``op.mT`` (tensors) or ``op.T`` (SciPy style).

    Attributes:
        op: The wrapped operator.
        shape: ``(m, n)``.
        dtype: Dtype of products.
        device: Device of products.
        num_matvecs: Columns multiplied so far, by ``op`` or its adjoint.
    """

    def __init__(self, op, *, what: str = "op"):
        """Wrap and check an operator.

        Args:
            op: A 2-D tensor or an object with ``shape``, ``dtype``, ``device`` and
                ``@`` on ``(n, k)`` tensors.
            what: Name in messages.

        Raises:
            TypeError: If ``op`` lacks ``shape``/``dtype``/``device``/``@`` or its
                dtype is not floating.
            ValueError: If ``op`` is not 2-D.
        """
        missing = [a for a in ("shape", "dtype", "device") if not hasattr(op, a)]
        if missing or not hasattr(op, "__matmul__"):
            raise TypeError(
                f"{what} must have shape, dtype, device and support `{what} @ X`. "
                f"Got {type(op).__name__} missing {missing or ['__matmul__']}."
            )
        shape = tuple(op.shape)
        if len(shape) != 2:
            raise ValueError(f"{what} must be a matrix (m, n). Got shape {shape}.")
        if not op.dtype.is_floating_point:
            raise TypeError(f"{what} must have a floating dtype. Got {op.dtype}.")
        self.op, self.shape = op, (int(shape[0]), int(shape[1]))
        self.dtype, self.device = op.dtype, torch.device(op.device)
        self.num_matvecs = 0
        self._what = what
        self._adjoint = None

    def _adjoint_op(self):
        if self._adjoint is None:
            op = self.op
            if callable(getattr(op, "adjoint", None)):
                self._adjoint = op.adjoint()
            elif isinstance(op, Tensor):
                self._adjoint = op.mT
            elif hasattr(op, "T"):
                self._adjoint = op.T
            else:
                raise TypeError(
                    f"The sketched SVD needs products with the adjoint of {self._what}"
                    f": give it an `adjoint()` method, or a `.mT`/`.T` attribute "
                    f"supporting `@`. {type(op).__name__} has none."
                )
        return self._adjoint

    def apply(self, X: Tensor, step: str = "", *, adjoint: bool = False) -> Tensor:
        """Return ``op @ X`` (or ``op^T @ X``), counting columns and checking values.

        Args:
            X: ``(n, k)`` (adjoint: ``(m, k)``) on the operator's dtype and device.
            step: Where in the algorithm the product happens (for messages).
            adjoint: Multiply with the adjoint.

        Returns:
            ``(m, k)`` (adjoint: ``(n, k)``).

        Raises:
            ValueError: If the product has the wrong shape.
            FloatingPointError: If it contains NaN or Inf.
        """
        op = self._adjoint_op() if adjoint else self.op
        rows = self.shape[1] if adjoint else self.shape[0]
        name = f"{self._what}^T" if adjoint else self._what
        shape = (rows, X.shape[1])
        Y = check_product_shape(op @ X, shape, name, f"of shape {shape}")
        self.num_matvecs += X.shape[1]
        return check_product_finite(Y, name, step, self.num_matvecs)


# ------------------------------------------------------------------------- plan
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class SketchPlan:
    """Everything that defines a sketch, as plain values.

    Two workers with equal plans produce bit-identical test columns (Gaussian and
    Rademacher on every device; SSRFT on the same device type), so measurements
    taken anywhere can be solved together. Build plans with :func:`sketch_plan`,
    which validates them.

    Attributes:
        method: ``"eigh"`` (SEIGH), ``"nystrom"`` or ``"svd"``.
        shape: ``(m, n)`` of the operator (``m == n`` except for ``"svd"``).
        num_outer: ``k``, the rank of the approximation.
        num_inner: ``s``, the number of inner (core) measurements; for
            ``"nystrom"`` equal to ``k``.
        test_matrix: ``"ssrft"``, ``"gaussian"`` or ``"rademacher"``.
        seed: The seed.
        dtype: Name of the torch dtype, e.g. ``"float64"``.
        device: Name of the device the solve runs on, e.g. ``"cpu"``.
    """

    method: str
    shape: tuple[int, int]
    num_outer: int
    num_inner: int
    test_matrix: str
    seed: int
    dtype: str
    device: str

    # ---------------------------------------------------------- plain values
    def to_dict(self) -> dict[str, Any]:
        """Return the plan as a dict of str/int/list values (JSON, HDF5 attributes).

        Returns:
            The dict; :meth:`from_dict` inverts it.
        """
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SketchPlan:
        """Rebuild and validate a plan from :meth:`to_dict`'s output.

        Args:
            values: The dict.

        Returns:
            The plan.

        Raises:
            ValueError: If keys are missing or unknown, or a value is invalid.
            TypeError: If a value has the wrong type.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        if set(values) != names:
            raise ValueError(
                f"A sketch plan has the keys {sorted(names)}. Got {sorted(values)}."
            )
        shape = tuple(int(s) for s in values["shape"])
        plan = cls(**{**values, "shape": shape})
        _validate(plan)
        return plan

    # ------------------------------------------------------------ properties
    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype as a ``torch.dtype``."""
        return getattr(torch, self.dtype)

    @property
    def torch_device(self) -> torch.device:
        """The device as a ``torch.device``."""
        return torch.device(self.device)

    @property
    def num_matvecs(self) -> int:
        """Products the sketch takes: ``s`` (``"svd"``: ``s + k`` with the adjoint)."""
        return self.num_inner + (self.num_outer if self.method == "svd" else 0)

    @property
    def num_adjoint(self) -> int:
        """Products with the adjoint: ``k`` for ``"svd"``, else 0."""
        return self.num_outer if self.method == "svd" else 0

    # --------------------------------------------------------- test matrices
    def _matrix(self, role: int, dim: int, cols: int) -> RandomTestMatrix:
        return random_test_matrix(
            self.test_matrix,
            dim,
            cols,
            seed=self.seed,
            role=role,
            dtype=self.torch_dtype,
            device=self.torch_device,
        )

    @cached_property
    def right(self) -> RandomTestMatrix:
        r"""The right test matrix :math:`\Psi` (``n x s``) of the measurements."""
        return self._matrix(_RIGHT, self.shape[1], self.num_inner)

    @cached_property
    def left_inner(self) -> RandomTestMatrix:
        r"""The left core test matrix :math:`\Phi` (``m x s``); not for Nyström."""
        if self.method == "nystrom":
            raise ValueError("A Nyström sketch has no left test matrix.")
        return self._matrix(_LEFT_INNER, self.shape[0], self.num_inner)

    @cached_property
    def left_outer(self) -> RandomTestMatrix:
        r"""The co-range test matrix :math:`\Upsilon` (``m x k``), ``"svd"`` only."""
        if self.method != "svd":
            raise ValueError(
                f"Only an 'svd' sketch has adjoint measurements. Got {self.method!r}."
            )
        return self._matrix(_LEFT_OUTER, self.shape[0], self.num_outer)

    def test_columns(
        self, indices: Iterable[int] | Tensor, *, adjoint: bool = False
    ) -> Tensor:
        r"""Return the test columns of measurements ``indices``.

        Column ``i`` depends only on ``(seed, i)`` (and the plan's kind, role and
        size), never on which other columns are drawn or in which order.

        Args:
            indices: Measurement indices in ``[0, s)`` (``adjoint``: ``[0, k)``).
            adjoint: The co-range columns :math:`\upsilon_i` of an ``"svd"`` plan,
                which multiply :math:`A^\top`.

        Returns:
            ``(n, b)`` (adjoint: ``(m, b)``) on the plan's dtype and device.

        Raises:
            ValueError: If an index is out of range, or ``adjoint`` is asked of a
                plan that is not ``"svd"``.
        """
        matrix = self.left_outer if adjoint else self.right
        return matrix.columns(indices)

    def inner_sketch(self, measurements: Tensor) -> Tensor:
        r"""Compress right measurements into core columns :math:`\Phi^\top Y`.

        For out-of-core use: keep only measurements ``0..k-1`` in full and these
        ``(s, b)`` columns of every block (memory ``O(Dk + s^2)``), then pass them
        to :func:`solve` as ``inner``.

        Args:
            measurements: ``(m, b)`` right measurements, any block.

        Returns:
            ``(s, b)``, the columns of :math:`Z` with the same indices.

        Raises:
            ValueError: For a Nyström plan or a wrongly shaped block.
        """
        return self.left_inner.transpose_matmul(measurements)


def _validate(plan: SketchPlan):
    if plan.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Got {plan.method!r}.")
    if plan.test_matrix not in TEST_MATRIX_KINDS:
        raise ValueError(
            f"test_matrix must be one of {TEST_MATRIX_KINDS}. Got {plan.test_matrix!r}."
        )
    m, n = plan.shape
    if m < 1 or n < 1:
        raise ValueError(f"shape must be positive. Got {plan.shape}.")
    if plan.method != "svd" and m != n:
        raise ValueError(
            f"method {plan.method!r} needs a square operator (D, D). Got shape "
            f"{plan.shape}; use sketched_svd for rectangular operators."
        )
    small = min(m, n)
    check_int("num_outer", plan.num_outer, 1, small - 1, f" (below min(shape)={small})")
    if plan.method == "nystrom":
        if plan.num_inner != plan.num_outer:
            raise ValueError(
                "A Nyström sketch has no inner measurements: num_inner must equal "
                f"num_outer={plan.num_outer}. Got {plan.num_inner}."
            )
    else:
        check_int(
            "num_inner",
            plan.num_inner,
            plan.num_outer,
            small,
            f" (at least num_outer={plan.num_outer}, at most min(shape)={small})",
        )
    check_int("seed", plan.seed, 0)
    dtype = getattr(torch, str(plan.dtype), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"dtype must name a real floating torch dtype. Got {plan.dtype!r}."
        )
    torch.device(plan.device)  # raises on a malformed device string


def _declares_not_psd(op) -> bool:
    raw = op.op if isinstance(op, CountedOperator | LinearMap) else op
    return getattr(raw, "is_psd", None) is False


def sketch_plan(
    op,
    num_outer: int,
    num_inner: int | None = None,
    *,
    method: str = "eigh",
    test_matrix: str = "ssrft",
    seed: int = 0,
) -> SketchPlan:
    """Plan a sketch of ``op``: validate the settings, read shape, dtype and device.

    Args:
        op: The operator (a tensor or an object with ``shape``, ``dtype``,
            ``device``), or a ``(shape, dtype, device)`` triple for planning
            without it.
        num_outer: ``k``, the rank of the approximation, ``1 <= k < min(m, n)``.
        num_inner: ``s``, the core measurements, ``k <= s <= min(m, n)``;
            ``None`` means ``min(2k, min(m, n))``. Nyström takes none (``s = k``).
        method: ``"eigh"``, ``"nystrom"`` or ``"svd"``.
        test_matrix: ``"ssrft"``, ``"gaussian"`` or ``"rademacher"``.
        seed: Non-negative seed.

    Returns:
        The plan.

    Raises:
        ValueError: If a setting is out of range, the shape does not suit the
            method, or a Nyström plan is asked for an operator that declares
            ``is_psd=False``.
        TypeError: If a count or the seed is not an int, or ``op`` has no shape,
            dtype and device.

    Example:
        >>> plan = sketch_plan(torch.eye(10, dtype=torch.float64), 3, seed=7)
        >>> plan.num_inner, SketchPlan.from_dict(plan.to_dict()) == plan
        (6, True)
    """
    if isinstance(op, tuple) and len(op) == 3:
        shape, dtype, device = op
    elif all(hasattr(op, a) for a in ("shape", "dtype", "device")):
        shape, dtype, device = op.shape, op.dtype, op.device
    else:
        raise TypeError(
            "op must have shape, dtype and device (or be a (shape, dtype, device) "
            f"triple). Got {type(op).__name__}."
        )
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"op must be a matrix (m, n). Got shape {shape}.")
    if method == "nystrom":
        if num_inner is not None and num_inner != num_outer:
            raise ValueError(
                "A Nyström sketch has no inner measurements: leave num_inner=None. "
                f"Got num_inner={num_inner} with num_outer={num_outer}."
            )
        if _declares_not_psd(op):
            raise ValueError(
                "nystrom needs a positive semi-definite operator (GGN, Fisher), but "
                "op declares is_psd=False. Use sketched_eigh for indefinite "
                "operators such as the Hessian."
            )
        num_inner = num_outer
    elif num_inner is None and isinstance(num_outer, int):
        num_inner = min(2 * num_outer, min(shape))
    plan = SketchPlan(  # the fields in their order
        method, shape, num_outer, num_inner, test_matrix, seed, _dtype_name(dtype),
        str(torch.device(device)),
    )  # fmt: skip
    _validate(plan)
    return plan


# -------------------------------------------------------------------- measuring
def _as_map(op, plan: SketchPlan):
    if plan.method == "svd":
        return op if isinstance(op, LinearMap) else LinearMap(op)
    return (
        op if isinstance(op, CountedOperator) else CountedOperator(op, symmetric=True)
    )


def _apply(op, X: Tensor, step: str, *, adjoint: bool = False) -> Tensor:
    if isinstance(op, LinearMap):
        return op.apply(X, step, adjoint=adjoint)
    return op.apply(X, step=step)


def measure(
    op, plan: SketchPlan, indices: Iterable[int] | Tensor, *, adjoint: bool = False
) -> Tensor:
    r"""Take measurements ``indices`` of a sketch: ``op @ test_columns(indices)``.

    Measurement ``i`` depends only on the operator and ``(plan, i)``: blocks can
    be taken in any order and sizes, on different workers, and stacked by index
    for :func:`solve`.

    Args:
        op: The operator of the plan's shape and dtype (any device: the test
            columns are moved to it). Square methods need a symmetric operator.
        plan: The plan.
        indices: Measurement indices in ``[0, s)`` (``adjoint``: ``[0, k)``).
        adjoint: Take the co-range measurements :math:`A^\top \upsilon_i` of an
            ``"svd"`` plan.

    Returns:
        ``(m, b)`` (adjoint: ``(n, b)``) on the operator's device.

    Raises:
        ValueError: If the operator's shape or dtype does not match the plan, an
            index is out of range, or ``adjoint`` is asked of a non-SVD plan.
        FloatingPointError: If a product is not finite.

    Example:
        >>> A = torch.diag(torch.arange(1.0, 9.0, dtype=torch.float64))
        >>> plan = sketch_plan(A, 2)
        >>> Y = measure(A, plan, [3, 0])
        >>> torch.allclose(Y, A @ plan.test_columns([3, 0]))
        True
    """
    op = _as_map(op, plan)
    if tuple(op.shape) != plan.shape:
        raise ValueError(
            f"The operator has shape {tuple(op.shape)}, the plan {plan.shape}."
        )
    if op.dtype != plan.torch_dtype:
        raise ValueError(f"The operator has dtype {op.dtype}, the plan {plan.dtype}.")
    count = plan.num_outer if adjoint else plan.num_inner
    idx = _as_indices(indices, count)
    cols = plan.test_columns(idx, adjoint=adjoint).to(op.device)
    what = "adjoint measurements" if adjoint else "measurements"
    span = f"{int(idx.min())}..{int(idx.max())}" if idx.numel() else "none"
    return _apply(op, cols, f"{plan.method} {what} {span}", adjoint=adjoint)


def _measure_all(op, plan: SketchPlan, block_size: int | None, *, adjoint=False):
    count = plan.num_outer if adjoint else plan.num_inner
    rows = plan.shape[1] if adjoint else plan.shape[0]
    if block_size is None:
        return measure(op, plan, range(count), adjoint=adjoint)
    check_int("block_size", block_size, 1)
    out = torch.empty(rows, count, dtype=plan.torch_dtype, device=op.device)
    for start in range(0, count, block_size):
        stop = min(start + block_size, count)
        out[:, start:stop] = measure(op, plan, range(start, stop), adjoint=adjoint)
    return out


# ----------------------------------------------------------------------- results
def _plan_field(name: str, doc: str) -> property:
    """A read-only property that returns ``self.plan.<name>``."""
    return property(lambda self: getattr(self.plan, name), doc=doc)


@dataclass(frozen=True)
class SketchedEigh:
    r"""A sketched eigendecomposition :math:`A \approx W \Lambda W^\top`.

    Attributes:
        eigenvalues: ``(k,)``, by descending magnitude.
        eigenvectors: ``(D, k)`` orthonormal columns.
        num_matvecs: Products with the operator (one column = one product).
        plan: The sketch settings (method, sizes, test matrix, seed, ...).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    num_matvecs: int
    plan: SketchPlan

    num_outer = _plan_field("num_outer", "``k``.")
    num_inner = _plan_field("num_inner", "``s``.")
    test_matrix = _plan_field("test_matrix", "Kind of test matrix.")
    seed = _plan_field("seed", "The seed.")
    shape = _plan_field("shape", "``(D, D)``.")

    def __matmul__(self, X: Tensor) -> Tensor:
        r"""Apply the approximation :math:`W \Lambda W^\top` to ``(D,)``/``(D, m)``."""
        W = self.eigenvectors
        return W @ (self.eigenvalues.reshape(-1, *([1] * (X.ndim - 1))) * (W.mT @ X))

    def truncate(self, rank: int) -> SketchedEigh:
        """Keep the ``rank`` pairs of largest magnitude.

        Args:
            rank: ``1 <= rank <= k``.

        Returns:
            The truncated decomposition (same plan and product count).

        Raises:
            ValueError: If ``rank`` is out of range.
        """
        check_int("rank", rank, 1, len(self.eigenvalues))
        return dataclasses.replace(
            self,
            eigenvalues=self.eigenvalues[:rank],
            eigenvectors=self.eigenvectors[:, :rank],
        )

    def to_dense(self) -> Tensor:
        """Return the ``(D, D)`` approximation (small ``D``)."""
        W = self.eigenvectors
        return (W * self.eigenvalues) @ W.mT


@dataclass(frozen=True)
class SketchedSVD:
    r"""A sketched SVD :math:`A \approx U \operatorname{diag}(\sigma) V^\top`.

    Attributes:
        U: ``(m, k)`` orthonormal left singular vectors.
        S: ``(k,)`` singular values, descending.
        V: ``(n, k)`` orthonormal right singular vectors.
        num_matvecs: Products with the operator and its adjoint.
        plan: The sketch settings.
    """

    U: Tensor
    S: Tensor
    V: Tensor
    num_matvecs: int
    plan: SketchPlan

    shape = _plan_field("shape", "``(m, n)``.")

    def __matmul__(self, X: Tensor) -> Tensor:
        r"""Apply :math:`U \Sigma V^\top` to ``(n,)``/``(n, p)``."""
        return self.U @ (self.S.reshape(-1, *([1] * (X.ndim - 1))) * (self.V.mT @ X))

    def truncate(self, rank: int) -> SketchedSVD:
        """Keep the ``rank`` largest singular triplets.

        Args:
            rank: ``1 <= rank <= k``.

        Returns:
            The truncated decomposition.

        Raises:
            ValueError: If ``rank`` is out of range.
        """
        check_int("rank", rank, 1, len(self.S))
        return dataclasses.replace(
            self, U=self.U[:, :rank], S=self.S[:rank], V=self.V[:, :rank]
        )

    def to_dense(self) -> Tensor:
        """Return the ``(m, n)`` approximation (small sizes)."""
        return (self.U * self.S) @ self.V.mT


# ---------------------------------------------------------------------- solving
def _lstsq(A: Tensor, B: Tensor) -> Tensor:
    """``A^+ B`` for a tall ``A`` of full column rank, by QR (any device)."""
    Qa, Ra = torch.linalg.qr(A)
    return torch.linalg.solve_triangular(Ra, Qa.mT @ B, upper=True)


def _orth(Y: Tensor) -> Tensor:
    return torch.linalg.qr(Y).Q


def _core(plan: SketchPlan, Q: Tensor, P: Tensor, Z: Tensor) -> Tensor:
    r""":math:`C = (\Phi^\top Q)^+ Z ((\Psi^\top P)^+)^\top` (TYUC2019 §4.2)."""
    C = _lstsq(plan.left_inner.transpose_matmul(Q), Z)
    return _lstsq(plan.right.transpose_matmul(P), C.mT).mT


def _by_magnitude(values: Tensor, vectors: Tensor) -> tuple[Tensor, Tensor]:
    order = torch.argsort(values.abs(), descending=True, stable=True)
    return values[order], vectors[:, order]


def _solve_eigh(plan: SketchPlan, Y: Tensor, Z: Tensor) -> tuple[Tensor, Tensor]:
    Q = _orth(Y)
    C = _core(plan, Q, Q, Z)
    values, U = torch.linalg.eigh((C + C.mT) / 2)
    values, U = _by_magnitude(values, U)
    return values, Q @ U


def _solve_nystrom(plan: SketchPlan, Y: Tensor) -> tuple[Tensor, Tensor]:
    Qo, Ro = torch.linalg.qr(plan.right.to_dense().to(Y))
    Y = torch.linalg.solve_triangular(Ro, Y, upper=True, left=False)  # A Q_Omega
    shift = math.sqrt(plan.shape[0]) * torch.finfo(Y.dtype).eps
    shift = shift * float(torch.linalg.matrix_norm(Y, ord=2))
    Y = Y + shift * Qo
    B = Qo.mT @ Y
    L, info = torch.linalg.cholesky_ex((B + B.mT) / 2)
    if int(info) != 0:
        raise ValueError(
            "The Nyström core Omega^T A Omega is not positive definite: the "
            "operator is not positive semi-definite. Use sketched_eigh for "
            "indefinite operators."
        )
    E = torch.linalg.solve_triangular(L.mT, Y, upper=True, left=False)
    U, sigma, _ = torch.linalg.svd(E, full_matrices=False)
    return (sigma**2 - shift).clamp(min=0), U


def _solve_svd(plan: SketchPlan, Y: Tensor, X: Tensor, Z: Tensor):
    Q, P = _orth(Y), _orth(X)
    Uc, S, Vch = torch.linalg.svd(_core(plan, Q, P, Z))
    return Q @ Uc, S, P @ Vch.mT


def _check_block(
    name: str, T, rows: int, cols: int, plan: SketchPlan, *, at_least=False
):
    if not isinstance(T, Tensor) or T.ndim != 2:
        got = tuple(T.shape) if isinstance(T, Tensor) else type(T).__name__
        raise ValueError(f"{name} must be a matrix ({rows}, {cols}). Got {got}.")
    ok = T.shape[0] == rows and (T.shape[1] >= cols if at_least else T.shape[1] == cols)
    if not ok:
        want = f"({rows}, >= {cols})" if at_least else f"({rows}, {cols})"
        raise ValueError(f"{name} must have shape {want}. Got {tuple(T.shape)}.")
    if T.dtype != plan.torch_dtype:
        raise ValueError(f"{name} must have dtype {plan.dtype}. Got {T.dtype}.")
    return T.to(plan.torch_device)


def solve(
    plan: SketchPlan,
    measurements: Tensor,
    *,
    adjoint_measurements: Tensor | None = None,
    inner: Tensor | None = None,
) -> SketchedEigh | SketchedSVD:
    r"""Recover the decomposition from the measurements of a sketch.

    Args:
        plan: The plan the measurements were taken with.
        measurements: Right measurements stacked by index: ``(m, s)`` (all), or at
            least the first ``k`` columns when ``inner`` is given; Nyström:
            ``(D, k)``.
        adjoint_measurements: ``"svd"`` only: ``(n, k)`` co-range measurements.
        inner: ``(s, s)`` core sketch :math:`Z = \Phi^\top A \Psi`, stacked from
            :meth:`SketchPlan.inner_sketch` of all blocks (default: computed from
            ``measurements``).

    Returns:
        :class:`SketchedEigh` for ``"eigh"``/``"nystrom"``, :class:`SketchedSVD`
        for ``"svd"``, with ``num_matvecs = plan.num_matvecs``.

    Raises:
        ValueError: If a shape or dtype does not match the plan, an argument is
            given that the method does not use, or (Nyström) the core is not
            positive definite.

    Example:
        >>> from curvlab.linalg import synthetic
        >>> A, _ = synthetic.low_rank(30, 3, seed=1)
        >>> plan = sketch_plan(A, 4)
        >>> result = solve(plan, measure(A, plan, range(plan.num_inner)))
        >>> torch.allclose(result.to_dense(), A, atol=1e-10)
        True
    """
    m, n = plan.shape
    k, s = plan.num_outer, plan.num_inner
    if plan.method != "svd" and adjoint_measurements is not None:
        raise ValueError(f"Method {plan.method!r} takes no adjoint_measurements.")
    if plan.method == "nystrom":
        if inner is not None:
            raise ValueError("A Nyström sketch takes no inner sketch.")
        Y = _check_block("measurements", measurements, m, k, plan)
        values, vectors = _solve_nystrom(plan, Y)
        return SketchedEigh(values, vectors, plan.num_matvecs, plan)
    if inner is None:
        Y = _check_block("measurements", measurements, m, s, plan)
        Z = plan.inner_sketch(Y)
    else:
        Y = _check_block("measurements", measurements, m, k, plan, at_least=True)
        Z = _check_block("inner", inner, s, s, plan)
    Y = Y[:, :k]
    if plan.method == "eigh":
        values, vectors = _solve_eigh(plan, Y, Z)
        return SketchedEigh(values, vectors, plan.num_matvecs, plan)
    if adjoint_measurements is None:
        raise ValueError(
            f"An 'svd' sketch needs adjoint_measurements of shape ({n}, {k})."
        )
    X = _check_block("adjoint_measurements", adjoint_measurements, n, k, plan)
    U, S, V = _solve_svd(plan, Y, X, Z)
    return SketchedSVD(U, S, V, plan.num_matvecs, plan)


# -------------------------------------------------------------------- in memory
def sketched_eigh(
    op,
    num_outer: int,
    num_inner: int | None = None,
    *,
    test_matrix: str = "ssrft",
    seed: int = 0,
    block_size: int | None = None,
) -> SketchedEigh:
    r"""Sketched eigendecomposition (SEIGH) of a symmetric operator.

    Takes ``num_inner`` products :math:`A\psi_i` (the first ``num_outer`` of them
    recycled as the range sketch) and solves the core problem in the module
    docstring: :math:`A \approx W \operatorname{diag}(\lambda) W^\top` with
    ``num_outer`` pairs sorted by descending :math:`|\lambda|` (Fernandez et al.
    2025, Alg. 2; Tropp et al. 2019). Equivalent to :func:`sketch_plan`,
    :func:`measure` over all indices, and :func:`solve`. Memory: the ``(D, s)``
    measurements and one block of test columns; for less, measure in blocks and
    keep :meth:`SketchPlan.inner_sketch` of each.

    Args:
        op: Symmetric operator (``(D, D)`` tensor, curvature operator, or any
            object with ``shape``, ``dtype``, ``device`` and ``@``).
        num_outer: ``k``, the number of eigenpairs, ``1 <= k < D``.
        num_inner: ``s``, the products taken, ``k <= s <= D``; default
            ``min(2k, D)`` (the paper's ``k_i ≈ 2 k_o``).
        test_matrix: ``"ssrft"`` (default), ``"gaussian"`` or ``"rademacher"``.
        seed: Non-negative seed of the test matrices.
        block_size: Products per call to ``op`` (default: all at once; curvature
            operators chunk columns by their own ``max_cols`` as well).

    Returns:
        The eigenvalues, eigenvectors, ``num_matvecs = s`` and the plan.

    Raises:
        ValueError: If a size is out of range, or ``op`` is not square or declares
            ``is_symmetric=False``.
        TypeError: If ``op`` lacks ``shape``/``dtype``/``device``/``@``.
        FloatingPointError: If a product is NaN or Inf (names the measurement).

    Example:
        >>> from curvlab.linalg import synthetic
        >>> A, lam = synthetic.low_rank(50, 4, seed=0)
        >>> result = sketched_eigh(A, 6, 12)
        >>> torch.allclose(result.eigenvalues[:4], lam[:4]), result.num_matvecs
        (True, 12)
    """
    counted = CountedOperator(op, symmetric=True, what="op")
    plan = sketch_plan(
        counted, num_outer, num_inner, method="eigh", test_matrix=test_matrix, seed=seed
    )
    result = solve(plan, _measure_all(counted, plan, block_size))
    return dataclasses.replace(result, num_matvecs=counted.num_matvecs)


def nystrom(
    op,
    num_measurements: int,
    *,
    test_matrix: str = "ssrft",
    seed: int = 0,
    block_size: int | None = None,
) -> SketchedEigh:
    r"""Nyström approximation of a positive semi-definite operator (GGN, Fisher).

    :math:`A \approx A\Omega (\Omega^\top A \Omega)^{+} \Omega^\top A` from
    ``k = num_measurements`` products, with the shift of Tropp et al. (2017b,
    Alg. 3) for stability (module docstring). Exact for :math:`\operatorname{rank}
    A \le k`, with half the products of :func:`sketched_eigh` at the same rank
    (``s = 2k``); wrong for indefinite operators.

    Args:
        op: Symmetric PSD operator. One that declares ``is_psd=False`` (a Hessian)
            is refused; a plain tensor is trusted.
        num_measurements: ``k``, products and rank, ``1 <= k < D``.
        test_matrix: ``"ssrft"``, ``"gaussian"`` or ``"rademacher"``.
        seed: Non-negative seed.
        block_size: Products per call to ``op`` (default: all at once).

    Returns:
        Eigenvalues (non-negative, descending), eigenvectors, ``num_matvecs = k``
        and the plan (``method="nystrom"``).

    Raises:
        ValueError: If a size is out of range, ``op`` is not square, not
            symmetric, declares ``is_psd=False``, or its core turns out not
            positive definite.
        TypeError: If ``op`` lacks ``shape``/``dtype``/``device``/``@``.
        FloatingPointError: If a product is NaN or Inf.

    Example:
        >>> from curvlab.linalg import synthetic
        >>> A, lam = synthetic.low_rank(50, 4, seed=0)
        >>> result = nystrom(A, 4)
        >>> torch.allclose(result.to_dense(), A, atol=1e-10), result.num_matvecs
        (True, 4)
    """
    counted = CountedOperator(op, symmetric=True, what="op")
    plan = sketch_plan(
        counted, num_measurements, method="nystrom", test_matrix=test_matrix, seed=seed
    )
    result = solve(plan, _measure_all(counted, plan, block_size))
    return dataclasses.replace(result, num_matvecs=counted.num_matvecs)

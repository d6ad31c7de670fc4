r"""The Jacobian of a model's outputs over a data set, and its transpose.

For ``N`` samples with outputs :math:`f_n \in \mathbb R^{C}` (``C`` the number of
entries of one sample's output) the data-set Jacobian stacks the per-sample
Jacobians :math:`J_n = \partial f_n / \partial \theta`:

.. math::
    J = \begin{pmatrix} J_1 \\ \vdots \\ J_N \end{pmatrix}
    \in \mathbb R^{N C \times D},

rows ordered sample-major in data order (row ``n C + c`` is entry ``c`` of the
flattened output of sample ``n``). :class:`JacobianOperator` multiplies
:math:`J V` by forward-mode differentiation (``torch.func.jvp``, the ``k``
columns vectorized by ``vmap``), :class:`TransposedJacobianOperator`
:math:`J^\top U` by reverse mode (``torch.func.vjp``), one pass over the data
each. No loss and no normalization enter: the GGN of a loss is
:math:`J^\top \Lambda J` with the loss's output-space Hessian :math:`\Lambda` and
its scale (see :mod:`curvlab.operators.ggn`).

Both are rectangular, so they follow the operator protocol without being
:class:`~curvlab.operators.CurvatureOperator` s: ``shape``, ``dtype``,
``device``, ``@`` on ``(n,)``/``(n, k)`` tensors (the Jacobian also on
parameter-shaped lists), ``adjoint()``/``.T``, ``to_dense()``; the sketched SVD
of :mod:`curvlab.linalg` runs on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

from curvlab._checks import check_columns
from curvlab._limits import MAX_DENSE_DIM
from curvlab.operators._checks import (
    check_batch_samples,
    check_dtype_device,
    check_finite,
    check_flat_input,
    check_list_input,
)
from curvlab.operators.base import identity_products
from curvlab.operators.empirical_risk import NonDeterministicError, model_mode
from curvlab.operators.params import resolve_model_params


class _DataJacobian:
    """Model, data and parameters shared by a Jacobian and its transpose."""

    def __init__(self, model, data, params, *, max_cols, train_mode, check):
        if max_cols is not None and (not isinstance(max_cols, int) or max_cols < 1):
            raise ValueError(
                f"max_cols must be a positive int or None. Got {max_cols}."
            )
        names, tensors = resolve_model_params(model, params)
        self.model, self.data, self.names = model, data, names
        self.param_shapes = tuple(t.shape for t in tensors)
        self.sizes = [t.numel() for t in tensors]
        self.dim = sum(self.sizes)
        self.dtype, self.device = tensors[0].dtype, tensors[0].device
        self.max_cols, self.train_mode = max_cols, train_mode
        self._check_pending = check
        batch_sizes = []
        with self._model_mode(), torch.no_grad():
            for index, batch in enumerate(data):
                X = self._inputs(batch, index)
                check_batch_samples(X, index)
                if not batch_sizes:
                    output = self._forward(X)
                    self.output_shape = tuple(output.shape[1:])
                batch_sizes.append(X.shape[0])
        if not batch_sizes:
            raise ValueError("data must yield at least one (X, y) batch. Got none.")
        self.batch_sizes = batch_sizes
        self.num_data = sum(batch_sizes)
        self.num_outputs = int(torch.Size(self.output_shape).numel())

    # ------------------------------------------------------------------ helpers
    def _inputs(self, batch, index: int) -> Tensor:
        X = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(X, Tensor):
            raise TypeError(
                f"data must yield (X, y) pairs or input tensors. Batch {index} "
                f"holds a {type(X).__name__}."
            )
        X = X.to(self.device)
        return X.to(self.dtype) if X.is_floating_point() else X

    def _params(self) -> dict[str, Tensor]:
        named = dict(self.model.named_parameters())
        return {n: named[n].detach() for n in self.names}

    def _forward(self, X: Tensor, params=None) -> Tensor:
        return functional_call(self.model, params or self._params(), (X,))

    def _model_mode(self):
        return model_mode(self.model, self.train_mode)

    def _batches(self):
        """Yield ``(index, X)`` and check, on the first pass, that data are fixed."""
        check = self._check_pending
        seen = []
        for index, batch in enumerate(self.data):
            X = self._inputs(batch, index)
            if check:
                check_finite(X, f"Inputs X of batch {index}")
                seen.append(_fingerprint(X))
            yield index, X
        if check:
            again = [_fingerprint(self._inputs(b, i)) for i, b in enumerate(self.data)]
            if again != seen or [s[0][0] for s in seen] != self.batch_sizes:
                raise NonDeterministicError(
                    "The data changed between two passes (different batches, order "
                    "or count). The Jacobian's rows follow the data order: it needs "
                    "the same batches in the same order on every pass."
                )
            first = self._inputs(next(iter(self.data)), 0)
            if not torch.equal(self._forward(first), self._forward(first)):
                raise NonDeterministicError(
                    "The model is random: its output changes for the same input. "
                    "Likely cause: Dropout in train mode (use train_mode=False)."
                )
            self._check_pending = False

    def _function(self, X: Tensor):
        names, model = self.names, self.model

        def forward(*theta):
            return functional_call(model, dict(zip(names, theta, strict=True)), (X,))

        return forward

    def _unflatten(self, V: Tensor) -> list[Tensor]:
        k = V.shape[1]
        return [
            v.reshape(*s, k)
            for v, s in zip(V.split(self.sizes), self.param_shapes, strict=True)
        ]

    # ----------------------------------------------------------------- products
    def jvp(self, V: Tensor) -> Tensor:
        """``J V`` for ``V`` of shape ``(D, k)``: ``(N C, k)``."""
        columns = tuple(m.movedim(-1, 0) for m in self._unflatten(V))
        primals = tuple(self._params().values())
        rows = []
        with self._model_mode(), torch.no_grad():
            for _, X in self._batches():
                forward = self._function(X)

                def push(*v, forward=forward):
                    return jvp(forward, primals, v)[1]

                JV = vmap(push)(*columns)  # (k, B, *out)
                rows.append(JV.reshape(JV.shape[0], -1).T)
        return torch.cat(rows)

    def vjp(self, U: Tensor) -> Tensor:
        """``J^T U`` for ``U`` of shape ``(N C, k)``: ``(D, k)``."""
        k = U.shape[1]
        primals = tuple(self._params().values())
        total = torch.zeros(self.dim, k, dtype=self.dtype, device=self.device)
        start = 0
        with self._model_mode(), torch.no_grad():
            for index, X in self._batches():
                stop = start + self.batch_sizes[index] * self.num_outputs
                _, pullback = vjp(self._function(X), *primals)
                Ub = U[start:stop].T.reshape(k, X.shape[0], *self.output_shape)
                out = vmap(pullback)(Ub)  # tuple of (k, *p.shape)
                total += torch.cat([o.reshape(k, -1) for o in out], dim=1).T
                start = stop
        return total


def _fingerprint(X: Tensor) -> tuple:
    Xd = X.detach().reshape(X.shape[0], -1).to(torch.float64)
    weights = torch.arange(1, X.shape[0] + 1, dtype=torch.float64, device=X.device)
    return tuple(X.shape), float(weights @ Xd.sum(1))


def _chunked(product, X: Tensor, max_cols: int | None) -> Tensor:
    k = X.shape[1]
    step = max_cols or k
    if k <= step:
        return product(X)
    return torch.cat([product(X[:, i : i + step]) for i in range(0, k, step)], dim=1)


class JacobianOperator:
    r"""The Jacobian :math:`J \in \mathbb R^{N C \times D}` of the outputs over data.

    Args:
        model: The model, called as ``model(X)``.
        data: Re-iterable ``(X, y)`` batches (``y`` is ignored), in a fixed order.
        params: ``None`` for all trainable parameters, or tensors or names.
        max_cols: Largest number of columns multiplied in one pass over the data.
        train_mode: ``False`` (default) evaluates the model in eval mode.
        check_deterministic: Check on the first product that the data order and
            the model output do not change between passes.

    Attributes:
        shape: ``(N C, D)``.
        num_data: ``N``.
        output_shape: Shape of one sample's output (``C`` entries).
        param_shapes: Shapes of the parameters (the columns' layout).

    Raises:
        TypeError: If ``model`` is not a module or a batch holds no tensor.
        ValueError: For empty data, bad ``params``, ``max_cols`` or non-finite
            parameters.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2).double()
        >>> X = torch.randn(5, 3).double()
        >>> J = JacobianOperator(model, [(X, torch.zeros(5))])
        >>> J.shape, J.T.shape
        ((10, 8), (8, 10))
        >>> v = torch.randn(8).double()
        >>> dw, db = v[:6].reshape(2, 3), v[6:]  # weight and bias directions
        >>> torch.allclose(J @ v, (X @ dw.T + db).reshape(-1))
        True
    """

    is_symmetric = False

    def __init__(
        self,
        model: nn.Module,
        data: Iterable,
        params: Sequence[Tensor | str] | None = None,
        *,
        max_cols: int | None = None,
        train_mode: bool = False,
        check_deterministic: bool = True,
    ):
        self._core = _DataJacobian(
            model,
            data,
            params,
            max_cols=max_cols,
            train_mode=train_mode,
            check=check_deterministic,
        )

    @classmethod
    def _from_core(cls, core: _DataJacobian):
        new = cls.__new__(cls)
        new._core = core
        return new

    # ---------------------------------------------------------------- protocol
    @property
    def shape(self) -> tuple[int, int]:
        """``(N C, D)``."""
        return (self._core.num_data * self._core.num_outputs, self._core.dim)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of products."""
        return self._core.dtype

    @property
    def device(self) -> torch.device:
        """Device of products."""
        return self._core.device

    @property
    def num_data(self) -> int:
        """``N``."""
        return self._core.num_data

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one sample's output."""
        return self._core.output_shape

    @property
    def param_shapes(self) -> tuple[torch.Size, ...]:
        """Shapes of the parameters."""
        return self._core.param_shapes

    def matmat(self, V: Tensor | list[Tensor]) -> Tensor:
        """Multiply ``J`` onto ``V``.

        Args:
            V: ``(D,)``/``(D, k)`` tensor, or a list shaped like the parameters
                (entries ``(*p.shape,)`` or ``(*p.shape, k)``).

        Returns:
            ``(N C,)`` or ``(N C, k)``.
        """
        core = self._core
        if isinstance(V, (list, tuple)):
            has_cols = check_list_input(
                list(V), core.param_shapes, core.dtype, core.device
            )
            k = V[0].shape[-1] if has_cols else 1
            flat = torch.cat([v.reshape(-1, k) for v in V])
            out = _chunked(core.jvp, flat, core.max_cols)
            return out if has_cols else out.squeeze(1)
        check_flat_input(V, core.dim, core.dtype, core.device)
        V2 = V.unsqueeze(1) if V.ndim == 1 else V
        out = _chunked(core.jvp, V2, core.max_cols)
        return out.squeeze(1) if V.ndim == 1 else out

    __matmul__ = matmat

    def adjoint(self) -> TransposedJacobianOperator:
        r"""Return :math:`J^\top`, sharing model, data and checks.

        Returns:
            The transposed Jacobian.
        """
        return TransposedJacobianOperator._from_core(self._core)

    @property
    def T(self) -> TransposedJacobianOperator:  # noqa: N802
        r""":math:`J^\top`."""
        return self.adjoint()

    def to_dense(
        self, *, max_dim: int = MAX_DENSE_DIM, chunk_size: int = 256
    ) -> Tensor:
        """Materialise ``J`` column by column (``J^T`` as the transpose of ``J``).

        Args:
            max_dim: Refuse ``D > max_dim``.
            chunk_size: Identity columns per product.

        Returns:
            The ``(N C, D)`` matrix (``(D, N C)`` for ``J^T``).

        Raises:
            ValueError: If ``D > max_dim``.
        """
        J = JacobianOperator._from_core(self._core)
        dense = _to_dense(J, self._core.dim, max_dim, chunk_size)
        return dense.T if isinstance(self, TransposedJacobianOperator) else dense

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class TransposedJacobianOperator(JacobianOperator):
    r"""The transposed data-set Jacobian :math:`J^\top \in \mathbb R^{D \times N C}`.

    Build it as ``JacobianOperator(...).T``, or with the same arguments as
    :class:`JacobianOperator`.
    """

    @property
    def shape(self) -> tuple[int, int]:
        """``(D, N C)``."""
        return (self._core.dim, self._core.num_data * self._core.num_outputs)

    def matmat(self, U: Tensor) -> Tensor:
        """Multiply ``J^T`` onto output-space columns ``U``.

        Args:
            U: ``(N C,)`` or ``(N C, k)``, rows sample-major in data order.

        Returns:
            ``(D,)`` or ``(D, k)``.

        Raises:
            TypeError: If ``U`` is not a tensor.
            ValueError: If its shape, dtype or device does not match.
        """
        core = self._core
        rows = self.shape[1]
        detail = f" (N={core.num_data} samples, C={core.num_outputs} outputs each)"
        check_columns(U, rows, size="N*C", detail=detail)
        check_dtype_device(U, core.dtype, core.device)
        U2 = U.unsqueeze(1) if U.ndim == 1 else U
        out = _chunked(core.vjp, U2, core.max_cols)
        return out.squeeze(1) if U.ndim == 1 else out

    __matmul__ = matmat

    def adjoint(self) -> JacobianOperator:
        """Return :math:`J`.

        Returns:
            The Jacobian.
        """
        return JacobianOperator._from_core(self._core)


def _to_dense(op, dim: int, max_dim: int, chunk_size: int) -> Tensor:
    if dim > max_dim:
        raise ValueError(
            f"to_dense() would multiply {dim} identity columns, above max_dim="
            f"{max_dim}. Pass a larger max_dim to do it anyway."
        )
    return identity_products(op.matmat, dim, chunk_size, op.dtype, op.device)

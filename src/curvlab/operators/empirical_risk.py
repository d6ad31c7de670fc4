r"""The data loop shared by all data-set curvature operators.

A data-set operator is the curvature of the empirical risk

.. math::
    \mathcal L(\theta) = \sum_{b} w_b\, L_b(\theta), \qquad
    w_b = \begin{cases} B_b / N & \text{reduction="mean"} \\ 1 & \text{"sum"}\end{cases}

where :math:`L_b` is the loss of batch ``b`` with ``B_b`` samples, as ``loss_fn``
reduces it, and ``N`` the number of samples in the data. Weighting each batch by
its size makes the ``mean`` operator the mean over all ``N`` samples whatever the
batch sizes, an uneven last batch included. Subclasses implement one per-batch
product, :meth:`EmpiricalRiskOperator._matmat_batch`; this class loops over the
data, applies the weights, and checks once, on the first product, that the
operator is deterministic (the same data in the same order, and a model whose
output does not change between two calls on the same input).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from curvlab._typing import TensorList
from curvlab.operators._checks import check_batch_samples, check_finite
from curvlab.operators.base import CurvatureOperator
from curvlab.operators.losses import loss_reduction
from curvlab.operators.params import resolve_model_params, resolve_params

_RANDOM_MODEL = (
    "The model is random: its output changes for the same input. Likely cause: "
    "Dropout or another random layer in train mode (use train_mode=False, the "
    "default, or call model.eval())."
)


class NonDeterministicError(RuntimeError):
    """The operator would not give the same product twice for the same vector."""


class EmpiricalRiskOperator(CurvatureOperator):
    """Base class of operators defined by a model, a loss and a data set.

    Args:
        model: The model, an ``nn.Module`` called as ``model(X)``.
        loss_fn: The loss, called as ``loss_fn(model(X), y)``, with
            ``reduction`` ``"mean"`` or ``"sum"``.
        data: A re-iterable of ``(X, y)`` batches (a list, a ``DataLoader``
            without shuffling, or a problem's ``train_data``). Iterated once per
            product, in the same order every time.
        params: ``None`` for all trainable parameters, or a list of the model's
            parameter tensors or of their names; their order sets the order of
            the flattened vector.
        max_cols: Largest number of columns multiplied in one pass over the data;
            more are split into chunks (bounds memory). ``None`` for no limit.
        num_data: Number of samples ``N``; counted with one pass when ``None``.
        train_mode: ``False`` (default) runs the model in eval mode during
            products, so BatchNorm uses its running statistics and Dropout is
            off. ``True`` keeps the model's own mode: BatchNorm then normalises
            each batch with that batch's statistics, so the operator depends on
            the batching and is the curvature of that batch-coupled loss;
            Dropout in train mode makes products random and fails the
            determinism check.
        check_deterministic: Check on the first product that the data order and
            the model are deterministic.
        compile: Compile the per-batch product with ``torch.compile``. The first
            products pay the compilation (tens of seconds, once per batch shape);
            later ones run faster, which suits jobs of thousands of products.

    Raises:
        ValueError: For an unsupported reduction, empty data, non-finite
            parameters or bad ``params``.
        TypeError: If ``model`` is not an ``nn.Module``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        data: Iterable,
        params: Sequence[Tensor | str] | None = None,
        *,
        max_cols: int | None = None,
        num_data: int | None = None,
        train_mode: bool = False,
        check_deterministic: bool = True,
        compile: bool = False,
    ):
        names, tensors = resolve_model_params(model, params)
        self.reduction = loss_reduction(loss_fn)
        super().__init__(
            [t.shape for t in tensors],
            dtype=tensors[0].dtype,
            device=tensors[0].device,
            max_cols=max_cols,
        )
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.param_names = names
        self.train_mode = train_mode
        self.compile = compile
        self._compiled: dict = {}
        self._check_pending = check_deterministic
        self.num_data = self._count_data() if num_data is None else int(num_data)
        if self.num_data < 1:
            raise ValueError(f"num_data must be positive. Got {self.num_data}.")

    # ------------------------------------------------------------ subclass hook
    def _matmat_batch(
        self, X: Tensor, y: Tensor, M: TensorList, index: int
    ) -> TensorList:
        """Multiply the curvature of one batch's loss onto ``M``.

        Args:
            X: Inputs of the batch, on the operator's device.
            y: Targets of the batch, on the operator's device.
            M: Parameter-shaped directions ``(*p.shape, k)``.
            index: Position of the batch in the data (seeds randomness).

        Returns:
            The product for this batch's loss as ``loss_fn`` reduces it.

        Raises:
            NotImplementedError: Always; subclasses override it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement _matmat_batch."
        )

    def _constructor_options(self) -> dict:
        """Keyword options a block of this operator is built with."""
        return {
            "max_cols": self.max_cols,
            "num_data": self.num_data,
            "train_mode": self.train_mode,
            "compile": self.compile,
        }

    def _batch_function(self, function):
        """Return ``function``, compiled once with ``torch.compile`` if asked."""
        if not self.compile:
            return function
        if function not in self._compiled:
            self._compiled[function] = torch.compile(function, dynamic=False)
        return self._compiled[function]

    # ------------------------------------------------------------------ helpers
    def _param_dict(self) -> dict[str, Tensor]:
        named = dict(self.model.named_parameters())
        return {n: named[n].detach() for n in self.param_names}

    def _forward(self, params: dict[str, Tensor], X: Tensor) -> Tensor:
        return functional_call(self.model, params, (X,))

    def _prepare(self, batch, index: int, check: bool) -> tuple[Tensor, Tensor]:
        X, y = prepare_batch(batch, index, self.dtype, self.device)
        if check:
            check_finite(X, f"Inputs X of batch {index}")
            check_finite(y, f"Targets y of batch {index}")
        return X, y

    def _model_mode(self):
        return model_mode(self.model, self.train_mode)

    def _count_data(self) -> int:
        total = 0
        for index, batch in enumerate(self.data):
            X, _ = self._prepare(batch, index, check=False)
            check_batch_samples(X, index)
            total += X.shape[0]
        if total == 0:
            raise ValueError("data must yield at least one (X, y) batch. Got none.")
        return total

    def _batch_weight(self, X: Tensor) -> float:
        return X.shape[0] / self.num_data if self.reduction == "mean" else 1.0

    # ----------------------------------------------------------------- the loop
    def _matmat(self, M: TensorList) -> TensorList:
        check = self._check_pending
        fingerprints = []
        total: TensorList | None = None
        # torch.func transforms ignore an outer no_grad; it only keeps parameters
        # outside the selection (which may require grad) out of any autograd graph.
        with self._model_mode(), torch.no_grad():
            for index, batch in enumerate(self.data):
                X, y = self._prepare(batch, index, check)
                if check:
                    fingerprints.append(_fingerprint(X, y))
                out = self._batch_product(X, y, M, index)
                w = self._batch_weight(X)
                if total is None:
                    total = [w * o for o in out]
                else:
                    for t, o in zip(total, out, strict=True):
                        t.add_(o, alpha=w)
            if check:
                self._check_determinism(fingerprints)
        if total is None:
            raise ValueError("data yielded no batches during the product.")
        return total

    def _batch_product(self, X, y, M, index) -> TensorList:
        try:
            return self._matmat_batch(X, y, M, index)
        except RuntimeError as error:
            if "random operation" in str(error):
                raise NonDeterministicError(_RANDOM_MODEL) from error
            raise

    def _check_determinism(self, fingerprints: list):
        """Compare the data with a second pass and the model with a second call.

        Raises:
            NonDeterministicError: If the data or the model output change.
        """
        second = []
        first_batch = None
        for index, batch in enumerate(self.data):
            X, y = self._prepare(batch, index, check=False)
            if first_batch is None:
                first_batch = X
            second.append(_fingerprint(X, y))
        if second != fingerprints:
            raise NonDeterministicError(
                "The data changed between two passes (different batches, order or "
                "count). Likely cause: a DataLoader with shuffle=True, random "
                "augmentation, or drop_last with a sampler. Operators need the same "
                "batches in the same order on every pass."
            )
        params = self._param_dict()
        with torch.no_grad():
            out1 = self._forward(params, first_batch)
            out2 = self._forward(params, first_batch)
        if not torch.equal(out1, out2):
            raise NonDeterministicError(_RANDOM_MODEL)
        self._check_pending = False

    # ------------------------------------------------------------------- blocks
    def _block_names(self, names_or_params) -> list[str]:
        """The names of a block's parameters, checked to be among this operator's."""
        names, _ = resolve_params(self.model, names_or_params)
        outside = [n for n in names if n not in self.param_names]
        if outside:
            raise ValueError(
                f"Block parameters {outside} are not among this operator's parameters "
                f"{self.param_names}."
            )
        return names

    def block(self, names_or_params: Sequence[Tensor | str]) -> EmpiricalRiskOperator:
        """Return the diagonal block on a subset of this operator's parameters.

        For the Hessian this is the layerwise Hessian of the selected parameters.
        The block is an operator built on the subset, so its products cost no more
        than those of an operator constructed on that subset directly.

        Args:
            names_or_params: Parameter names or tensors, all among this operator's.

        Returns:
            An operator of the same kind on the subset.

        Raises:
            ValueError: If a parameter is not among this operator's parameters.
        """
        names = self._block_names(names_or_params)
        return type(self)(
            self.model,
            self.loss_fn,
            self.data,
            params=names,
            check_deterministic=self._check_pending,
            **self._constructor_options(),
        )


@contextlib.contextmanager
def model_mode(model: nn.Module, train_mode: bool):
    """Run ``model`` in eval mode unless ``train_mode``; restore every module's mode.

    Args:
        model: The model.
        train_mode: Keep the model's own modes.

    Yields:
        Nothing; the block runs with the modes set.
    """
    if train_mode:
        yield
        return
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def prepare_batch(batch, index: int, dtype, device) -> tuple[Tensor, Tensor]:
    """Check an ``(X, y)`` batch and move it to the operator's device and dtype.

    Floating-point inputs and targets take ``dtype``; integer labels keep theirs.

    Args:
        batch: What the data yielded.
        index: Position of the batch (for messages).
        dtype: The parameters' dtype.
        device: The parameters' device.

    Returns:
        ``X`` and ``y``.

    Raises:
        TypeError: If the batch is not an ``(X, y)`` pair of tensors.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            f"data must yield (X, y) pairs. Batch {index} is a "
            f"{type(batch).__name__}"
            + (f" of length {len(batch)}." if hasattr(batch, "__len__") else ".")
        )
    X, y = batch
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise TypeError(
            f"Batch {index} must hold tensors (X, y). Got ({type(X).__name__}, "
            f"{type(y).__name__})."
        )
    X = X.to(device)
    if X.is_floating_point():
        X = X.to(dtype)
    y = y.to(device)
    if y.is_floating_point():
        y = y.to(dtype)
    return X, y


def _fingerprint(X: Tensor, y: Tensor) -> tuple:
    """A cheap summary of a batch that changes when its content or order changes."""
    Xd = X.detach().reshape(X.shape[0], -1).to(torch.float64)
    yd = y.detach().reshape(y.shape[0], -1).to(torch.float64) if y.ndim else y
    weights = torch.arange(1, X.shape[0] + 1, dtype=torch.float64, device=X.device)
    return (
        tuple(X.shape),
        tuple(y.shape),
        float(weights @ Xd.sum(1)),
        float((weights @ yd.sum(1)) if y.ndim else yd),
    )

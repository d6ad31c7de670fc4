r"""Exact GGN and Hessian diagonals, the references for HesScale.

**GGN diagonal.** With a symmetric factorisation of the loss Hessian at the
output of sample ``n``, :math:`c\,\nabla^2_f \ell_n = S_n S_n^\top` with ``K``
columns, the GGN diagonal is a sum of squared Jacobian-transpose products,

.. math::
    \mathrm{diag}(G) = \sum_b w_b \sum_{n} \sum_{k=1}^{K}
        \big(J_n^\top S_n e_k\big)^{\odot 2},

where :math:`J_n` is the Jacobian of sample ``n``'s output with respect to the
parameters and :math:`w_b` the batch weight (``B_b/N`` for ``mean``, 1 for
``sum``). The factors (Dangel, Kunstner & Hennig 2020, BackPACK, ICLR, App. A):

- cross-entropy, :math:`p = \mathrm{softmax}(f)`:
  :math:`S = \mathrm{diag}(\sqrt p) - p\sqrt p^\top` (``K = C`` per position),
  since :math:`S S^\top = \mathrm{diag}(p) - p p^\top`;
- MSE: :math:`S = \sqrt{2}\, I`; BCE with logits:
  :math:`S = \mathrm{diag}(\sqrt{s(1 - s)})`, :math:`s = \sigma(f)`;

each times :math:`\sqrt c`. Two methods compute the sum:

- *factor backpropagation* (:mod:`curvlab.diagonal.ggn_backprop`, BackPACK's
  ``DiagGGNExact``): :math:`S` travels backwards through the network once as a
  ``(K, B, ...)`` tensor, and each layer squares its per-sample gradients, or,
  for a Linear layer on ``(B, in)`` inputs, multiplies the squares of
  :math:`S` and of its input directly. Used for the models HesScale supports
  (``nn.Sequential`` with :class:`~curvlab.diagonal.Residual` blocks, see
  :mod:`curvlab.diagonal.backprop`) in which no parameter is used twice;
- otherwise, the generic method: the ``K`` vector-Jacobian products per sample
  run vectorised (``torch.func.vmap`` over samples and columns), about ``K``
  backward passes with all per-sample parameter gradients materialised.

**Monte-Carlo GGN diagonal**: the columns are replaced by
:math:`\sqrt{c/m}\,\nabla_f \ell(f_n, \hat y_s)` for ``m`` labels
:math:`\hat y_s` drawn from the model's likelihood, an unbiased estimate whose
error falls like :math:`1/\sqrt m`; labels of batch ``i`` come from a generator
seeded by ``(seed, i)``, as in
:class:`~curvlab.operators.fisher.FisherOperator`, whose diagonal it equals. The
same two methods apply (the labels drawn do not depend on the method).

**Hessian diagonal.** For MLP-like ``nn.Sequential`` models (Linear, element-wise
activations, Flatten, eval-mode BatchNorm and Dropout) the per-sample Hessian
with respect to every layer output is backpropagated exactly
(:mod:`curvlab.diagonal.hessian_backprop`, BackPACK's ``DiagHessian``).
Otherwise :math:`H_{ii} = e_i^\top H e_i` from Hessian products with unit
vectors in chunks (:class:`~curvlab.operators.hessian.HessianOperator`): exact
for any model and loss, at the cost of ``D`` Hessian-vector products.

All three work for any model that ``torch.func`` can differentiate (residual
connections and eval-mode BatchNorm included), with Dropout and BatchNorm in
eval mode; the backpropagation methods are only faster, not different (they
agree with the generic ones to round-off).

Example:
    Both exact diagonals are the diagonals of the dense matrices:

    >>> import torch
    >>> from curvlab.operators import GGNOperator, HessianOperator
    >>> from curvlab.problems.models import mlp
    >>> model = mlp((3, 4, 2)).double()
    >>> data = [(torch.randn(5, 3).double(), torch.randint(0, 2, (5,)))]
    >>> loss_fn = torch.nn.CrossEntropyLoss()
    >>> def flat(diag):
    ...     return torch.cat([d.flatten() for d in diag])
    >>> G = GGNOperator(model, loss_fn, data).to_dense()
    >>> torch.allclose(flat(exact_ggn_diagonal(model, loss_fn, data)), G.diagonal())
    True
    >>> H = HessianOperator(model, loss_fn, data).to_dense()
    >>> diag = exact_hessian_diagonal(model, loss_fn, data, chunk_size=7)
    >>> torch.allclose(flat(diag), H.diagonal())
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from curvlab._limits import MAX_HVP_DIAGONAL_DIM
from curvlab._seeds import derive_seed
from curvlab._typing import TensorList
from curvlab.diagonal import ggn_backprop, hessian_backprop
from curvlab.diagonal._common import check_eval_mode, prepare_batch
from curvlab.diagonal.backprop import _check_output, _forward
from curvlab.operators.hessian import HessianOperator
from curvlab.operators.losses import OutputSpaceLoss
from curvlab.operators.params import resolve_params

#: Elements of per-sample, per-column parameter gradients (generic method),
#: backpropagated factors or per-sample Hessians (backpropagation) held at once.
_MEMORY_BUDGET = 2**24

_BACKPROP_LOSSES = (nn.CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss)


def _factor_columns(output_loss: OutputSpaceLoss, output: Tensor) -> Tensor:
    r"""Columns ``S`` of the unscaled :math:`\nabla^2_f\ell = S S^\top` per sample.

    Args:
        output_loss: The loss's output-space derivatives.
        output: Detached model output ``(B, *O)``.

    Returns:
        ``(K, B, *O)`` with ``K`` the number of entries of one sample's output.
    """
    B, shape = output.shape[0], output.shape[1:]
    K = math.prod(shape)
    eye = torch.eye(K, dtype=output.dtype, device=output.device)
    eye = eye.reshape(K, 1, *shape)
    if output_loss.kind == "mse":
        return (2.0**0.5 * eye).expand(K, B, *shape)
    if output_loss.kind == "bce_with_logits":
        s = torch.sigmoid(output)
        return eye * (s * (1 - s)).sqrt().unsqueeze(0)
    # cross-entropy: column (c, position) is sqrt(p_c) (e_c - p) at that position
    p = torch.softmax(output, dim=1).unsqueeze(0)  # (1, B, C, *P)
    root = (eye * p).sum(dim=2, keepdim=True).sqrt()  # sqrt(p_c) at the column
    same = eye.sum(dim=2, keepdim=True)  # 1 at the column's position
    return root * (eye - p * same)


def _squared_vjp_sum(
    model: nn.Module,
    names: list[str],
    primals: tuple[Tensor, ...],
    X: Tensor,
    S: Tensor,
) -> TensorList:
    r""":math:`\sum_n \sum_k (J_n^\top S_{k,n})^{\odot 2}` for one batch.

    Args:
        model: The model.
        names: Names of the differentiated parameters.
        primals: Their detached values.
        X: Inputs ``(B, ...)``.
        S: Output-space columns ``(K, B, *O)``.

    Returns:
        Parameter-shaped sums.
    """

    def per_sample(x: Tensor, columns: Tensor) -> tuple[Tensor, ...]:
        def forward(*theta):
            params = dict(zip(names, theta, strict=True))
            return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)

        _, pullback = vjp(forward, *primals)
        products = vmap(pullback)(columns)
        return tuple((v * v).sum(0) for v in products)

    K, B = S.shape[:2]
    dim = sum(p.numel() for p in primals)
    chunk = max(1, _MEMORY_BUDGET // max(1, K * dim))
    total = [torch.zeros_like(p) for p in primals]
    columns = S.movedim(1, 0)  # (B, K, *O)
    for start in range(0, B, chunk):
        out = vmap(per_sample)(X[start : start + chunk], columns[start : start + chunk])
        for t, o in zip(total, out, strict=True):
            t.add_(o.sum(0))
    return total


def _check_mc_samples(mc_samples) -> None:
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int):
        raise ValueError(f"mc_samples must be a positive int. Got {mc_samples!r}.")
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be a positive int. Got {mc_samples!r}.")


def _generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of batch ``index``, as the Monte-Carlo Fisher seeds it."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, index))
    return generator


def _ggn_diagonal(model, loss_fn, data, params, mc_samples, seed) -> TensorList:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module. Got {type(model)}.")
    output_loss = OutputSpaceLoss(loss_fn)
    reduction = output_loss.reduction
    names, tensors = resolve_params(model, params)
    check_eval_mode(model)
    fast = ggn_backprop.supported(model)
    primals = tuple(t.detach() for t in tensors)
    total: TensorList | None = None
    num_data = 0
    with torch.no_grad():  # keeps unselected parameters out of any graph
        for index, batch in enumerate(data):
            X, _ = prepare_batch(batch, index, tensors[0])
            steps: list = []
            if fast:
                output = _forward(model, X, steps)
            else:
                output = functional_call(
                    model, dict(zip(names, primals, strict=True)), (X,)
                )
            c = output_loss.batch_scale(output)
            if mc_samples is None:
                S = _factor_columns(output_loss, output) * c**0.5
            else:
                generator = _generator(seed, index, output.device)
                G = output_loss.sampled_gradients(output, mc_samples, generator)
                S = G * (c / mc_samples) ** 0.5
            if fast:
                diag = ggn_backprop.factor_diagonal(
                    steps, tensors, S, budget=_MEMORY_BUDGET
                )
            else:
                diag = _squared_vjp_sum(model, names, primals, X, S)
            total, num_data = _accumulate(total, num_data, diag, X.shape[0], reduction)
    return _finish(total, num_data, reduction)


def _accumulate(total, num_data, diag, batch_size, reduction):
    """Add a batch's diagonal with weight ``B_b`` (``mean``) or 1 (``sum``)."""
    weight = batch_size if reduction == "mean" else 1.0
    if total is None:
        return [weight * d for d in diag], num_data + batch_size
    for t, d in zip(total, diag, strict=True):
        t.add_(d, alpha=weight)
    return total, num_data + batch_size


def _finish(total, num_data, reduction) -> TensorList:
    """Divide by ``N`` for ``mean``; refuse empty data."""
    if total is None:
        raise ValueError("data must yield at least one (X, y) batch. Got none.")
    if reduction == "mean":
        return [t / num_data for t in total]
    return total


def exact_ggn_diagonal(
    model: nn.Module,
    loss_fn: nn.Module,
    data: Iterable,
    *,
    params: Sequence[Tensor | str] | None = None,
) -> TensorList:
    r"""Exact diagonal of the generalized Gauss-Newton matrix over a data set.

    Uses the symmetric factorisation of the loss Hessian at the output (module
    docstring), ``K`` columns for ``K`` outputs per sample (``K = C`` classes for
    cross-entropy on ``(B, C)`` logits). For models the HesScale walk supports the
    factor is backpropagated through the network once (BackPACK's
    ``DiagGGNExact``), otherwise ``K`` vector-Jacobian products per sample run
    vectorised; both are exact.

    Args:
        model: Any model that ``torch.func`` can differentiate, without Dropout or
            BatchNorm in training mode.
        loss_fn: ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss``
            (``mean`` or ``sum``).
        data: Iterable of ``(X, y)`` batches, iterated once.
        params: ``None`` for all trainable parameters, or a list of the model's
            parameter tensors or names.

    Returns:
        The diagonal, a list shaped like the selected parameters.

    Raises:
        NotImplementedError: For an unsupported loss.
        ValueError: For modules in training mode, a bad parameter selection or
            empty data.
        TypeError: If ``model`` is not a module or a batch is not ``(X, y)``.

    """
    return _ggn_diagonal(model, loss_fn, data, params, None, 0)


def mc_ggn_diagonal(
    model: nn.Module,
    loss_fn: nn.Module,
    data: Iterable,
    *,
    mc_samples: int = 1,
    seed: int = 0,
    params: Sequence[Tensor | str] | None = None,
) -> TensorList:
    r"""Monte-Carlo estimate of the GGN diagonal (BackPACK's DiagGGNMC).

    The loss Hessian at the output is replaced by the mean outer product of
    gradients at ``mc_samples`` labels drawn from the model's likelihood; the
    result is the diagonal of the Monte-Carlo Fisher
    (:class:`~curvlab.operators.fisher.FisherOperator` with the same
    ``mc_samples`` and ``seed``), unbiased for the GGN diagonal. The sampled
    gradients are backpropagated like the exact factor in
    :func:`exact_ggn_diagonal` (same two methods).

    Args:
        model: As in :func:`exact_ggn_diagonal`.
        loss_fn: As in :func:`exact_ggn_diagonal`.
        data: As in :func:`exact_ggn_diagonal`.
        mc_samples: Number ``m`` of sampled labels per sample.
        seed: Seed; batch ``i`` draws from a generator seeded by ``(seed, i)``.
        params: As in :func:`exact_ggn_diagonal`.

    Returns:
        The estimate, a list shaped like the selected parameters.

    Raises:
        NotImplementedError: For an unsupported loss.
        ValueError: If ``mc_samples`` is not a positive int, for modules in
            training mode, a bad parameter selection or empty data.
        TypeError: If ``model`` is not a module or a batch is not ``(X, y)``.
    """
    _check_mc_samples(mc_samples)
    return _ggn_diagonal(model, loss_fn, data, params, mc_samples, int(seed))


def _backprop_loss(model: nn.Module, loss_fn: nn.Module) -> OutputSpaceLoss | None:
    """The loss's derivatives if Hessian backpropagation handles the problem."""
    if not (
        isinstance(model, nn.Module)
        and type(loss_fn) in _BACKPROP_LOSSES
        and hessian_backprop.supported(model)
    ):
        return None
    try:
        return OutputSpaceLoss(loss_fn)
    except (NotImplementedError, ValueError):
        return None


def _hessian_backprop_diagonal(
    model: nn.Module,
    output_loss: OutputSpaceLoss,
    data: Iterable,
    params: Sequence[Tensor | str] | None,
) -> TensorList | None:
    """The data set's Hessian diagonal by Hessian backpropagation.

    Returns ``None`` (before any work beyond the first forward pass) if the first
    batch needs a per-sample Hessian with more than ``MAX_FEATURES`` rows.
    """
    _, tensors = resolve_params(model, params)
    reduction = output_loss.reduction
    total: TensorList | None = None
    num_data = 0
    with torch.no_grad():
        for index, batch in enumerate(data):
            X, y = prepare_batch(batch, index, tensors[0])
            steps: list = []
            output = _forward(model, X, steps)
            _check_output(output_loss, output, y)
            diag = hessian_backprop.hessian_diagonal(
                steps,
                output_loss,
                output,
                y,
                tensors,
                budget=_MEMORY_BUDGET,
                max_features=hessian_backprop.MAX_FEATURES if index == 0 else None,
            )
            if diag is None:
                return None
            total, num_data = _accumulate(total, num_data, diag, X.shape[0], reduction)
    return _finish(total, num_data, reduction)


def exact_hessian_diagonal(
    model: nn.Module,
    loss_fn: nn.Module,
    data: Iterable,
    *,
    params: Sequence[Tensor | str] | None = None,
    chunk_size: int = 64,
    max_dim: int = MAX_HVP_DIAGONAL_DIM,
) -> TensorList:
    r"""Exact diagonal of the Hessian over a data set.

    **Hessian backpropagation** (:mod:`curvlab.diagonal.hessian_backprop`) when
    :func:`curvlab.diagonal.hessian_backprop.supported` accepts the model (an
    ``nn.Sequential`` of Linear, element-wise activations, Flatten and eval-mode
    BatchNorm and Dropout, no parameter used twice), the loss is
    ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss``, and no formed
    per-sample Hessian has more than
    :data:`~curvlab.diagonal.hessian_backprop.MAX_FEATURES` rows (checked on the
    first batch): one pass over the data (``chunk_size`` unused), whatever
    ``D``. Its memory is bounded instead: per-sample Hessians of a layer's
    output (``n x n`` for ``n`` features, ``n`` at most ``MAX_FEATURES``) are
    formed for as many samples at once as fit in about :math:`2^{24}` entries.

    **Otherwise** :math:`H_{ii} = e_i^\top H e_i`, with the unit vectors
    multiplied in chunks of ``chunk_size`` columns; each chunk is one pass over
    the data with a batched double-backward product
    (:class:`~curvlab.operators.hessian.HessianOperator`). Exact for any model and
    any loss with ``mean`` or ``sum`` reduction, but costs about ``D``
    Hessian-vector products, hence the ``max_dim`` guard.

    Args:
        model: The model, without Dropout or BatchNorm in training mode.
        loss_fn: The loss (reduction ``mean`` or ``sum``).
        data: Re-iterable ``(X, y)`` batches (iterated once per chunk).
        params: ``None`` for all trainable parameters, or a list of the model's
            parameter tensors or names.
        chunk_size: Unit vectors per pass over the data (memory grows with it)
            for Hessian-vector products.
        max_dim: Largest ``D`` accepted for Hessian-vector products (which
            cost about ``D`` products; default
            :data:`curvlab._limits.MAX_HVP_DIAGONAL_DIM` = 20000); raise it
            deliberately for larger models. It does not apply to Hessian
            backpropagation, which costs one pass over the data and is guarded
            by the size of its per-sample factors (above).

    Returns:
        The diagonal, a list shaped like the selected parameters.

    Raises:
        ValueError: If ``D > max_dim`` and Hessian-vector products are needed,
            ``chunk_size`` is not a positive int, for
            modules in training mode, bad targets, a bad parameter selection or
            empty data.
        TypeError: If a batch is not an ``(X, y)`` pair of tensors.

    """
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or (chunk_size < 1)
    ):
        raise ValueError(f"chunk_size must be a positive int. Got {chunk_size!r}.")
    check_eval_mode(model)
    output_loss = _backprop_loss(model, loss_fn)
    why = "the model or loss is outside what Hessian backpropagation handles"
    if output_loss is not None:
        # one pass over the data, whatever D: max_dim does not apply
        diag = _hessian_backprop_diagonal(model, output_loss, data, params)
        if diag is not None:
            return diag
        why = (
            "Hessian backpropagation would form per-sample Hessians of more than "
            f"{hessian_backprop.MAX_FEATURES} features"
        )
    op = HessianOperator(model, loss_fn, data, params=params, max_cols=chunk_size)
    dim = op.shape[0]
    if dim > max_dim:
        passes = math.ceil(dim / chunk_size)
        raise ValueError(
            f"exact_hessian_diagonal needs D={dim} Hessian-vector products "
            f"({passes} passes over the data with chunk_size={chunk_size}), above "
            f"max_dim={max_dim} ({why}). Pass max_dim={dim} (or more) to run it "
            "anyway, or use hesscale() or exact_ggn_diagonal() for a cheaper "
            "diagonal."
        )
    diag = torch.empty(dim, dtype=op.dtype, device=op.device)
    for start in range(0, dim, chunk_size):
        k = min(chunk_size, dim - start)
        rows = torch.arange(start, start + k, device=op.device)
        cols = torch.arange(k, device=op.device)
        E = torch.zeros(dim, k, dtype=op.dtype, device=op.device)
        E[rows, cols] = 1.0
        diag[start : start + k] = (op @ E)[rows, cols]
    out, offset = [], 0
    for shape in op.param_shapes:
        size = math.prod(shape)
        out.append(diag[offset : offset + size].reshape(shape))
        offset += size
    return out

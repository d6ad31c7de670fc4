r"""What the operators need to know about a loss function, in output space.

For a batch of ``B`` samples with model outputs :math:`f_n` the batch loss is

.. math::
    L = c \sum_{n=1}^{B} \ell(f_n, y_n),

where :math:`\ell` sums over all entries (terms) of one sample's output and
:math:`c = 1` for ``reduction="sum"`` and :math:`c = 1/(B\,T)` for ``"mean"``, with
``T`` the number of loss terms per sample (``T = 1`` for cross-entropy on ``(B, C)``
logits, ``T = C`` for MSE and BCE on ``(B, C)`` outputs). This module supplies,
per loss, the Hessian of :math:`\ell` with respect to the output (for the GGN and
the exact type-2 Fisher), the gradient of :math:`\ell` (empirical Fisher) and
gradients at labels sampled from the model's likelihood (Monte-Carlo Fisher):

- ``CrossEntropyLoss``: :math:`p = \mathrm{softmax}(f)`,
  :math:`\nabla^2 \ell = \mathrm{diag}(p) - p p^\top`, :math:`\nabla\ell = p - e_y`,
  samples :math:`y \sim \mathrm{Cat}(p)`.
- ``MSELoss``: :math:`\ell = \lVert f - y\rVert^2`, :math:`\nabla^2\ell = 2I`,
  :math:`\nabla\ell = 2(f - y)`, samples :math:`y \sim \mathcal N(f, I/2)`, whose
  negative log-likelihood is :math:`\ell` up to a constant.
- ``BCEWithLogitsLoss``: :math:`\sigma = \sigma(f)`,
  :math:`\nabla^2\ell = \mathrm{diag}(\sigma(1-\sigma))`,
  :math:`\nabla\ell = \sigma - y`,
  samples :math:`y \sim \mathrm{Bernoulli}(\sigma)`.

For these exponential-family losses in natural parameters the type-2 Fisher equals
the GGN (Martens 2020, "New insights and perspectives on the natural gradient
method", JMLR), so :math:`\mathbb E[\nabla\ell\nabla\ell^\top] = \nabla^2\ell`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SUPPORTED_REDUCTIONS = ("mean", "sum")


def loss_reduction(loss_fn) -> str:
    """Return the reduction of a loss, checking that curvlab supports it.

    Args:
        loss_fn: A loss module with a ``reduction`` attribute.

    Returns:
        ``"mean"`` or ``"sum"``.

    Raises:
        ValueError: If the reduction is missing or unsupported.
    """
    reduction = getattr(loss_fn, "reduction", None)
    if reduction not in SUPPORTED_REDUCTIONS:
        raise ValueError(
            f"loss_fn must have reduction 'mean' or 'sum' (the curvature of the "
            f"data-set loss is defined through it). Got {reduction!r} from "
            f"{type(loss_fn).__name__}."
        )
    return reduction


class OutputSpaceLoss:
    """Output-space derivatives of a supported loss, for GGN-type products.

    Args:
        loss_fn: ``nn.CrossEntropyLoss``, ``nn.MSELoss`` or ``nn.BCEWithLogitsLoss``
            with default options apart from ``reduction``.

    Raises:
        NotImplementedError: For another loss or non-default options.
    """

    def __init__(self, loss_fn: nn.Module):
        self.reduction = loss_reduction(loss_fn)
        if isinstance(loss_fn, nn.CrossEntropyLoss):
            default = (
                loss_fn.weight is None
                and loss_fn.label_smoothing == 0.0
                and loss_fn.ignore_index == -100
            )
            self.kind = "cross_entropy"
        elif isinstance(loss_fn, nn.MSELoss):
            default, self.kind = True, "mse"
        elif isinstance(loss_fn, nn.BCEWithLogitsLoss):
            default = loss_fn.weight is None and loss_fn.pos_weight is None
            self.kind = "bce_with_logits"
        else:
            raise NotImplementedError(
                "GGN and Fisher operators support CrossEntropyLoss, MSELoss and "
                f"BCEWithLogitsLoss. Got {type(loss_fn).__name__}; the Hessian "
                "operator works with any loss."
            )
        if not default:
            raise NotImplementedError(
                f"{type(loss_fn).__name__} with weights, label smoothing or "
                "ignore_index is not supported by GGN and Fisher operators."
            )

    def _to_last(self, t: Tensor, lead: int = 0) -> Tensor:
        """Move the class axis of cross-entropy outputs to the end.

        The class axis is dim 1 of an output, dim ``1 + lead`` with ``lead``
        leading column axes.
        """
        return t.movedim(1 + lead, -1) if self.kind == "cross_entropy" else t

    def _from_last(self, t: Tensor, lead: int = 0) -> Tensor:
        return t.movedim(-1, 1 + lead) if self.kind == "cross_entropy" else t

    def batch_scale(self, output: Tensor) -> float:
        """Return ``c``, the factor between the batch loss and the sum of ``ell``.

        Args:
            output: Model output of the batch, ``(B, ...)``.

        Returns:
            ``1`` for ``sum``, ``1 / (B T)`` for ``mean``.
        """
        if self.reduction == "sum":
            return 1.0
        num_terms = output.numel()
        if self.kind == "cross_entropy":
            num_terms //= output.shape[1] if output.ndim > 1 else output.shape[0]
        return 1.0 / num_terms

    def hessian_matmat(self, output: Tensor, U: Tensor) -> Tensor:
        r"""Multiply :math:`\nabla^2_f \ell` onto columns ``U`` (``(k, *output)``).

        Args:
            output: Detached model output ``(B, ...)``.
            U: Output-space directions ``(k, B, ...)``.

        Returns:
            The product, shaped like ``U`` (not yet scaled by ``c``).
        """
        if self.kind == "mse":
            return 2.0 * U
        if self.kind == "bce_with_logits":
            s = torch.sigmoid(output)
            return s * (1 - s) * U
        p = torch.softmax(self._to_last(output), dim=-1)
        Ul = self._to_last(U, lead=1)
        return self._from_last(p * Ul - p * (p * Ul).sum(-1, keepdim=True), lead=1)

    def hessian_sqrt_columns(self, output: Tensor) -> Tensor:
        r"""Return columns :math:`s_c` with :math:`\sum_c s_c s_c^\top=\nabla^2_f\ell`.

        The square root acts on each loss term's ``C`` outputs (the class axis for
        cross-entropy, the last axis for MSE and BCE, a single output for 1-D
        outputs); column ``c`` holds the ``c``-th column of every term's square
        root at once. For cross-entropy
        :math:`S = \mathrm{diag}(\sqrt p) - p\sqrt p^\top` satisfies
        :math:`S S^\top = \mathrm{diag}(p) - p p^\top` because :math:`\sum_c p_c =
        1`; for MSE :math:`S = \sqrt 2 I`; for BCE
        :math:`S = \mathrm{diag}(\sqrt{\sigma(1-\sigma)})`.

        Args:
            output: Detached model output ``(B, ...)``.

        Returns:
            ``(C, *output.shape)`` (not yet scaled by ``c``).
        """
        if self.kind == "cross_entropy":
            p = torch.softmax(self._to_last(output), dim=-1)
            sqrt_p = p.sqrt()
            eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
            # column c: sqrt(p_c) (e_c - p), for every term at once
            cols = sqrt_p.movedim(-1, 0).unsqueeze(-1) * (
                eye.reshape(p.shape[-1], *([1] * (p.ndim - 1)), p.shape[-1]) - p
            )
            return self._from_last(cols, lead=1)
        if self.kind == "mse":
            diag = torch.full_like(output, 2.0**0.5)
        else:
            s = torch.sigmoid(output)
            diag = (s * (1 - s)).sqrt()
        if output.ndim == 1:
            return diag.unsqueeze(0)
        num = output.shape[-1]
        eye = torch.eye(num, dtype=output.dtype, device=output.device)
        return diag.unsqueeze(0) * eye.reshape(num, *([1] * (output.ndim - 1)), num)

    def gradient(self, output: Tensor, y: Tensor) -> Tensor:
        r"""Return :math:`\nabla_f \ell(f_n, y_n)` per sample, shaped like ``output``.

        Args:
            output: Detached model output ``(B, ...)``.
            y: Labels or targets.

        Returns:
            The per-sample output gradients (not yet scaled by ``c``).
        """
        if self.kind == "mse":
            return 2.0 * (output - y)
        if self.kind == "bce_with_logits":
            return torch.sigmoid(output) - y
        logits = self._to_last(output)
        onehot = nn.functional.one_hot(y, logits.shape[-1]).to(logits.dtype)
        return self._from_last(torch.softmax(logits, dim=-1) - onehot)

    def sampled_gradients(
        self, output: Tensor, num_samples: int, generator: torch.Generator
    ) -> Tensor:
        r"""Return gradients of :math:`\ell` at labels drawn from the likelihood.

        Args:
            output: Detached model output ``(B, ...)``.
            num_samples: Number ``m`` of labels drawn per sample.
            generator: Source of randomness.

        Returns:
            Gradients of shape ``(m, *output.shape)``; their outer products average
            to :math:`\nabla^2_f\ell` in expectation.
        """
        shape = (num_samples, *output.shape)
        if self.kind == "mse":
            eps = torch.randn(
                shape, generator=generator, dtype=output.dtype, device=output.device
            )
            return -(2.0**0.5) * eps
        if self.kind == "bce_with_logits":
            s = torch.sigmoid(output)
            u = torch.rand(
                shape, generator=generator, dtype=output.dtype, device=output.device
            )
            return s - (u < s).to(output.dtype)
        logits = self._to_last(output)
        p = torch.softmax(logits, dim=-1)
        flat = p.reshape(-1, p.shape[-1])
        labels = torch.multinomial(flat, num_samples, True, generator=generator)
        onehot = nn.functional.one_hot(labels.T, p.shape[-1]).to(p.dtype)
        grads = p.unsqueeze(0) - onehot.reshape(num_samples, *p.shape)
        return (
            grads.movedim(-1, 2)
            if self.kind == "cross_entropy" and (output.ndim > 1)
            else grads
        )

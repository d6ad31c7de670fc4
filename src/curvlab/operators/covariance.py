r"""The covariance of per-sample gradients, centered or not.

With :math:`g_n` the gradient of sample ``n``'s loss (summed over its ``T`` loss
terms) at its true label, and the loss's normalization ``c`` (``1/(N T)`` for
``reduction="mean"``, ``1`` for ``"sum"``, as for every curvlab operator):

.. math::
    C_{\mathrm{uncentered}} = c \sum_{n=1}^N g_n g_n^\top, \qquad
    C_{\mathrm{centered}} = c \sum_{n=1}^N (g_n - \bar g)(g_n - \bar g)^\top
    = C_{\mathrm{uncentered}} - c N \bar g \bar g^\top,
    \quad \bar g = \frac1N \sum_n g_n .

The uncentered one is the empirical Fisher
(:class:`~curvlab.operators.EmpiricalFisherOperator`). For cross-entropy with
``mean`` reduction (``T = 1``) the centered one is the covariance of the
per-sample gradients with the ``1/N`` (maximum-likelihood) normalization,
:math:`\frac1N \sum_n (g_n - \bar g)(g_n - \bar g)^\top`, the :math:`C` of the
Takeuchi information criterion (:func:`curvlab.linalg.tic`); ``unbiased=True``
multiplies by :math:`N/(N-1)`. For losses with ``T > 1`` terms per sample under
``mean`` (MSE or BCE on ``C`` outputs), ``c = 1/(N T)`` is ``T`` times the
:math:`1/(N T^2)` that the covariance of the per-sample mean losses
:math:`\ell_n = \frac1T \sum_t \ell_{nt}` (gradients :math:`g_n / T`) carries:
divide by ``T`` for that covariance.

Per-sample gradients are never stored. One pass over the data computes both
terms: :math:`\sum_n J_n^\top \nabla\ell_n (\nabla\ell_n^\top J_n v)` in output
space as the empirical Fisher does, and the gradient sum
:math:`\sum_n J_n^\top \nabla\ell_n` as one extra column of the same pullback.
"""

from __future__ import annotations

import torch

from curvlab._typing import TensorList
from curvlab.operators.fisher import _rank_one_matmat
from curvlab.operators.ggn import OutputCurvatureOperator


class GradientCovarianceOperator(OutputCurvatureOperator):
    r"""Covariance of per-sample gradients (module docstring), centered by default.

    Args:
        model: The model.
        loss_fn: ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss``.
        data: Re-iterable ``(X, y)`` batches.
        params: Parameter selection (see ``EmpiricalRiskOperator``).
        centered: Remove the mean gradient (default). ``False`` gives the
            empirical Fisher.
        unbiased: Multiply the centered covariance by :math:`N/(N-1)`.
        **options: Further options of ``EmpiricalRiskOperator``.

    Raises:
        ValueError: If ``unbiased`` is asked without centering or with ``N = 1``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2).double()
        >>> X, y = torch.randn(8, 3).double(), torch.randint(0, 2, (8,))
        >>> loss_fn = torch.nn.CrossEntropyLoss()
        >>> C = GradientCovarianceOperator(model, loss_fn, [(X, y)])
        >>> def gradient(n):  # of sample n's loss
        ...     model.zero_grad()
        ...     loss_fn(model(X[n : n + 1]), y[n : n + 1]).backward()
        ...     return torch.cat([model.weight.grad.reshape(-1), model.bias.grad])
        >>> G = torch.stack([gradient(n) for n in range(8)])
        >>> dense = torch.cov(G.T, correction=0)
        >>> torch.allclose(C.to_dense(), dense)
        True
    """

    is_psd = True

    def __init__(
        self,
        model,
        loss_fn,
        data,
        params=None,
        *,
        centered: bool = True,
        unbiased: bool = False,
        **options,
    ):
        if unbiased and not centered:
            raise ValueError(
                "unbiased=True rescales the centered covariance by N/(N-1); it needs "
                "centered=True. Got centered=False."
            )
        self.centered = bool(centered)
        self.unbiased = bool(unbiased)
        self._terms_scale: float | None = None
        super().__init__(model, loss_fn, data, params, **options)
        if unbiased and self.num_data < 2:
            raise ValueError(
                "unbiased=True divides by N - 1 and needs N >= 2. "
                f"Got N={self.num_data}."
            )

    def _constructor_options(self) -> dict:
        return {
            **super()._constructor_options(),
            "centered": self.centered,
            "unbiased": self.unbiased,
        }

    def _output_matmat(self, output, y, U, index):
        G = self.output_loss.gradient(output, y)
        product = _rank_one_matmat(G.unsqueeze(0), U)
        if not self.centered:
            return product
        return torch.cat([product, G.unsqueeze(0)])  # last column: the gradients

    def _c_times_n(self) -> float:
        """``c N``: ``1/T`` for ``mean``, ``N`` for ``sum``."""
        if self.reduction == "sum":
            return float(self.num_data)
        if self._terms_scale is None:
            X, _ = self._prepare(next(iter(self.data)), 0, check=False)
            with self._model_mode(), torch.no_grad():
                output = self._forward(self._param_dict(), X)
            # batch_scale = 1 / (B T)
            terms = 1.0 / (X.shape[0] * self.output_loss.batch_scale(output))
            self._terms_scale = 1.0 / terms
        return self._terms_scale

    def _matmat(self, M: TensorList) -> TensorList:
        out = super()._matmat(M)
        if not self.centered:
            return out
        # out[..., -1] = c sum_n g_n = s; subtract c N gbar gbar^T M = s s^T M / (cN)
        s = [o[..., -1:] for o in out]
        sM = sum(
            (si * m).reshape(-1, m.shape[-1]).sum(0) for si, m in zip(s, M, strict=True)
        )
        coeff = sM / self._c_times_n()
        factor = self.num_data / (self.num_data - 1) if self.unbiased else 1.0
        return [
            factor * (o[..., :-1] - si * coeff) for o, si in zip(out, s, strict=True)
        ]

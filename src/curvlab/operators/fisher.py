r"""Fisher information operators: exact (type-2), Monte-Carlo, and empirical.

All three are :math:`\sum_n J_n^\top \Lambda_n J_n` with, for sample ``n``,

- exact type-2 Fisher: :math:`\Lambda_n = \mathbb E_{\hat y \sim p(y|f_n)}
  [\nabla\ell(f_n,\hat y)\nabla\ell(f_n,\hat y)^\top] = \nabla^2_f\ell`, the GGN for
  the supported losses (Martens 2020, JMLR, §9.2);
- Monte-Carlo Fisher: the expectation replaced by the mean over ``m`` labels drawn
  from the model's likelihood, an unbiased estimate of the exact Fisher;
- empirical Fisher: :math:`\Lambda_n = \nabla\ell(f_n, y_n)\nabla\ell(f_n, y_n)^\top`
  at the true labels, i.e. :math:`c\sum_n g_n g_n^\top` with per-sample gradients
  :math:`g_n` (Kunstner, Hennig & Balles 2019, "Limitations of the empirical Fisher
  approximation", NeurIPS).

Each carries the loss's normalization: for ``reduction="mean"`` the factor
:math:`1/(N T)` with ``T`` loss terms per sample, as for the GGN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from curvlab._seeds import derive_seed
from curvlab.operators.ggn import OutputCurvatureOperator


def _rank_one_matmat(G: Tensor, U: Tensor) -> Tensor:
    r"""Apply :math:`\frac1m\sum_s g_{ns} g_{ns}^\top` per sample ``n``.

    Args:
        G: Gradients ``(m, B, ...)``.
        U: Columns ``(k, B, ...)``.

    Returns:
        ``(k, B, ...)``.
    """
    m, B = G.shape[:2]
    k = U.shape[0]
    Gf = G.reshape(m, B, -1)
    coeffs = torch.einsum("sbo,kbo->ksb", Gf, U.reshape(k, B, -1))
    out = torch.einsum("ksb,sbo->kbo", coeffs, Gf) / m
    return out.reshape(U.shape)


class FisherOperator(OutputCurvatureOperator):
    r"""The type-2 Fisher information of the model's likelihood.

    With ``mc_samples=None`` the exact Fisher, which equals the GGN for
    ``CrossEntropyLoss``, ``MSELoss`` (a Gaussian likelihood with variance 1/2)
    and ``BCEWithLogitsLoss``. With ``mc_samples=m`` a Monte-Carlo estimate from
    ``m`` labels per sample drawn from the model's predictive distribution; the
    labels of batch ``i`` are drawn from a generator seeded by ``(seed, i)``, so
    the operator is a fixed matrix: every product uses the same labels.

    Args:
        model: The model.
        loss_fn: ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss``.
        data: Re-iterable ``(X, y)`` batches.
        params: Parameter selection (see ``EmpiricalRiskOperator``).
        mc_samples: ``None`` for the exact Fisher, or a positive number of samples.
        seed: Seed of the Monte-Carlo labels.
        **options: Further options of ``EmpiricalRiskOperator``.

    Raises:
        ValueError: If ``mc_samples`` is not ``None`` or a positive int.
    """

    def __init__(
        self, model, loss_fn, data, params=None, *, mc_samples=None, seed=0, **options
    ):
        if mc_samples is not None and (
            not isinstance(mc_samples, int)
            or isinstance(mc_samples, bool)
            or mc_samples < 1
        ):
            raise ValueError(
                "mc_samples must be None (exact) or a positive int. "
                f"Got {mc_samples!r}."
            )
        self.mc_samples = mc_samples
        self.seed = int(seed)
        super().__init__(model, loss_fn, data, params, **options)

    def _constructor_options(self) -> dict:
        return {
            **super()._constructor_options(),
            "mc_samples": self.mc_samples,
            "seed": self.seed,
        }

    def _output_matmat(self, output, y, U, index):
        if self.mc_samples is None:
            return self.output_loss.hessian_matmat(output, U)
        return _rank_one_matmat(self._sampled_gradients(output, index), U)

    def _sampled_gradients(self, output: Tensor, index: int) -> Tensor:
        """Loss gradients at labels drawn for batch ``index`` (seeded by its index)."""
        generator = torch.Generator(device=output.device)
        generator.manual_seed(derive_seed(self.seed, index))
        return self.output_loss.sampled_gradients(output, self.mc_samples, generator)

    def _output_matmat_function(self, X: Tensor, y: Tensor, index: int):
        if self.mc_samples is None or not self.compile:
            return super()._output_matmat_function(X, y, index)
        # A torch.Generator cannot run inside a compiled functorch transform: draw
        # the labels eagerly from one extra forward pass (same output, same labels
        # as in eager mode) and hand their gradients to the compiled product.
        with torch.no_grad():
            G = self._sampled_gradients(self._forward(self._param_dict(), X), index)

        def output_matmat(output, U):
            return _rank_one_matmat(G, U) * self.output_loss.batch_scale(output)

        return output_matmat


class EmpiricalFisherOperator(OutputCurvatureOperator):
    r"""The empirical Fisher :math:`c\sum_n g_n g_n^\top` from per-sample gradients.

    :math:`g_n` is the gradient of sample ``n``'s loss (summed over its terms) at
    its true label, and ``c`` the loss's normalization (``1/(N T)`` for ``mean``,
    ``1`` for ``sum``). Per-sample gradients are never stored: the product runs in
    output space as :math:`J_n^\top \nabla\ell_n (\nabla\ell_n^\top J_n v)`.
    See :class:`~curvlab.operators.empirical_risk.EmpiricalRiskOperator` for the
    arguments.
    """

    def _output_matmat(self, output, y, U, index):
        G = self.output_loss.gradient(output, y).unsqueeze(0)
        return _rank_one_matmat(G, U)

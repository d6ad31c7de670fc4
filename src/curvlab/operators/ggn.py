r"""Generalized Gauss-Newton: curvature through the model's output.

Operators of the form

.. math::
    G = \sum_b w_b\, c_b \sum_{n} J_n^\top \Lambda_n J_n ,

with :math:`J_n` the Jacobian of sample ``n``'s output with respect to the
parameters and :math:`\Lambda_n` an output-space matrix, share one per-batch
product: ``torch.func.jvp`` for :math:`J V` (the ``k`` columns vectorized by
``vmap``), an analytic :math:`\Lambda`, and the ``vjp`` of one forward pass for
:math:`J^\top U`. No second derivative is taken through the loss, which avoids
the double backward through log-softmax. The GGN takes
:math:`\Lambda_n = \nabla^2_f \ell(f_n, y_n)` (Schraudolph 2002, "Fast curvature
matrix-vector products for second-order gradient descent", Neural Computation);
the Fisher operators in :mod:`curvlab.operators.fisher` take other choices.
"""

from __future__ import annotations

from torch import Tensor
from torch.func import functional_call, jvp, vjp, vmap

from curvlab._typing import TensorList
from curvlab.operators.empirical_risk import EmpiricalRiskOperator
from curvlab.operators.losses import OutputSpaceLoss


class OutputCurvatureOperator(EmpiricalRiskOperator):
    r"""Base of :math:`J^\top \Lambda J` operators; subclasses define ``Lambda``."""

    is_psd = True

    def __init__(self, model, loss_fn, data, params=None, **options):
        """Set up the data loop and the loss's output-space derivatives.

        Args:
            model: The model.
            loss_fn: ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss``.
            data: Re-iterable ``(X, y)`` batches.
            params: Parameter selection (see ``EmpiricalRiskOperator``).
            **options: Further options of ``EmpiricalRiskOperator``.
        """
        self.output_loss = OutputSpaceLoss(loss_fn)
        super().__init__(model, loss_fn, data, params, **options)

    def _output_matmat(
        self, output: Tensor, y: Tensor, U: Tensor, index: int
    ) -> Tensor:
        """Multiply ``Lambda`` (unscaled) onto output-space columns ``U`` (k, B, ...).

        Raises:
            NotImplementedError: Always; subclasses override it.
        """
        raise NotImplementedError

    def _matmat_batch(
        self, X: Tensor, y: Tensor, M: TensorList, index: int
    ) -> TensorList:
        params = self._param_dict()
        columns = tuple(m.movedim(-1, 0) for m in M)
        product = self._batch_function(_output_curvature_columns)
        out = product(
            self.model,
            tuple(params),
            tuple(params.values()),
            X,
            columns,
            self._output_matmat_function(X, y, index),
        )
        return [o.movedim(0, -1) for o in out]

    def _output_matmat_function(self, X: Tensor, y: Tensor, index: int):
        """Return ``(output, U) -> scale * Lambda U`` for batch ``index``."""
        return lambda output, U: self._scaled_output_matmat(output, y, U, index)

    def _scaled_output_matmat(self, output, y, U, index):
        scale = self.output_loss.batch_scale(output)
        return self._output_matmat(output, y, U, index) * scale


def _output_curvature_columns(model, names, primals, X, columns, output_matmat):
    """``J^T Lambda J`` of one batch times ``k`` columns ``(k, *p.shape)``."""

    def forward(*theta):
        return functional_call(model, dict(zip(names, theta, strict=True)), (X,))

    output, pullback = vjp(forward, *primals)

    def push(*v):
        return jvp(forward, primals, v)[1]

    JV = vmap(push)(*columns)
    U = output_matmat(output.detach(), JV)
    return vmap(pullback)(U)


class GGNOperator(OutputCurvatureOperator):
    r"""The generalized Gauss-Newton :math:`\sum_n J_n^\top \nabla^2_f\ell\, J_n`.

    Positive semi-definite for convex losses. See
    :class:`~curvlab.operators.empirical_risk.EmpiricalRiskOperator` for the
    arguments; the loss must be ``CrossEntropyLoss``, ``MSELoss`` or
    ``BCEWithLogitsLoss``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2).double()
        >>> X, y = torch.randn(8, 3).double(), torch.randint(0, 2, (8,))
        >>> op = GGNOperator(model, torch.nn.CrossEntropyLoss(), [(X, y)])
        >>> bool(torch.linalg.eigvalsh(op.to_dense()).min() > -1e-12)
        True
    """

    def _output_matmat(self, output, y, U, index):
        return self.output_loss.hessian_matmat(output, U)

r"""Kronecker-factored curvature: KFAC and EKFAC, with exactly damped inverses.

KFAC (Martens & Grosse 2015) approximates the GGN or Fisher :math:`F` of the
data-set loss by a block-diagonal matrix with one Kronecker product per layer.
For a ``Linear`` or ``Conv2d`` layer with weight :math:`W` (``d_out x d_in``;
a convolution's weight seen as ``C_out x C_in k_h k_w``), inputs :math:`a_{n,s}`
(unfolded patches for a convolution) and output gradients :math:`g_{n,s}` at the
``S`` positions ``s`` where the layer is applied,

.. math::
    F_W \approx G \otimes A, \qquad
    A = \frac{1}{N S}\sum_{n,s} a_{n,s} a_{n,s}^\top, \qquad
    G = c \sum_{n,s,k} g_{n,s,k}\, g_{n,s,k}^\top

("expand"; "reduce" uses :math:`\bar a_n = \frac1S \sum_s a_{n,s}` and
:math:`\bar g_{n,k} = \sum_s g_{n,s,k}` instead, Eschenhagen et al. 2023),
acting on the weight flattened as PyTorch flattens it (row-major, so that
:math:`(G \otimes A)\,\mathrm{vec}(M) = \mathrm{vec}(G M A)`). The normalization
``c`` is the one of the other operators: :math:`1/(N T)` for ``reduction="mean"``
(``T`` loss terms per sample), 1 for ``"sum"``. The columns :math:`g_{n,s,k}`
are gradients of the loss terms with respect to the layer's output when
backpropagating, per ``fisher_type``:

- ``"type-2"``: the ``C`` columns of a square root of the loss Hessian
  :math:`\nabla^2_f \ell` (exact GGN factors; ``C`` backward passes per batch
  that stop at the layer outputs);
- ``"mc"``: ``mc_samples`` gradients at labels drawn from the model's likelihood
  (the same labels as :class:`~curvlab.operators.fisher.FisherOperator` with the
  same ``seed``), scaled by ``1/mc_samples``;
- ``"empirical"``: the gradient at the true labels;
- ``"forward-only"``: no backward pass; :math:`G = I` and no loss scale, so that
  :math:`A \otimes I` is the layer-input second moment seen by every output
  (the FOOF/ISAAC preconditioners, Benzing 2022; Petersen et al. 2023). It does
  not depend on the loss, the labels or the reduction.

With several loss terms per sample (a sequence output ``(B, T, C)``, or
cross-entropy logits ``(B, C, T)``), each backpropagated column covers all ``T``
terms of a sample at once, as in curvlinops, so :math:`G` then contains cross
terms between the positions of one sample.

A bias is a weight column with input 1: with ``separate_weight_and_bias=True``
(default) its block is :math:`G \otimes [1] = G`; with ``False`` weight and bias
share one factor built from inputs :math:`[a; 1]`.

References:
    - Martens & Grosse (2015), "Optimizing neural networks with
      Kronecker-factored approximate curvature", ICML.
    - Grosse & Martens (2016), "A Kronecker-factored approximate Fisher matrix for
      convolution layers", ICML.
    - George, Laurent, Bouthillier, Ballas & Vincent (2018), "Fast approximate
      natural gradient descent in a Kronecker-factored eigenbasis", NeurIPS.
    - Eschenhagen, Immer, Turner, Schneider & Hennig (2023), "Kronecker-factored
      approximate curvature for modern neural network architectures", NeurIPS.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy
import torch
from torch import Tensor, nn

from curvlab._checks import check_nonneg
from curvlab._typing import TensorList
from curvlab.operators._kfac_factors import (
    KFACLayer,
    LayerCapture,
    eigenvalue_correction,
    find_layers,
    gram,
    layer_inputs,
    output_gradients,
)
from curvlab.operators.base import CurvatureOperator
from curvlab.operators.empirical_risk import EmpiricalRiskOperator, _fingerprint
from curvlab.operators.losses import OutputSpaceLoss

FISHER_TYPES = ("type-2", "mc", "empirical", "forward-only")
KFAC_APPROXIMATIONS = ("expand", "reduce")
INVERSE_METHODS = ("exact", "heuristic")


@dataclass
class KroneckerBlock:
    r"""One diagonal block :math:`G \otimes A` on some of one layer's parameters.

    Attributes:
        layer: Module name of the layer.
        positions: Positions of the parameters in the operator's list (the weight
            first when both are present).
        kinds: ``"weight"`` or ``"bias"`` for each position.
        G: Output-side factor ``(d_out, d_out)``.
        A: Input-side factor ``(d_in, d_in)``, ``(d_in + 1, d_in + 1)`` for a
            weight with its bias, ``[[1]]`` for a bias alone.
    """

    layer: str
    positions: tuple[int, ...]
    kinds: tuple[str, ...]
    G: Tensor
    A: Tensor


def _gather(block: KroneckerBlock, shapes, M: TensorList) -> Tensor:
    """Collect a block's columns as a ``(d_out, d_in, k)`` tensor."""
    parts = []
    for pos in block.positions:
        m = M[pos]
        parts.append(m.reshape(shapes[pos][0], -1, m.shape[-1]))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _scatter(block: KroneckerBlock, shapes, R: Tensor, out: list):
    """Write ``(d_out, d_in, k)`` results back into parameter-shaped entries."""
    k = R.shape[-1]
    start = 0
    for pos in block.positions:
        shape = shapes[pos]
        width = math.prod(shape[1:])
        out[pos] = R[:, start : start + width].reshape(*shape, k)
        start += width


def _kron_matmat(left: Tensor, right: Tensor, X: Tensor) -> Tensor:
    """Return ``left @ X[..., c] @ right`` for every column ``c`` of ``(o, i, k)``.

    Two GEMMs on the whole block (not ``k`` small ones): ``left`` on the flattened
    ``(o, i k)`` matrix, ``right`` on the ``(o k, i)`` rows.
    """
    o, i, k = X.shape
    Y = (left @ X.reshape(o, i * k)).reshape(o, i, k)
    if k == 1:
        return (Y.reshape(o, i) @ right).unsqueeze(-1)
    return (Y.transpose(1, 2) @ right).transpose(1, 2)


def _eigen_matmat(QG: Tensor, QA: Tensor, scale: Tensor, X: Tensor) -> Tensor:
    r"""Apply :math:`(Q_G \otimes Q_A)\,\mathrm{diag}(s)\,(Q_G \otimes Q_A)^\top`."""
    Y = _kron_matmat(QG.mT, QA, X) * scale.unsqueeze(-1)
    return _kron_matmat(QG, QA.mT, Y)


def _generator(seed: int, index: int, device) -> torch.Generator:
    """The generator of batch ``index``, seeded as the Monte-Carlo Fisher's."""
    generator = torch.Generator(device=device)
    state = numpy.random.SeedSequence([seed, index]).generate_state(2)
    generator.manual_seed(int(state[0]) << 32 | int(state[1]))
    return generator


class _KroneckerOperator(EmpiricalRiskOperator):
    """Shared data pass, checks and spectral functions of KFAC and EKFAC."""

    is_psd = True

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        data: Iterable,
        params: Sequence[Tensor | str] | None = None,
        *,
        fisher_type: str = "type-2",
        mc_samples: int = 1,
        seed: int = 0,
        kfac_approx: str = "expand",
        separate_weight_and_bias: bool = True,
        **options,
    ):
        if fisher_type not in FISHER_TYPES:
            raise ValueError(
                f"fisher_type must be one of {FISHER_TYPES}. Got {fisher_type!r}."
            )
        if kfac_approx not in KFAC_APPROXIMATIONS:
            raise ValueError(
                f"kfac_approx must be one of {KFAC_APPROXIMATIONS}. "
                f"Got {kfac_approx!r}."
            )
        if (
            not isinstance(mc_samples, int)
            or isinstance(mc_samples, bool)
            or mc_samples < 1
        ):
            raise ValueError(f"mc_samples must be a positive int. Got {mc_samples!r}.")
        if fisher_type != "mc" and mc_samples != 1:
            raise ValueError(
                f"mc_samples applies to fisher_type='mc' only. Got mc_samples="
                f"{mc_samples} with fisher_type={fisher_type!r}."
            )
        if options.get("compile"):
            raise ValueError(
                "compile=True has no effect on Kronecker-factored operators (their "
                "products use the stored factors); leave it False."
            )
        self.output_loss = OutputSpaceLoss(loss_fn)
        self.fisher_type = fisher_type
        self.mc_samples = mc_samples
        self.seed = int(seed)
        self.kfac_approx = kfac_approx
        self.separate_weight_and_bias = bool(separate_weight_and_bias)
        super().__init__(model, loss_fn, data, params, **options)
        self.layers = find_layers(model, self.param_names)
        self._eigen_cache: list | None = None
        self.blocks = self._compute_factors()

    def _constructor_options(self) -> dict:
        return {
            **super()._constructor_options(),
            "fisher_type": self.fisher_type,
            "mc_samples": self.mc_samples,
            "seed": self.seed,
            "kfac_approx": self.kfac_approx,
            "separate_weight_and_bias": self.separate_weight_and_bias,
        }

    # ------------------------------------------------------------ data passes
    def _joint(self, layer: KFACLayer) -> bool:
        return (
            not self.separate_weight_and_bias
            and layer.weight is not None
            and layer.bias is not None
        )

    def _output_columns(self, output: Tensor, X: Tensor, y: Tensor, index: int):
        """Output-space columns to backpropagate, and their weight in ``G``."""
        scale = self._batch_weight(X) * self.output_loss.batch_scale(output)
        if self.fisher_type == "type-2":
            return self.output_loss.hessian_sqrt_columns(output), scale
        if self.fisher_type == "mc":
            generator = _generator(self.seed, index, output.device)
            columns = self.output_loss.sampled_gradients(
                output, self.mc_samples, generator
            )
            return columns, scale / self.mc_samples
        return self.output_loss.gradient(output, y).unsqueeze(0), scale

    def _data_pass(self, on_input, on_gradients, need_gradients: bool):
        """One pass over the data with the layer hooks installed.

        ``on_input(layer, x)`` receives each layer's input during the forward
        pass; ``on_gradients(layer, g, scale)`` the ``(B, S, d_out)`` output
        gradients of each backpropagated column.
        """
        check = self._check_pending
        fingerprints = []
        capture = LayerCapture(self.layers, on_input, probes=need_gradients)
        with self._model_mode(), capture:
            for index, batch in enumerate(self.data):
                X, y = self._prepare(batch, index, check)
                if check:
                    fingerprints.append(_fingerprint(X, y))
                capture.start_batch()
                with torch.set_grad_enabled(need_gradients):
                    output = self.model(X)
                    capture.finish_forward()
                    if not need_gradients:
                        continue
                    columns, scale = self._output_columns(output.detach(), X, y, index)
                    for grads in capture.output_gradients(output, columns):
                        for layer in self.layers:
                            g = output_gradients(layer, grads[layer.name])
                            on_gradients(layer, g, scale)
        if check:
            with self._model_mode():
                self._check_determinism(fingerprints)

    def _compute_factors(self) -> list[KroneckerBlock]:
        """Accumulate ``A`` and ``G`` of every layer in one pass over the data."""
        A: dict[str, Tensor] = {}
        G: dict[str, Tensor] = {}
        N = self.num_data
        reduce = self.kfac_approx == "reduce"

        def on_input(layer, x):
            if layer.weight is None:
                return
            a = layer_inputs(layer, x, self._joint(layer))
            if reduce:
                a = a.mean(1, keepdim=True)
            _accumulate(A, layer.name, gram(a), 1.0 / (N * a.shape[1]))

        def on_gradients(layer, g, scale):
            if reduce:
                g = g.sum(1, keepdim=True)
            _accumulate(G, layer.name, gram(g), scale)

        forward_only = self.fisher_type == "forward-only"
        self._data_pass(on_input, on_gradients, need_gradients=not forward_only)
        blocks = []
        for layer in self.layers:
            if forward_only:
                G[layer.name] = torch.eye(
                    layer.out_dim, dtype=self.dtype, device=self.device
                )
            blocks.extend(self._layer_blocks(layer, G[layer.name], A.get(layer.name)))
        return blocks

    def _layer_blocks(self, layer, G, A) -> list[KroneckerBlock]:
        one = torch.ones(1, 1, dtype=self.dtype, device=self.device)
        if self._joint(layer):
            return [
                KroneckerBlock(
                    layer.name, (layer.weight, layer.bias), ("weight", "bias"), G, A
                )
            ]
        blocks = []
        if layer.weight is not None:
            blocks.append(
                KroneckerBlock(layer.name, (layer.weight,), ("weight",), G, A)
            )
        if layer.bias is not None:
            blocks.append(KroneckerBlock(layer.name, (layer.bias,), ("bias",), G, one))
        return blocks

    # ---------------------------------------------------------------- spectra
    def _eigen(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per block ``(Q_G, Q_A, E)``: the operator is ``Q diag(E) Q^T`` there.

        Raises:
            NotImplementedError: Always; subclasses override it.
        """
        raise NotImplementedError

    def _check_invertible(self, damping: float, what: str):
        """Refuse an undamped logdet/det/inverse of a singular matrix.

        Raises:
            ValueError: For cross-entropy without damping, or a singular matrix.
        """
        if damping > 0:
            return
        if (
            self.output_loss.kind == "cross_entropy"
            and self.fisher_type != "forward-only"
        ):
            raise ValueError(
                f"{what} needs damping > 0 with CrossEntropyLoss: the softmax "
                "Hessian annihilates the all-ones direction (every output gradient "
                "sums to zero over the classes), so the output layer's factor G and "
                "with it the Kronecker matrix are singular. Got damping=0."
            )
        smallest = min(float(E.min()) for _, _, E in self._eigen())
        largest = max(float(E.max()) for _, _, E in self._eigen())
        if smallest <= torch.finfo(self.dtype).eps * largest:
            raise ValueError(
                f"{what} needs damping > 0: the Kronecker matrix is singular to "
                f"working precision (smallest eigenvalue {smallest:.3g}, largest "
                f"{largest:.3g}). Got damping=0."
            )

    def logdet(self, damping: float = 0.0) -> Tensor:
        r"""Return :math:`\log\det(K + \delta I)` from the factors' eigenvalues.

        Args:
            damping: :math:`\delta \ge 0`. Required (> 0) for cross-entropy.

        Returns:
            A scalar tensor.

        Raises:
            ValueError: For damping that is negative or NaN, or zero where the
                matrix is singular (always for cross-entropy).
            TypeError: If damping is not a real number.
        """
        damping = check_nonneg("damping", damping)
        self._check_invertible(damping, "logdet")
        return sum(torch.log(E + damping).sum() for _, _, E in self._eigen())

    def det(self, damping: float = 0.0) -> Tensor:
        r"""Return :math:`\det(K + \delta I) = \exp(\text{logdet})`.

        The determinant of a large matrix over- or underflows easily; prefer
        :meth:`logdet`.

        Args:
            damping: :math:`\delta \ge 0`. Required (> 0) for cross-entropy.

        Returns:
            A scalar tensor.

        Raises:
            ValueError: As :meth:`logdet`.
            TypeError: If damping is not a real number.
        """
        return torch.exp(self.logdet(damping))

    def trace(self) -> Tensor:
        """Return the trace from the factors.

        Returns:
            A scalar tensor.
        """
        return sum(E.sum() for _, _, E in self._eigen())

    def frobenius_norm(self) -> Tensor:
        """Return the Frobenius norm from the factors.

        Returns:
            A scalar tensor.
        """
        return torch.sqrt(sum(E.square().sum() for _, _, E in self._eigen()))

    def _inverse_scales(self, damping: float, method: str) -> list[Tensor]:
        return [1.0 / (E + damping) for _, _, E in self._eigen()]

    def inverse(self, damping: float, *, method: str = "exact") -> KFACInverseOperator:
        r"""Return the damped inverse as an operator.

        Args:
            damping: :math:`\delta \ge 0`; required (> 0) for cross-entropy.
            method: ``"exact"`` (default) for :math:`(K + \delta I)^{-1}` through the
                factors' eigendecompositions; ``"heuristic"`` (KFAC only) for the
                factored damping of Martens & Grosse (2015, §6.3).

        Returns:
            An operator with the protocol of the curvature operators.

        Raises:
            ValueError: For a bad damping or method, or zero damping where the
                matrix is singular (always for cross-entropy).
            TypeError: If damping is not a real number.
        """
        damping = check_nonneg("damping", damping)
        if method not in INVERSE_METHODS:
            raise ValueError(
                f"method must be one of {INVERSE_METHODS}. Got {method!r}."
            )
        self._check_invertible(damping, "inverse")
        eigen = self._eigen()
        scales = self._inverse_scales(damping, method)
        return KFACInverseOperator(
            self.param_shapes,
            self.blocks,
            [(QG, QA, s) for (QG, QA, _), s in zip(eigen, scales, strict=True)],
            damping=damping,
            method=method,
            dtype=self.dtype,
            device=self.device,
        )

    def block(self, names_or_params: Sequence[Tensor | str]) -> _KroneckerOperator:
        """Return the diagonal block on a subset of this operator's parameters.

        When the subset holds whole Kronecker blocks (both or neither of a
        layer's weight and bias when they are joint), the block reuses the stored
        factors (and EKFAC scales) and costs nothing; otherwise the approximation
        is rebuilt on the subset with another pass over the data, which for KFAC
        equals the corresponding diagonal block.

        Args:
            names_or_params: Parameter names or tensors, all among this operator's.

        Returns:
            An operator of the same kind on the subset, parameters in the order
            given.

        Raises:
            ValueError: If a parameter is not among this operator's parameters.
        """
        names = self._block_names(names_or_params)
        new_position = {self.param_names.index(n): i for i, n in enumerate(names)}
        kept = [
            i
            for i, block in enumerate(self.blocks)
            if all(p in new_position for p in block.positions)
        ]
        covered = {p for i in kept for p in self.blocks[i].positions}
        if len(covered) != len(names):
            return super().block(names)
        sub = copy.copy(self)
        CurvatureOperator.__init__(
            sub,
            [self.param_shapes[self.param_names.index(n)] for n in names],
            dtype=self.dtype,
            device=self.device,
            max_cols=self.max_cols,
        )
        sub.param_names = list(names)
        sub.blocks = [
            dataclasses.replace(
                self.blocks[i],
                positions=tuple(new_position[p] for p in self.blocks[i].positions),
            )
            for i in kept
        ]
        sub.layers = [
            la for la in self.layers if any(b.layer == la.name for b in sub.blocks)
        ]
        if self._eigen_cache is not None:
            sub._eigen_cache = [self._eigen_cache[i] for i in kept]
        return sub

    def _matmat(self, M: TensorList) -> TensorList:
        out: list = [None] * len(M)
        for block, (QG, QA, E) in zip(self.blocks, self._eigen(), strict=True):
            X = _gather(block, self.param_shapes, M)
            _scatter(block, self.param_shapes, _eigen_matmat(QG, QA, E, X), out)
        return out


def _accumulate(store: dict, key: str, value: Tensor, scale: float):
    if key in store:
        store[key].add_(value, alpha=scale)
    else:
        store[key] = value * scale


def _eigh_psd(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Eigendecomposition of a PSD factor, rounding-level negatives set to 0."""
    values, vectors = torch.linalg.eigh(matrix)
    return values.clamp_min(0), vectors


class KFACOperator(_KroneckerOperator):
    r"""KFAC: per layer a Kronecker product :math:`G \otimes A` (see the module).

    The factors are computed once, in one pass over the data, when the operator
    is built (with the model as it is then); products, :meth:`trace`,
    :meth:`logdet`, :meth:`det`, :meth:`frobenius_norm` and :meth:`inverse` use
    only the stored factors. :meth:`block` gives the diagonal block on a
    parameter subset (from the stored factors when it holds whole Kronecker
    blocks).

    **Damped inverses.** Adding damping to each factor,
    :math:`(A + \alpha I)^{-1} \otimes (G + \beta I)^{-1}`, is not the inverse of
    :math:`K + \delta I`: it adds the cross terms :math:`\alpha G`,
    :math:`\beta A`, and how :math:`\alpha, \beta` split :math:`\delta` depends on
    a scale shared between :math:`A` and :math:`G` that carries no meaning. The
    default, ``method="exact"``, inverts :math:`K + \delta I` itself through the
    factors' eigendecompositions,
    :math:`(Q_G \otimes Q_A)\,\mathrm{diag}(1/(\lambda_G \lambda_A^\top +
    \delta))\,(Q_G \otimes Q_A)^\top`, at the same cost as the factored form; it
    is the default because it is the inverse of the matrix that :meth:`logdet`,
    CG and a Laplace approximation on ``K + δI`` refer to.
    ``method="heuristic"`` gives Martens & Grosse's (2015, §6.3) factored damping
    :math:`(G + \frac{\gamma}{\pi} I)^{-1} \otimes (A + \pi\gamma I)^{-1}` with
    :math:`\gamma = \sqrt\delta` and
    :math:`\pi = \sqrt{(\mathrm{tr}A / d_A) / (\mathrm{tr}G / d_G)}`, per block.

    Args:
        model: The model; its trainable parameters (or ``params``) must belong to
            ``Linear`` or ``Conv2d`` layers, each called once per forward pass.
        loss_fn: ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss``,
            reduction ``"mean"`` or ``"sum"``.
        data: Re-iterable ``(X, y)`` batches.
        params: Parameter selection (see ``EmpiricalRiskOperator``).
        fisher_type: ``"type-2"`` (default; exact GGN factors), ``"mc"``,
            ``"empirical"`` or ``"forward-only"`` (see the module).
        mc_samples: Labels drawn per sample for ``fisher_type="mc"``.
        seed: Seed of the Monte-Carlo labels (per batch, as ``FisherOperator``).
        kfac_approx: ``"expand"`` (default) or ``"reduce"`` for layers applied at
            many positions (convolutions, sequences).
        separate_weight_and_bias: Give a layer's weight and bias separate blocks
            (default) or one joint block.
        **options: Further options of ``EmpiricalRiskOperator`` (``max_cols``,
            ``num_data``, ``train_mode``, ``check_deterministic``).

    Raises:
        ValueError: For a bad option, weight tying, or a layer not called once.
        NotImplementedError: For parameters of unsupported layers or losses.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2).double()
        >>> X, y = torch.randn(1, 3).double(), torch.tensor([1])
        >>> loss_fn = torch.nn.CrossEntropyLoss()
        >>> op = KFACOperator(model, loss_fn, [(X, y)])
        >>> from curvlab.operators import GGNOperator
        >>> ggn = GGNOperator(model, loss_fn, [(X, y)], params=["weight"])
        >>> K = op.block(["weight"]).to_dense()
        >>> bool(torch.allclose(K, ggn.to_dense()))  # exact for one data point
        True
    """

    def _eigen(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        if self._eigen_cache is None:
            cache = []
            for block in self.blocks:
                lg, QG = _eigh_psd(block.G)
                la, QA = _eigh_psd(block.A)
                cache.append((QG, QA, lg[:, None] * la[None, :]))
            self._eigen_cache = cache
        return self._eigen_cache

    def _matmat(self, M: TensorList) -> TensorList:
        out: list = [None] * len(M)
        for block in self.blocks:
            X = _gather(block, self.param_shapes, M)
            _scatter(block, self.param_shapes, _kron_matmat(block.G, block.A, X), out)
        return out

    def trace(self) -> Tensor:
        r"""Return :math:`\sum_{\text{blocks}} \mathrm{tr}(G)\,\mathrm{tr}(A)`.

        Returns:
            A scalar tensor.
        """
        return sum(torch.trace(b.G) * torch.trace(b.A) for b in self.blocks)

    def frobenius_norm(self) -> Tensor:
        r"""Return :math:`\sqrt{\sum_{\text{blocks}} \|G\|_F^2 \|A\|_F^2}`.

        Returns:
            A scalar tensor.
        """
        return torch.sqrt(
            sum(b.G.square().sum() * b.A.square().sum() for b in self.blocks)
        )

    def _inverse_scales(self, damping: float, method: str) -> list[Tensor]:
        if method == "exact":
            return super()._inverse_scales(damping, method)
        gamma = math.sqrt(damping)
        scales = []
        for block in self.blocks:
            lg, _ = _eigh_psd(block.G)
            la, _ = _eigh_psd(block.A)
            mean_g = float(torch.trace(block.G)) / block.G.shape[0]
            mean_a = float(torch.trace(block.A)) / block.A.shape[0]
            pi = math.sqrt(mean_a / mean_g) if mean_a > 0 and mean_g > 0 else 1.0
            scales.append(1.0 / ((lg + gamma / pi)[:, None] * (la + gamma * pi)))
        return scales


class EKFACOperator(_KroneckerOperator):
    r"""EKFAC: KFAC's eigenbasis with corrected diagonal scales (George et al. 2018).

    With the eigendecompositions :math:`A = Q_A \Lambda_A Q_A^\top` and
    :math:`G = Q_G \Lambda_G Q_G^\top` of a block's KFAC factors, EKFAC is
    :math:`(Q_G \otimes Q_A)\,\mathrm{diag}(s)\,(Q_G \otimes Q_A)^\top` with

    .. math::
        s = c \sum_{n,k} \big(Q_G^\top\, \Gamma_{n,k}\, Q_A\big)^{\circ 2},
        \qquad \Gamma_{n,k} = \sum_s g_{n,s,k}\, a_{n,s}^\top ,

    the squared per-example gradients in the Kronecker eigenbasis. Convention for
    layers applied at many positions (as curvlinops): :math:`\Gamma_{n,k}` is the
    per-example gradient summed over the positions, whatever ``kfac_approx``,
    which only chooses the factors (and so the basis). For models with ``(B, C)``
    outputs, :math:`s` is then the diagonal, in that basis, of the exact layer
    block of the matrix ``fisher_type`` names (GGN for ``"type-2"``, the MC Fisher
    with the same ``seed`` for ``"mc"``, the empirical Fisher), i.e. the best
    diagonal there in Frobenius norm, also for convolutions. (For outputs with
    more positions, ``"type-2"`` backpropagates each output column for all
    positions at once, as for KFAC, which adds cross terms between positions.) A
    second pass over the data computes :math:`s` after the factors.

    The arguments are those of :class:`KFACOperator`; ``fisher_type`` cannot be
    ``"forward-only"`` (no gradients to correct the scales with), and
    :meth:`inverse` supports only ``method="exact"``.

    Raises:
        ValueError: For ``fisher_type="forward-only"`` or as ``KFACOperator``.
        NotImplementedError: As ``KFACOperator``.
    """

    def __init__(self, model, loss_fn, data, params=None, **options):
        if options.get("fisher_type") == "forward-only":
            raise ValueError(
                "EKFACOperator corrects the eigenvalues with per-example gradients; "
                "fisher_type='forward-only' has none. Got fisher_type='forward-only'."
            )
        super().__init__(model, loss_fn, data, params, **options)

    def _compute_factors(self) -> list[KroneckerBlock]:
        blocks = super()._compute_factors()
        layer_bases: dict[str, tuple[Tensor, Tensor | None]] = {}
        for block in blocks:
            if "weight" in block.kinds or block.layer not in layer_bases:
                QG = _eigh_psd(block.G)[1]
                QA = _eigh_psd(block.A)[1] if "weight" in block.kinds else None
                layer_bases[block.layer] = (QG, QA)
        rotated: dict[str, Tensor] = {}
        scales: dict[int, Tensor] = {}
        by_layer: dict[str, list[int]] = {}
        for i, block in enumerate(blocks):
            by_layer.setdefault(block.layer, []).append(i)

        def on_input(layer, x):
            QA = layer_bases[layer.name][1]
            if QA is not None:
                rotated[layer.name] = layer_inputs(layer, x, self._joint(layer)) @ QA

        def on_gradients(layer, g, scale):
            g_rot = g @ layer_bases[layer.name][0]
            for i in by_layer[layer.name]:
                a_rot = rotated[layer.name] if "weight" in blocks[i].kinds else None
                _accumulate(scales, i, eigenvalue_correction(g_rot, a_rot), scale)

        self._data_pass(on_input, on_gradients, need_gradients=True)
        self._eigen_cache = [
            (layer_bases[b.layer][0], layer_bases[b.layer][1], scales[i])
            if "weight" in b.kinds
            else (layer_bases[b.layer][0], b.A, scales[i])
            for i, b in enumerate(blocks)
        ]
        return blocks

    def _eigen(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        return self._eigen_cache

    def _inverse_scales(self, damping: float, method: str) -> list[Tensor]:
        if method != "exact":
            raise ValueError(
                "EKFACOperator.inverse supports method='exact' only: the heuristic "
                "splits damping between two Kronecker factors, and EKFAC's scales "
                f"are not a Kronecker product. Got method={method!r}."
            )
        return super()._inverse_scales(damping, method)


class KFACInverseOperator(CurvatureOperator):
    r"""A damped inverse of KFAC or EKFAC, per block in the Kronecker eigenbasis.

    Applies :math:`(Q_G \otimes Q_A)\,\mathrm{diag}(r)\,(Q_G \otimes Q_A)^\top`
    per block with the inverse scales ``r`` chosen by
    :meth:`KFACOperator.inverse`. It has the operator protocol (``shape``,
    ``dtype``, ``device``, ``@`` on ``(D,)``, ``(D, k)`` and parameter lists), so it
    can serve as a preconditioner.

    Attributes:
        damping: The damping it was built with.
        method: ``"exact"`` or ``"heuristic"``.
    """

    is_psd = True

    def __init__(self, param_shapes, blocks, eigen, *, damping, method, dtype, device):
        """Store the blocks and their eigenbases with inverse scales.

        Args:
            param_shapes: Parameter shapes of the operator.
            blocks: The operator's Kronecker blocks (for their positions).
            eigen: Per block ``(Q_G, Q_A, r)``.
            damping: The damping.
            method: How the damping was applied.
            dtype: Dtype of products.
            device: Device of products.
        """
        super().__init__(param_shapes, dtype=dtype, device=device)
        self.blocks = blocks
        self.eigen = eigen
        self.damping = damping
        self.method = method

    def _matmat(self, M: TensorList) -> TensorList:
        out: list = [None] * len(M)
        for block, (QG, QA, r) in zip(self.blocks, self.eigen, strict=True):
            X = _gather(block, self.param_shapes, M)
            _scatter(block, self.param_shapes, _eigen_matmat(QG, QA, r, X), out)
        return out

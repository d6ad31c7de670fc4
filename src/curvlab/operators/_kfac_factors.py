r"""Which layers KFAC covers, and what it records from them in a pass over the data.

KFAC approximates the curvature block of a layer with weight ``W`` of shape
``(d_out, d_in)`` (a ``Conv2d`` weight is seen as ``(C_out, C_in k_h k_w)``) by a
Kronecker product :math:`G \otimes A`: :math:`A` is the second moment of the
layer's inputs :math:`a` (the unfolded patches of a convolution), :math:`G` that of
the gradients :math:`g` of the loss with respect to the layer's outputs. This
module finds the layers, turns their inputs and output gradients into
``(B, S, d)`` arrays (``S`` positions at which the layer is applied: 1 for a
``Linear`` layer on ``(B, d_in)`` inputs, the spatial positions of a convolution,
the sequence positions of a ``Linear`` layer on ``(B, T, d_in)`` inputs), and
captures both with module hooks in one pass over the data: per batch one forward
pass and one backward pass per backpropagated output-space column.

Gradients with respect to a layer's output are taken through a zero *probe*
added to the output by a forward hook: ``autograd.grad`` with respect to the
probes gives exactly the output gradients, even when a later in-place operation
(``ReLU(inplace=True)``) overwrites the output, and it never computes weight
gradients, which KFAC does not need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass
class KFACLayer:
    """A supported layer and which of its parameters the operator acts on.

    Attributes:
        name: The layer's module name in the model.
        module: The layer.
        weight: Position of its weight in the operator's parameter list, or None.
        bias: Position of its bias in the operator's parameter list, or None.
    """

    name: str
    module: nn.Module
    weight: int | None
    bias: int | None

    @property
    def out_dim(self) -> int:
        """Number of output features (channels) ``d_out``."""
        m = self.module
        return m.out_features if isinstance(m, nn.Linear) else m.out_channels

    @property
    def in_dim(self) -> int:
        """Number of input features ``d_in`` (channels times kernel size)."""
        m = self.module
        if isinstance(m, nn.Linear):
            return m.in_features
        return m.in_channels * m.kernel_size[0] * m.kernel_size[1]


def find_layers(model: nn.Module, names: list[str]) -> list[KFACLayer]:
    """Map the selected parameters to the ``Linear``/``Conv2d`` layers that own them.

    Args:
        model: The model.
        names: Parameter names (as in ``model.named_parameters()``), in the order
            of the operator's flattened vector.

    Returns:
        The layers, in order of first appearance in ``names``.

    Raises:
        NotImplementedError: If a parameter belongs to a layer type KFAC does not
            support, or to an unsupported ``Conv2d`` configuration.
        ValueError: If a parameter is shared by several modules (weight tying).
    """
    owners: dict[int, list[tuple[str, str, nn.Module]]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((mod_name, attr, module))
    named = dict(model.named_parameters())
    layers: dict[str, KFACLayer] = {}
    for position, name in enumerate(names):
        found = owners[id(named[name])]
        if len(found) > 1:
            where = [f"{m}.{a}" if m else a for m, a, _ in found]
            raise ValueError(
                f"Parameter {name!r} is shared by several modules or module names "
                f"({where}): weight tying. KFAC needs each layer's parameters used "
                "by one layer called once per forward pass; pass params= without "
                "the tied parameter."
            )
        mod_name, attr, module = found[0]
        if not isinstance(module, SUPPORTED_LAYERS) or attr not in ("weight", "bias"):
            raise NotImplementedError(
                f"KFAC supports the weights and biases of Linear and Conv2d layers. "
                f"Parameter {name!r} belongs to a {type(module).__name__}. Select "
                "only supported layers with params=."
            )
        _check_conv(module, mod_name)
        layer = layers.setdefault(mod_name, KFACLayer(mod_name, module, None, None))
        setattr(layer, attr, position)
    return list(layers.values())


def _check_conv(module: nn.Module, name: str):
    if not isinstance(module, nn.Conv2d):
        return
    if module.groups != 1:
        raise NotImplementedError(
            f"KFAC supports Conv2d with groups=1. Layer {name!r} has "
            f"groups={module.groups}."
        )
    if module.padding_mode != "zeros":
        raise NotImplementedError(
            f"KFAC supports Conv2d with padding_mode='zeros'. Layer {name!r} has "
            f"padding_mode={module.padding_mode!r}."
        )


def _conv_padding(module: nn.Conv2d) -> list[int]:
    """Return ``F.pad`` amounts ``[left, right, top, bottom]`` of a convolution."""
    if module.padding == "valid":
        return [0, 0, 0, 0]
    if module.padding == "same":
        pads = []
        for k, d in zip(module.kernel_size[::-1], module.dilation[::-1], strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return pads
    ph, pw = module.padding
    return [pw, pw, ph, ph]


def layer_inputs(layer: KFACLayer, x: Tensor, joint: bool) -> Tensor:
    """Turn a layer's input into ``(B, S, d_in)`` rows, ``d_in + 1`` when ``joint``.

    Args:
        layer: The layer.
        x: Its input (detached).
        joint: Append a column of ones (weight and bias in one factor).

    Returns:
        The inputs per sample and position.
    """
    m = layer.module
    if isinstance(m, nn.Conv2d):
        x = functional.pad(x, _conv_padding(m))
        patches = functional.unfold(
            x, m.kernel_size, dilation=m.dilation, padding=0, stride=m.stride
        )
        a = patches.transpose(1, 2)
    else:
        a = x.reshape(x.shape[0], -1, x.shape[-1])
    if joint:
        a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
    return a


def output_gradients(layer: KFACLayer, g: Tensor) -> Tensor:
    """Turn a gradient ``(B, *out)`` of a layer's output into ``(B, S, d_out)``.

    Args:
        layer: The layer.
        g: Gradient with respect to the layer's output.

    Returns:
        The gradient per sample and position (a view where possible).
    """
    if isinstance(layer.module, nn.Conv2d):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


class LayerCapture:
    """Module hooks that record each layer's input and put a probe on its output.

    Use as a context manager around the passes; call :meth:`start_batch` before
    each forward pass and :meth:`finish_forward` after it.

    Args:
        layers: The layers to watch.
        on_input: ``on_input(layer, x)`` called with each layer's detached input
            during the forward pass (``None`` to skip), so that an in-place change
            later in the model cannot alter what is recorded.
        probes: Put gradient probes on the outputs.
    """

    def __init__(self, layers: list[KFACLayer], on_input, probes: bool):
        self.layers = layers
        self.on_input = on_input
        self.use_probes = probes
        self.probes: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles: list = []

    def __enter__(self) -> LayerCapture:
        for layer in self.layers:
            self._handles.append(
                layer.module.register_forward_hook(self._hook_for(layer))
            )
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.probes.clear()

    def _hook_for(self, layer: KFACLayer):
        def hook(module, inputs, output):
            count = self.calls.get(layer.name, 0) + 1
            self.calls[layer.name] = count
            if count > 1:
                raise ValueError(
                    f"Layer {layer.name!r} was called {count} times in one forward "
                    "pass (weight sharing across calls). KFAC needs each layer "
                    "called once; pass params= without this layer's parameters."
                )
            if self.on_input is not None:
                self.on_input(layer, inputs[0].detach())
            if not self.use_probes:
                return None
            probe = torch.zeros_like(output, requires_grad=True)
            self.probes[layer.name] = probe
            return output + probe

        return hook

    def start_batch(self):
        """Forget the previous batch's probes and call counts."""
        self.probes.clear()
        self.calls.clear()

    def finish_forward(self):
        """Check that every layer ran once in the forward pass.

        Raises:
            ValueError: If a layer was not called by the model's forward pass.
        """
        missing = [la.name for la in self.layers if self.calls.get(la.name) != 1]
        if missing:
            raise ValueError(
                f"Layer(s) {missing} did not run as modules in the forward pass (their "
                "parameters are used some other way, e.g. by a functional call), so "
                "KFAC cannot record their inputs. Pass params= without them."
            )

    def output_gradients(self, output: Tensor, columns: Tensor):
        """Backpropagate output-space columns to every layer's output, one by one.

        One backward pass per column, each computing only gradients with respect
        to the layer outputs (no weight gradients). Measured against one
        vectorized backward pass over all columns (``is_grads_batched=True``,
        i.e. ``torch.func.vmap`` over the backward): that was 1.4 times slower on
        a CNN with max pooling (vmap falls back to a loop there and then copies),
        and no faster on an MLP.

        Args:
            output: The model output of the forward pass.
            columns: ``(k, *output.shape)`` vectors to backpropagate.

        Yields:
            Per column, a dict from layer name to the ``(B, *out)`` gradient of its
            output (zeros for a layer the output does not depend on).
        """
        names = list(self.probes)
        probes = [self.probes[n] for n in names]
        last = columns.shape[0] - 1
        for c, column in enumerate(columns):
            grads = torch.autograd.grad(
                output,
                probes,
                grad_outputs=column,
                allow_unused=True,
                retain_graph=c < last,
            )
            yield {
                n: torch.zeros_like(p) if g is None else g
                for n, p, g in zip(names, probes, grads, strict=True)
            }


def gram(x: Tensor) -> Tensor:
    r"""Return :math:`\sum_{b,s} x_{b,s} x_{b,s}^\top` of ``(B, S, d)`` rows.

    Works on strided views (a convolution's transposed patches or output
    gradients) without copying them.
    """
    if x.shape[1] == 1 or x.is_contiguous():
        rows = x.reshape(-1, x.shape[-1])
        return rows.T @ rows
    return (x.mT @ x).sum(0)


def eigenvalue_correction(g_rot: Tensor, a_rot: Tensor | None) -> Tensor:
    r"""Sum of squared per-example gradients in the Kronecker eigenbasis.

    For gradients :math:`\tilde g_{n,s} = Q_G^\top g_{n,s}` and inputs
    :math:`\tilde a_{n,s} = Q_A^\top a_{n,s}` returns
    :math:`\sum_n \big(\sum_s \tilde g_{n,s} \tilde a_{n,s}^\top\big)^{\circ 2}`:
    the per-example gradient of the layer (summed over the positions ``s``) in the
    eigenbasis, squared entrywise and summed over the examples.

    Args:
        g_rot: ``(B, S, d_out)`` rotated output gradients (one column).
        a_rot: ``(B, S, d_in)`` rotated inputs, or ``None`` for a bias (inputs 1).

    Returns:
        ``(d_out, d_in)``, or ``(d_out, 1)`` for a bias.
    """
    if a_rot is None:
        return g_rot.sum(1).square().sum(0).unsqueeze(-1)
    B, S, d_out = g_rot.shape
    d_in = a_rot.shape[-1]
    if S == 1:
        return g_rot[:, 0].square().T @ a_rot[:, 0].square()
    total = g_rot.new_zeros(d_out, d_in)
    # chunk the per-example gradients (B, d_out, d_in) to bound memory
    step = max(1, (1 << 22) // max(1, d_out * d_in))
    for start in range(0, B, step):
        stop = start + step
        per_example = g_rot[start:stop].mT @ a_rot[start:stop]
        total += per_example.square().sum(0)
    return total

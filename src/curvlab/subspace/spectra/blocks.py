r"""Diagonal blocks of a curvature operator: which parameters, and the block.

The *layer Hessian* :math:`H_l = \partial^2 \mathcal L / \partial \theta_l^2` is the
diagonal block of the Hessian on one layer's parameters :math:`\theta_l`: with
:math:`P_S` the columns of the identity that pick the parameters :math:`S`,

.. math::

    A_{SS} = P_S^\top A\, P_S ,

an operator of dimension :math:`D_l = |S|`. :func:`default_blocks` chooses one
block per layer (a module with its weight and bias, or the LayerHessians
convention of Sankar et al. (2021): the weight of each Linear or convolution
layer alone) and :func:`block_operator` builds the block. Operators on a model
build it on the subset (:meth:`~curvlab.operators.EmpiricalRiskOperator.block`),
so a block's products cost no more than the block's share of a full product; a
sum of operators is blocked term by term
(:meth:`~curvlab.operators.SumOperator.block`).

References:
    - A. R. Sankar, Y. Khasbage, R. Vigneswaran, V. N. Balasubramanian (2021). A
      deeper look at the Hessian eigenspectrum of deep neural networks and its
      applications to regularization. AAAI. arXiv:2012.03801. Blocks of one
      weight each: ``yashkhasbage25/HTR``, ``LayerHessians/hessian/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from curvlab.operators.algebra import SumOperator

__all__ = ["block_operator", "default_blocks"]


def _param_names(op) -> list[str]:
    names = getattr(op, "param_names", None)  # a sum's: those its terms share
    if names is None:
        raise TypeError(
            f"{type(op).__name__} has no parameter names; layerwise spectra need an "
            "operator built on a model (HessianOperator, GGNOperator, ...) or a sum "
            "of such operators."
        )
    return list(names)


def _model(op) -> nn.Module | None:
    if isinstance(op, SumOperator):
        return _model(op.terms[0][1])
    return getattr(op, "model", None)


def default_blocks(operator, *, biases: bool = True) -> dict[str, list[str]]:
    """Split an operator's parameters into one block per layer.

    Args:
        operator: A curvature operator on a model (or a sum of such operators).
        biases: ``True`` (default): one block per module that owns parameters,
            named by the module's path (``"0"``, ``"features.3"``; ``"."`` for
            the root module), holding all its parameters, so a layer's bias is
            grouped with its weight (a BatchNorm layer is a block of its own).
            ``False``: the LayerHessians convention, one block per ``weight`` of
            a ``Linear`` or convolution layer, named by the parameter
            (``"0.weight"``); biases and normalisation layers are left out.

    Returns:
        Block name -> parameter names, in the order of the operator's parameters.

    Raises:
        ValueError: If ``biases=False`` and no weight of a Linear or convolution
            layer is among the operator's parameters.
    """
    names = _param_names(operator)
    if biases:
        blocks: dict[str, list[str]] = {}
        for name in names:
            module = name.rpartition(".")[0] or "."
            blocks.setdefault(module, []).append(name)
        return blocks
    model = _model(operator)
    layers = (nn.Linear, nn.modules.conv._ConvNd)
    if model is not None:
        kinds = {n: type(m) for n, m in model.named_modules()}
        chosen = [
            n
            for n in names
            if n.rpartition(".")[2] == "weight"
            and issubclass(kinds.get(n.rpartition(".")[0], type(None)), layers)
        ]
    else:
        chosen = [n for n in names if n.rpartition(".")[2] == "weight"]
    if not chosen:
        raise ValueError(
            f"No weight of a Linear or convolution layer among the parameters {names}."
        )
    return {n: [n] for n in chosen}


def block_operator(operator, names: Sequence[str]):
    """Return the diagonal block of an operator on a subset of its parameters.

    Operators on a model use their own ``block``; a sum of operators (such as
    ``HessianOperator - GGNOperator``) is blocked term by term by
    :meth:`~curvlab.operators.SumOperator.block`, since the block of a sum is the
    sum of the blocks.

    Args:
        operator: A curvature operator with a ``block`` method, or a
            :class:`~curvlab.operators.SumOperator` of such operators.
        names: Parameter names of the block.

    Returns:
        The block, an operator of the same kind; ``operator`` itself when
        ``names`` lists all its parameters in its order.

    Raises:
        TypeError: If the operator cannot be blocked.
    """
    names = list(names)
    if names == _param_names(operator):
        return operator
    if not hasattr(operator, "block"):
        raise TypeError(f"{type(operator).__name__} has no diagonal blocks.")
    return operator.block(names)


def _resolve_blocks(operator, blocks) -> dict[str, list[str]]:
    if blocks is None or blocks == "modules":
        return default_blocks(operator)
    if blocks == "weights":
        return default_blocks(operator, biases=False)
    if isinstance(blocks, str) or not isinstance(blocks, Mapping):
        raise TypeError(
            "blocks must be None, 'modules', 'weights' or a dict name -> list of "
            f"parameter names. Got {blocks!r}."
        )
    known = set(_param_names(operator))
    out = {}
    for name, names in blocks.items():
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise ValueError(
                f"Block {name!r} must list some of the operator's parameters "
                f"{sorted(known)}. Got {names}."
            )
        out[str(name)] = names
    return out

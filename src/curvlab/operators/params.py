"""Resolve which of a model's parameters an operator acts on, and check them."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from curvlab.operators._checks import check_finite


def resolve_params(
    model: nn.Module, params: Sequence[Tensor | str] | None
) -> tuple[list[str], list[Tensor]]:
    """Return the names and tensors of the parameters an operator acts on.

    Args:
        model: The model.
        params: ``None`` for all trainable parameters (``requires_grad=True``), or
            a list of the model's parameter tensors, or a list of their names
            (as in ``model.named_parameters()``). The order given is the order of
            the flattened parameter vector.

    Returns:
        Names and tensors, in the order of the flattened vector.

    Raises:
        TypeError: If ``params`` mixes kinds or is not a list.
        ValueError: If a name is unknown, a tensor is not one of the model's
            parameters, an entry repeats, or the selection is empty.
    """
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
        if not names:
            raise ValueError("The model has no trainable parameters (requires_grad).")
        return names, [named[n] for n in names]
    if isinstance(params, (str, Tensor)) or not isinstance(params, Sequence):
        raise TypeError(
            "params must be None, a list of the model's parameter tensors, or a list "
            f"of their names. Got {type(params).__name__}."
        )
    if len(params) == 0:
        raise ValueError("params must select at least one parameter. Got [].")
    if all(isinstance(p, str) for p in params):
        unknown = [p for p in params if p not in named]
        if unknown:
            raise ValueError(
                f"Unknown parameter name(s) {unknown}. The model has: {list(named)}."
            )
        names = list(params)
    elif all(isinstance(p, Tensor) for p in params):
        by_id = {id(p): n for n, p in named.items()}
        missing = [i for i, p in enumerate(params) if id(p) not in by_id]
        if missing:
            raise ValueError(
                f"params[{missing[0]}] (shape {tuple(params[missing[0]].shape)}) is "
                "not a parameter of the model. Pass tensors from "
                "model.parameters() or names from model.named_parameters()."
            )
        names = [by_id[id(p)] for p in params]
    else:
        kinds = sorted({type(p).__name__ for p in params})
        raise TypeError(
            f"params must be all parameter tensors or all names. Got a mix of {kinds}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"params must not repeat a parameter. Got {names}.")
    return names, [named[n] for n in names]


def resolve_model_params(
    model: nn.Module, params: Sequence[Tensor | str] | None
) -> tuple[list[str], list[Tensor]]:
    """:func:`resolve_params` for an operator on ``model``, with its checks.

    Args:
        model: The model.
        params: As in :func:`resolve_params`.

    Returns:
        Names and tensors, in the order of the flattened vector.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or ``params`` is malformed.
        ValueError: If the selection is bad (see :func:`resolve_params`), or the
            parameters do not share one floating-point dtype and one device, or
            one holds NaN or Inf.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module. Got {type(model)}.")
    names, tensors = resolve_params(model, params)
    dtypes = {t.dtype for t in tensors}
    devices = {t.device for t in tensors}
    if len(dtypes) != 1 or len(devices) != 1:
        raise ValueError(
            "All selected parameters must share one dtype and device. Got dtypes "
            f"{sorted(map(str, dtypes))}, devices {sorted(map(str, devices))}."
        )
    if not tensors[0].is_floating_point():
        raise ValueError(f"Parameters must be floating point. Got {tensors[0].dtype}.")
    for name, t in zip(names, tensors, strict=True):
        check_finite(t, f"Parameter {name!r}")
    return names, tensors

"""The files of a training run: HDF5 records of the model and torch checkpoints.

**Record** (one HDF5 file per recorded step, ``train/step_XXXXXXXX.h5``):

=======================  ======================================================
``/parameters/<name>``   each trainable parameter, its shape and dtype, named
                         as in ``model.named_parameters()``
``/gradients/<name>``    gradient of the mean train loss over the whole train
                         split at these parameters (only with
                         ``record_gradients``), model in eval mode
``/buffers/<name>``      the model's buffers (BatchNorm running statistics), so
                         that the model can be rebuilt exactly
attributes               ``format`` (``"curvlab-train-record"``),
                         ``format_version``, ``step``, ``parameter_names`` and
                         ``buffer_names`` (JSON lists fixing the order), and the
                         metrics (``train_loss``, ``train_accuracy``, ...; NaN
                         for a missing accuracy)
=======================  ======================================================

Any HDF5 reader opens it (``h5py``, ``h5ls``, MATLAB, Julia). The order of the
parameters is that of ``parameter_names``, not HDF5's alphabetical one. Every
non-scalar dataset carries HDF5's Fletcher-32 checksum filter, so any reader
detects damaged data; :func:`read_record` reports a damaged file as
:class:`~curvlab.runs.errors.RunIntegrityError`.

**Checkpoint** (``checkpoint/step_XXXXXXXX.pt``, ``torch.save``): the model's
``state_dict``, the optimizer's ``state_dict``, the global RNG states and the
step. It exists to resume training bit for bit; it is read with
``torch.load(weights_only=True)``, and a file that cannot be read is reported
as :class:`~curvlab.runs.errors.RunIntegrityError`.

Both writers build the file in memory and write its bytes with one ordinary
file write, so a full disk or a read-only folder gives a plain ``OSError``
naming the file (HDF5 and ``torch.save`` would otherwise report it through
their own errors).

The writers here write to the path they are given; :class:`~curvlab.runs.RunFolder`
hands them a temporary name and renames the file when it is complete.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy
import torch
from torch import Tensor

from curvlab.runs.errors import RunIntegrityError

__all__ = [
    "RECORD_FORMAT",
    "RECORD_FORMAT_VERSION",
    "Record",
    "load_checkpoint",
    "read_record",
    "save_checkpoint",
    "write_record",
]

RECORD_FORMAT = "curvlab-train-record"
RECORD_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Record:
    """The content of one record file.

    Attributes:
        step: The training step.
        parameter_names: Names of the parameters, in model order.
        parameters: The parameters, on the CPU.
        gradients: The full-data train gradient, shaped like ``parameters``, or
            ``None`` when it was not recorded.
        buffers: The model's buffers by name.
        attrs: The file attributes (metrics and format fields).
    """

    step: int
    parameter_names: tuple[str, ...]
    parameters: list[Tensor]
    gradients: list[Tensor] | None
    buffers: dict[str, Tensor]
    attrs: dict[str, Any]


def _check_name(name: str) -> None:
    if "/" in name or not name:
        raise ValueError(
            f"Tensor names become HDF5 dataset names and may not be empty or hold "
            f"'/'. Got {name!r}."
        )


def _to_numpy(tensor: Tensor) -> numpy.ndarray:
    return tensor.detach().to("cpu").contiguous().numpy()


def _dataset(group: h5py.Group, name: str, data: numpy.ndarray) -> None:
    # Fletcher-32 needs chunked storage, which scalar and empty datasets lack
    checked = data.ndim > 0 and data.size > 0
    group.create_dataset(name, data=data, fletcher32=checked)


def write_record(
    path: str | Path,
    *,
    step: int,
    parameters: Mapping[str, Tensor],
    gradients: Sequence[Tensor] | None = None,
    buffers: Mapping[str, Tensor] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write one record file.

    Args:
        path: The file to create (overwritten if it exists).
        step: The training step.
        parameters: Parameters by name, in model order.
        gradients: The gradients, in the order of ``parameters``, or ``None``.
        buffers: Buffers by name.
        attrs: Scalars to store as attributes (``None`` is stored as NaN).

    Raises:
        ValueError: If a name holds ``/`` or the gradients do not fit.
    """
    names = list(parameters)
    buffers = dict(buffers or {})
    for name in [*names, *buffers]:
        _check_name(name)
    if gradients is not None:
        gradients = list(gradients)
        shapes = [tuple(p.shape) for p in parameters.values()]
        if [tuple(g.shape) for g in gradients] != shapes:
            raise ValueError(
                f"gradients must have the parameters' shapes {shapes}. Got "
                f"{[tuple(g.shape) for g in gradients]}."
            )
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        file.attrs["format"] = RECORD_FORMAT
        file.attrs["format_version"] = RECORD_FORMAT_VERSION
        file.attrs["step"] = step
        file.attrs["parameter_names"] = json.dumps(names)
        file.attrs["buffer_names"] = json.dumps(list(buffers))
        for key, value in (attrs or {}).items():
            file.attrs[key] = math.nan if value is None else value
        group = file.create_group("parameters")
        for name, tensor in parameters.items():
            _dataset(group, name, _to_numpy(tensor))
        if gradients is not None:
            group = file.create_group("gradients")
            for name, tensor in zip(names, gradients, strict=True):
                _dataset(group, name, _to_numpy(tensor))
        group = file.create_group("buffers")
        for name, tensor in buffers.items():
            _dataset(group, name, _to_numpy(tensor))
    _write_file(path, buffer)


def _write_file(path: str | Path, buffer: io.BytesIO) -> None:
    with open(path, "wb") as file:
        file.write(buffer.getbuffer())


def _attr(value: Any) -> Any:
    if isinstance(value, numpy.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def read_record(
    path: str | Path, *, gradients: bool = True, buffers: bool = True
) -> Record:
    """Read one record file.

    Args:
        path: The file.
        gradients: Read the gradients (when stored).
        buffers: Read the buffers.

    Returns:
        The record, tensors on the CPU.

    Raises:
        RunIntegrityError: If the file is damaged: HDF5 cannot open it or its
            checksums (Fletcher-32) do not match, or it is not a curvlab train
            record.
    """
    try:
        return _read_record(path, gradients=gradients, buffers=buffers)
    except (OSError, KeyError, ValueError, TypeError) as error:
        if isinstance(error, RunIntegrityError):
            raise
        if isinstance(error, OSError) and not Path(path).is_file():
            raise
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunIntegrityError(
            f"{path} is damaged: HDF5 cannot read it ({detail})", path=path
        ) from None


def _read_record(path: str | Path, *, gradients: bool, buffers: bool) -> Record:
    with h5py.File(path, "r") as file:
        attrs = {key: _attr(value) for key, value in file.attrs.items()}
        if attrs.get("format") != RECORD_FORMAT:
            raise RunIntegrityError(
                f"{path} is damaged or not a curvlab train record (its format "
                f"attribute is {attrs.get('format')!r})",
                path=path,
            )
        names = tuple(json.loads(attrs["parameter_names"]))
        params = [torch.from_numpy(file["parameters"][n][()]) for n in names]
        grads = None
        if gradients and "gradients" in file:
            grads = [torch.from_numpy(file["gradients"][n][()]) for n in names]
        buffer_values = {}
        if buffers:
            for name in json.loads(attrs["buffer_names"]):
                buffer_values[name] = torch.from_numpy(
                    numpy.asarray(file["buffers"][name][()])
                )
    return Record(int(attrs["step"]), names, params, grads, buffer_values, attrs)


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Save a training checkpoint with ``torch.save``.

    Args:
        path: The file to create.
        state: Tensors, numbers, strings and containers of them.
    """
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    _write_file(path, buffer)


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: The file.
        map_location: Where to put the tensors.

    Returns:
        The saved mapping.

    Raises:
        RunIntegrityError: If the file is damaged or not a checkpoint (torch
            cannot load it with ``weights_only=True``).
    """
    data = Path(path).read_bytes()
    try:
        state = torch.load(
            io.BytesIO(data), map_location=map_location, weights_only=True
        )
    except Exception as error:  # torch raises many kinds on damaged files
        raise RunIntegrityError(
            f"{path} is damaged: torch cannot load it as a checkpoint "
            f"({type(error).__name__}). Delete it and its manifest entry "
            f"(manifest/checkpoint/{Path(path).stem}.json) and run the command "
            "again: training then replays from the previous checkpoint or the "
            "initialisation, with the same results",
            path=path,
        ) from None
    if not isinstance(state, dict):
        raise RunIntegrityError(f"{path} is damaged: it holds no mapping.", path=path)
    return state

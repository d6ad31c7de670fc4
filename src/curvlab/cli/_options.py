"""The options that several ``curvlab`` commands take, each declared once.

A command declares an option as ``name: XOption = default``. Options that go
together form a *group*: a frozen dataclass declared with :func:`group` and
:func:`option` (e.g. :class:`Machine`: ``--device``, ``--data-dir``,
``--threads``). A command takes a group as one parameter, ``machine: Machine =
MACHINE``; :func:`grouped` shows Typer the group's options in its place and
hands the command the group built from them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer

from curvlab.experiments.eigenbasis import SPLITS, TEST_MATRICES


class DType(str, Enum):
    """Floating dtypes the commands accept."""

    float32 = "float32"
    float64 = "float64"


RunOption = Annotated[
    Path, typer.Option("--run", help="Run folder written by `curvlab train`.")
]
StepsOption = Annotated[
    str | None,
    typer.Option(
        help="Recorded steps, e.g. 0,100 or 0:1000:100 (stop included). [all recorded]"
    ),
]
ForceStepsOption = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Recompute the requested finished steps, also with other settings "
        "(options not given keep their stored values).",
    ),
]
MaxColsOption = Annotated[
    int, typer.Option(min=1, help="Hessian columns per pass over the data.")
]
DeviceOption = Annotated[str, typer.Option(help="Device: cpu, cuda or cuda:<index>.")]
DataDirOption = Annotated[
    Path | None,
    typer.Option(help="Folder with the data files of file-based problems."),
]
ThreadsOption = Annotated[int | None, typer.Option(min=1, help="PyTorch CPU threads.")]
StudyOutOption = Annotated[
    Path, typer.Option(help="Folder for the CSV, markdown and PNG files.")
]
StudyThreadsOption = Annotated[int, typer.Option(min=1, help="PyTorch CPU threads.")]


class Field(NamedTuple):
    """One option of a group: its annotation (with its ``typer.Option``), default."""

    annotation: Any
    default: Any = None


def option(kind: Any, help: str, *decls: str, default: Any = None, **details) -> Field:
    """An option of type ``kind`` (``kind | None`` when ``default`` is ``None``).

    ``decls`` and ``details`` (``min``, ...) go to ``typer.Option``.
    """
    kind = kind | None if default is None else kind
    return Field(Annotated[kind, typer.Option(*decls, help=help, **details)], default)


def group(cls: type) -> Any:
    """Make ``cls``, whose attributes include :class:`Field` s, a group."""
    cls.__annotations__ = {}
    for name, field in list(vars(cls).items()):
        if isinstance(field, Field):
            cls.__annotations__[name] = field.annotation
            setattr(cls, name, field.default)
    return dataclasses.dataclass(frozen=True)(cls)


def grouped(command: Callable) -> Callable:
    """``command`` for Typer: each group parameter shown as its options, in place.

    The wrapper builds each group from its options before it calls ``command``.
    """
    hints = typing.get_type_hints(command, include_extras=True)
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters, groups = [], {}
    for parameter in inspect.signature(command).parameters.values():
        kind = hints[parameter.name]
        if not dataclasses.is_dataclass(kind):
            parameters.append(parameter.replace(kind=keyword, annotation=kind))
            continue
        groups[parameter.name] = kind
        parameters += [
            inspect.Parameter(f.name, keyword, default=f.default, annotation=f.type)
            for f in dataclasses.fields(kind)
        ]

    @functools.wraps(command)
    def wrapper(**values):
        for name, kind in groups.items():
            names = [f.name for f in dataclasses.fields(kind)]
            values[name] = kind(**{f: values.pop(f) for f in names})
        return command(**values)

    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return wrapper


@group
class Machine:
    """Where a command computes."""

    device = Field(DeviceOption, "cpu")
    data_dir = Field(DataDirOption)
    threads = Field(ThreadsOption)


MACHINE = Machine()


_SAMPLES = option(
    int,
    "Samples per class of the subset the curvature is taken on (lowest indices; "
    "regression: in total). [50]",
    min=1,
)
_SEED = option(int, "Seed of the random probes, sketches and masks. [the run's]", min=0)
RUN_DTYPE = option(str, "float32 or float64 for the products. [the run's]")


@group
class Subset:
    """The data subset, seed and dtype of a stage (``None``: stored or default)."""

    samples_per_class = _SAMPLES
    seed = _SEED
    dtype = RUN_DTYPE


SUBSET = Subset()


@group
class Sketch:
    """A top-K Hessian eigenbasis by SEIGH (``None``: stored or default)."""

    num_outer = option(int, "Eigenpairs K. [5% of D, at most 1000]", min=1)
    num_inner = option(int, "SEIGH: Hessian-vector products s >= K. [2K]", min=1)
    split = option(str, f"Split of the Hessian: {', '.join(SPLITS)}. [train]")
    samples_per_class = _SAMPLES
    test_matrix = option(str, f"SEIGH test matrix: {', '.join(TEST_MATRICES)}. [ssrft]")
    num_probes = option(
        int, "SEIGH: Gaussian probes of the error estimate. [30]", min=1
    )
    seed = _SEED
    dtype = RUN_DTYPE


SKETCH = Sketch()

"""The options that several ``curvlab`` commands take, each declared once.

A command declares an option as ``name: XOption = default``. Options that go
together are a frozen dataclass of such fields (a *group*, e.g. :class:`Machine`
for ``--device``, ``--data-dir`` and ``--threads``): the command takes the group
as one parameter, ``machine: Machine = MACHINE``, and :func:`grouped` spreads
its fields into the options Typer sees, in place, and hands the command the
group built from them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

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
SamplesPerClassOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Samples per class of the subset the curvature is taken on (lowest "
        "indices; regression: in total). [50]",
    ),
]
SeedOption = Annotated[
    int | None,
    typer.Option(
        min=0, help="Seed of the random probes, sketches and masks. [the run's]"
    ),
]
RunDtypeOption = Annotated[
    str | None, typer.Option(help="float32 or float64 for the products. [the run's]")
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


@dataclasses.dataclass(frozen=True)
class Machine:
    """Where a command computes: ``--device``, ``--data-dir``, ``--threads``."""

    device: DeviceOption = "cpu"
    data_dir: DataDirOption = None
    threads: ThreadsOption = None


MACHINE = Machine()


@dataclasses.dataclass(frozen=True)
class Sketch:
    """The options of a top-K Hessian eigenbasis by SEIGH (``None``: not given)."""

    num_outer: Annotated[
        int | None, typer.Option(min=1, help="Eigenpairs K. [5% of D, at most 1000]")
    ] = None
    num_inner: Annotated[
        int | None,
        typer.Option(min=1, help="SEIGH: Hessian-vector products s >= K. [2K]"),
    ] = None
    split: Annotated[
        str | None,
        typer.Option(help=f"Split of the Hessian: {', '.join(SPLITS)}. [train]"),
    ] = None
    samples_per_class: SamplesPerClassOption = None
    test_matrix: Annotated[
        str | None,
        typer.Option(help=f"SEIGH test matrix: {', '.join(TEST_MATRICES)}. [ssrft]"),
    ] = None
    num_probes: Annotated[
        int | None,
        typer.Option(min=1, help="SEIGH: Gaussian probes of the error estimate. [30]"),
    ] = None
    seed: SeedOption = None
    dtype: RunDtypeOption = None


SKETCH = Sketch()


def grouped(command: Callable) -> Callable:
    """Spread the option groups among ``command``'s parameters for Typer.

    A parameter whose type is a dataclass (a group) becomes that dataclass's
    fields, in its place and in their order; the wrapper builds the group from
    them again before it calls ``command``.

    Args:
        command: A Typer command whose parameters may include groups.

    Returns:
        The command as Typer should register it.
    """
    hints = typing.get_type_hints(command, include_extras=True)
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters, groups = [], {}
    for parameter in inspect.signature(command).parameters.values():
        kind = hints[parameter.name]
        if not dataclasses.is_dataclass(kind):
            parameters.append(parameter.replace(kind=keyword, annotation=kind))
            continue
        fields = typing.get_type_hints(kind, include_extras=True)
        groups[parameter.name] = (kind, list(fields))
        parameters += [
            inspect.Parameter(
                field.name,
                keyword,
                default=field.default,
                annotation=fields[field.name],
            )
            for field in dataclasses.fields(kind)
        ]

    @functools.wraps(command)
    def wrapper(**values):
        for name, (kind, fields) in groups.items():
            values[name] = kind(**{field: values.pop(field) for field in fields})
        return command(**values)

    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return wrapper

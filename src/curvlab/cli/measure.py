"""``curvlab measure``: a step's SEIGH sketch into its crash-safe store, on Dask."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from curvlab.cli import _options as opt
from curvlab.cli._cluster import CLUSTER, Cluster, parse_indices
from curvlab.cli._common import option_error, run_stage_command


def measure_steps(
    client: Any,
    run: str | Path,
    steps: str | None,
    force: bool,
    machine: opt.Machine,
    settings: Any,
    **options: Any,
) -> int:
    """Measure the sketches of ``steps`` with ``client``; return the exit code.

    ``settings`` is a :class:`~curvlab.experiments.sketch_stages.SketchSettings`;
    ``options`` (``indices``, ``max_cols``) go to its ``MeasureStage``.
    """
    from curvlab.experiments.sketch_stages import MeasureStage

    def stage(folder, problem):
        where = {"device": machine.device, "data_dir": machine.data_dir}
        D = problem.num_params
        return MeasureStage(folder, settings, D, client=client, **where, **options)

    return run_stage_command("measure", stage, run, steps, force, machine)


@opt.grouped
def command(
    run: opt.RunOption,
    step: Annotated[int, typer.Option(min=0, help="The recorded step.")],
    indices: Annotated[
        str | None,
        typer.Option(help="Sketch columns a:b (a <= i < b) or i,j. [all, probes]"),
    ] = None,
    sketch: opt.Sketch = opt.SKETCH,
    cluster: Cluster = CLUSTER,
    force: opt.ForceStepsOption = False,
    machine: opt.Machine = opt.MACHINE,
) -> None:
    """Measure the SEIGH sketch of a step's Hessian into RUN_DIR/sketch_<split>/.

    Each measurement is a Hessian-vector product stored in its own file,
    written atomically with its checksum; rerunning takes exactly the missing
    or damaged ones. With --scheduler the products run on Dask workers, each
    building the operator once. `curvlab solve` then solves the store.
    """
    from curvlab.experiments.sketch_stages import SketchSettings

    try:
        chosen = parse_indices(indices)
    except ValueError as error:
        raise typer.Exit(option_error(error)) from None
    settings = SketchSettings(**vars(sketch))
    where = (run, str(step), force, machine, settings)
    raise typer.Exit(cluster.run(lambda c: measure_steps(c, *where, indices=chosen)))

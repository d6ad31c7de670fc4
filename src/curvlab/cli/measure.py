"""``curvlab measure``: a step's SEIGH sketch into its crash-safe store, on Dask."""

from __future__ import annotations

from typing import Annotated

import typer

from curvlab.cli import _cluster as cluster
from curvlab.cli import _common as common


def command(
    run: common.RunOption,
    step: Annotated[int, typer.Option(min=0, help="The recorded step.")],
    indices: Annotated[
        str | None,
        typer.Option(help="Sketch columns a:b (a <= i < b) or i,j. [all, probes]"),
    ] = None,
    num_outer: Annotated[int | None, typer.Option(min=1, help="K. [5% of D]")] = None,
    num_inner: Annotated[int | None, typer.Option(min=1, help="s >= K. [2K]")] = None,
    split: Annotated[str | None, typer.Option(help="train or test. [train]")] = None,
    samples_per_class: common.SamplesPerClassOption = None,
    test_matrix: Annotated[
        str | None, typer.Option(help="ssrft, gaussian or rademacher. [ssrft]")
    ] = None,
    num_probes: Annotated[
        int | None, typer.Option(min=0, help="A-posteriori probes. [30]")
    ] = None,
    seed: common.SeedOption = None,
    dtype: common.RunDtypeOption = None,
    scheduler: cluster.SchedulerOption = None,
    workers: cluster.WorkersOption = 2,
    slurm_gpus: cluster.GpusOption = 0,
    slurm_walltime: cluster.WalltimeOption = "02:00:00",
    slurm_lifetime: cluster.LifetimeOption = None,
    slurm_cores: cluster.JobCoresOption = 4,
    slurm_memory: cluster.JobMemoryOption = "16GB",
    force: common.ForceStepsOption = False,
    device: common.DeviceOption = "cpu",
    data_dir: common.DataDirOption = None,
    threads: common.ThreadsOption = None,
) -> None:
    """Measure the SEIGH sketch of a step's Hessian into RUN_DIR/sketch_<split>/.

    Each measurement is a Hessian-vector product stored in its own file,
    written atomically with its checksum; rerunning takes exactly the missing
    or damaged ones. With --scheduler the products run on Dask workers, each
    building the operator once. `curvlab solve` then solves the store.
    """
    from curvlab.experiments.sketch_stages import MeasureStage, SketchSettings

    settings = SketchSettings(
        split,
        num_outer,
        num_inner,
        samples_per_class,
        test_matrix,
        num_probes,
        seed,
        dtype,
    )
    try:
        chosen = cluster.parse_indices(indices)
    except ValueError as error:
        raise typer.Exit(common.option_error(error)) from None

    def body(client) -> int:
        return common.run_stage_command(
            "measure",
            lambda folder, problem: MeasureStage(
                folder,
                settings,
                problem.num_params,
                client=client,
                indices=chosen,
                device=device,
                data_dir=data_dir,
            ),
            run=run,
            steps=str(step),
            force=force,
            device=device,
            data_dir=data_dir,
            threads=threads,
        )

    code = cluster.on_cluster(
        body,
        scheduler,
        workers,
        gpus=slurm_gpus,
        walltime=slurm_walltime,
        lifetime=slurm_lifetime,
        cores=slurm_cores,
        memory=slurm_memory,
    )
    raise typer.Exit(code)

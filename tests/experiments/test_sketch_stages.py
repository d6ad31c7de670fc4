"""Measure and solve as stages of a run; the overlap from the solved store."""

import shutil
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from curvlab.cli.app import app
from curvlab.experiments.overlap import OverlapSettings, overlap_run
from curvlab.experiments.sketch_stages import (
    MeasureStage,
    SketchSettings,
    SolveStage,
    measure_stage,
    sketch_folder,
    solve_stage,
)
from curvlab.experiments.training import train
from curvlab.runs import RunFolder, TrainConfig
from curvlab.runs.stage import SettingsConflictError, run_stage

runner = CliRunner()
MEASURE_STAGE, SOLVE_STAGE = measure_stage("train"), solve_stage("train")
SKETCH = {"num_outer": 8, "num_inner": 20, "samples_per_class": 2, "num_probes": 6}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = TrainConfig(
        problem="digits_logreg",
        steps=4,
        batch_size=10,
        num_samples=100,
        record_steps=(0,),
        dtype="float64",
    )
    return train(config, tmp_path_factory.mktemp("sketch") / "run").run.path


@pytest.fixture
def run(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    return RunFolder.open(tmp_path / "run")


def _measure(run, **options):
    stage = MeasureStage(run, SketchSettings(**SKETCH), 650, **options)
    return run_stage(stage, [4])


def test_distributed_overlap_equals_the_in_memory_sketch(run, tmp_path):
    measured = _measure(run)
    assert measured.computed == (4,)
    assert run.is_done(MEASURE_STAGE, 4)
    solved = run_stage(SolveStage(run), [4])
    assert solved.computed == (4,)
    assert (sketch_folder(run, 4) / "solve" / "result.json").is_file()
    common = {**SKETCH, "num_random": 3}
    copy = RunFolder.open(shutil.copytree(run.path, tmp_path / "copy"))
    stored = overlap_run(run, OverlapSettings(method="distributed", **common), [4])
    memory = overlap_run(copy, OverlapSettings(method="sketch", **common), [4])
    a, b = stored.summaries[4], memory.summaries[4]
    # same plan and seed: float64 eigenvalues agree to rounding (1e-10 relative)
    torch.testing.assert_close(
        torch.tensor(a["eigenvalues"]),
        torch.tensor(b["eigenvalues"]),
        rtol=1e-10,
        atol=0,
    )
    assert a["a_posteriori"]["error"] == pytest.approx(
        b["a_posteriori"]["error"], rel=1e-8
    )
    rows_a, rows_b = stored.results[4].rows, memory.results[4].rows
    for x, y in zip(rows_a, rows_b, strict=True):
        # overlaps of the same eigenbasis up to rounding; random masks share seeds
        for key in ("magnitude", "best", "random_mean"):
            assert x[key] == pytest.approx(y[key], rel=1e-8, abs=1e-12)
    assert a["settings"]["method"] == "distributed"


def test_partial_indices_leave_the_step_unfinished_then_resume(run):
    first = _measure(run, indices=range(0, 7))
    assert first.unfinished == (4,)
    assert first.computed == ()
    assert not run.is_done(MEASURE_STAGE, 4)
    rest = _measure(run)
    assert rest.computed == (4,)
    step = rest.results[4]
    assert sorted(step.measured) == list(range(7, 20))  # exactly the missing ones
    with pytest.raises(SettingsConflictError, match="num_inner: 20 -> 24"):
        run_stage(MeasureStage(run, SketchSettings(num_inner=24), 650), [4])


def test_solve_and_distributed_overlap_refuse_what_is_not_measured(run):
    with pytest.raises(LookupError, match="not completely measured"):
        run_stage(SolveStage(run), [4])
    with pytest.raises(LookupError, match="no solved train sketch"):
        overlap_run(run, OverlapSettings(method="distributed", **SKETCH), [4])


def test_cli_measure_solve_overlap_on_a_local_cluster(run):
    args = ["--run", str(run.path), "--samples-per-class", "2"]
    sizes = ["--num-outer", "8", "--num-inner", "20", "--num-probes", "6"]
    measured = runner.invoke(
        app,
        [
            "measure",
            *args,
            *sizes,
            "--step",
            "4",
            "--scheduler",
            "local",
            "--workers",
            "2",
        ],
    )
    assert measured.exit_code == 0, measured.output
    assert run.is_done(MEASURE_STAGE, 4)
    assert not run.is_done(MEASURE_STAGE, 0)
    solved = runner.invoke(app, ["solve", "--run", str(run.path), "--step", "4"])
    assert solved.exit_code == 0, solved.output
    assert run.is_done(SOLVE_STAGE, 4)
    # overlap --distributed measures and solves the other step, then overlaps both
    both = runner.invoke(app, ["overlap", *args, *sizes, "--distributed"])
    assert both.exit_code == 0, both.output
    assert run.done_steps("overlap_train") == [0, 4]
    assert run.done_steps(SOLVE_STAGE) == [0, 4]


@pytest.mark.slow
def test_measure_on_fake_slurm_survives_a_cancelled_job(run, fake_slurm):
    """Two SLURM jobs (sbatch faked on loopback); one is cancelled mid-measure."""
    from curvlab.store.cluster import connect

    settings = SketchSettings(**{**SKETCH, "num_inner": 40})
    here = RunFolder.open(shutil.copytree(run.path, run.path.parent / "here"))
    with connect("slurm", workers=2, walltime="00:20:00", cores=1) as client:
        client.wait_for_workers(2, timeout=120)
        jobs = [job.job_id for job in client.cluster.workers.values()]
        cancelled = []

        def on_progress(event):
            if event.kind == "measurement" and event.index > 0 and not cancelled:
                subprocess.run(["scancel", jobs[0]], check=True)
                cancelled.append(event.index)

        stage = MeasureStage(run, settings, 650, client=client, block_size=2)
        result = run_stage(stage, [4], on_progress=on_progress)
    assert cancelled
    assert result.computed == (4,)
    store = result.results[4].store
    assert store.verify() == []
    assert store.status().missing == []
    # every column equals the one measured in this process (same plan and seed)
    mine = run_stage(MeasureStage(here, settings, 650), [4]).results[4].store
    torch.testing.assert_close(
        store.read("sketch"), mine.read("sketch"), rtol=0, atol=0
    )


def test_train_and_test_splits_are_sketched_side_by_side(run):
    _measure(run)
    test = MeasureStage(run, SketchSettings(**SKETCH, split="test"), 650)
    assert run_stage(test, [4]).computed == (4,)
    assert run.is_done(measure_stage("train"), 4)
    assert run.is_done(measure_stage("test"), 4)
    assert sketch_folder(run, 4, "test") != sketch_folder(run, 4, "train")
    assert run_stage(SolveStage(run, "test"), [4]).computed == (4,)
    assert not run.is_done(solve_stage("train"), 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measure_on_gpu_workers_equals_the_cpu(run, tmp_path):
    """One Dask worker per GPU, each building the operator on its device once."""
    from curvlab.store.cluster import connect

    here = RunFolder.open(shutil.copytree(run.path, tmp_path / "here"))
    with connect("local", workers=torch.cuda.device_count()) as client:
        gpu = MeasureStage(
            run, SketchSettings(**SKETCH), 650, client=client, device="cuda"
        )
        stored = run_stage(gpu, [4]).results[4].store
    mine = run_stage(MeasureStage(here, SketchSettings(**SKETCH), 650), [4])
    torch.testing.assert_close(
        stored.read("sketch"),
        mine.results[4].store.read("sketch"),
        rtol=1e-10,  # float64 products on another device: rounding only
        atol=1e-12,
    )

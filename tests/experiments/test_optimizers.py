"""The optimization study on a tiny grid: end to end, reproducible, resumable."""

from __future__ import annotations

import math

import pytest

from curvlab.experiments.optimizers import (
    OptimizersSettings,
    OptimizersStage,
    optimizer_study,
    unit_key,
)
from curvlab.experiments.training import train
from curvlab.runs import RunFolder
from curvlab.runs.stage import SettingsConflictError

METHODS = ("sgd", "adam", "adahesscale", "adahesscalegn", "adahessian")
# sgd's second rate overflows float32 at once: every such run diverges
LRS = {
    "sgd": (0.1, 3e38),
    "adam": (1e-2,),
    "adahesscale": (1e-2,),
    "adahesscalegn": (1e-2,),
    "adahessian": (0.1,),
}


def _settings(**changes) -> OptimizersSettings:
    values = dict(
        problem="digits_mlp",
        methods=METHODS,
        lrs=LRS,
        num_seeds=2,
        steps=6,
        batch_size=16,
        eval_every=3,
        num_samples=200,
    )
    values.update(changes)
    return OptimizersSettings(**values)


def _curves(study):
    keys = ("step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
    return {
        unit: [{k: point[k] for k in keys} for point in summary["curve"]]
        for unit, summary in study.runs.items()
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny study, uninterrupted."""
    return optimizer_study(tmp_path_factory.mktemp("reference"), _settings())


def test_small_grid_end_to_end(reference):
    study = reference
    assert len(study.runs) == 12
    assert len(study.computed) == 12
    assert [row["method"] for row in study.table] == list(METHODS)
    # the diverging rate is recorded at the step it diverged, counted, skipped
    for seed in range(2):
        diverged = study.runs[unit_key("sgd", 3e38, seed)]
        assert diverged["diverged_at"] == 1
        assert diverged["final_train_loss"] == math.inf
    assert study.diverged == 2
    assert study.table[0]["diverged"] == 2
    assert study.table[0]["runs"] == 4
    assert study.best_lrs == {"sgd": 0.1, **{m: LRS[m][0] for m in METHODS[1:]}}
    # the table's final loss is the mean over seeds of the runs' final loss
    for row in study.table:
        finals = [
            study.runs[unit_key(row["method"], row["best_lr"], s)]["final_train_loss"]
            for s in range(2)
        ]
        assert row["final_train_loss"] == pytest.approx(sum(finals) / 2, rel=1e-12)
        assert row["final_train_loss_se"] == pytest.approx(
            abs(finals[0] - finals[1]) / 2, rel=1e-9
        )
        assert row["seconds_per_step"] > 0
    assert study.table[0]["time_vs_sgd"] == pytest.approx(1.0)
    # curves: every method's best lr at the recorded steps 0, 3, 6
    assert [r["step"] for r in study.curves] == [0, 3, 6] * 5
    assert all(r["seeds"] == 2 for r in study.curves)
    seconds = [r["seconds"] for r in study.curves if r["method"] == "adam"]
    assert seconds[0] == 0
    assert seconds[0] < seconds[1] < seconds[2]
    # one sentence per finding, from the numbers
    assert any("2 of 12 runs diverged (SGD 2)" in s for s in study.findings)
    rows = {row["method"]: row for row in study.table}
    a, b = rows["adahesscale"]["final_train_loss"], rows["adam"]["final_train_loss"]
    margin = 2 * math.hypot(
        rows["adahesscale"]["final_train_loss_se"], rows["adam"]["final_train_loss_se"]
    )
    relation = (
        "indistinguishable from"
        if abs(a - b) <= margin
        else ("lower than" if a < b else "higher than")
    )
    assert (
        f"At their best learning rates AdaHesScale's final training loss "
        f"({a:.3g}) was {relation} Adam's ({b:.3g})"
    ) in "\n".join(study.findings)
    assert any("Time per step as a multiple of SGD's" in s for s in study.findings)
    for name in ("curves", "grid", "table", "findings", "figure"):
        assert study.files[name].is_file()
    assert "| AdaHessian |" in study.files["findings"].read_text()
    folder = RunFolder(study.folder)
    assert folder.invocations("optimizers")[-1]["status"] == "finished"


def test_a_unit_is_the_training_run_of_its_config(reference, tmp_path):
    """The study trains exactly what `curvlab train` trains for that config."""
    stage = OptimizersStage(reference.folder)
    unit = unit_key("adahessian", 0.1, 1)
    run = train(stage.train_config(unit), tmp_path).run
    losses = [row["train_loss"] for row in run.metrics()]
    assert losses == [p["train_loss"] for p in reference.runs[unit]["curve"]]


def test_same_seed_same_curves_and_seeds_differ(reference, tmp_path):
    again = optimizer_study(tmp_path, _settings())
    assert _curves(again) == _curves(reference)
    curves = _curves(reference)
    assert curves[unit_key("adam", 1e-2, 0)] != curves[unit_key("adam", 1e-2, 1)]


def test_resume_after_a_keyboard_interrupt_mid_run(reference, tmp_path):
    events = []

    def stop(event):
        events.append(event)
        units = sum(e.kind == "unit" for e in events)
        if units == 4 and event.kind == "phase" and event.step == 3:
            raise KeyboardInterrupt  # inside the 5th run, once step 3 is recorded

    with pytest.raises(KeyboardInterrupt):
        optimizer_study(tmp_path, _settings(), on_progress=stop)
    folder = RunFolder(tmp_path)
    assert folder.invocations("optimizers")[-1]["status"] == "interrupted"
    stopped = events[-1].values["unit"]
    assert RunFolder.open(tmp_path / "runs" / stopped).recorded_steps() == [0, 3]
    study = optimizer_study(tmp_path, None)  # settings come from study.json
    assert len(study.skipped) == 4
    assert stopped in study.computed
    resumed = RunFolder.open(tmp_path / "runs" / stopped).invocations("train")
    assert resumed[-1]["skipped"] == [0, 3]  # its recorded steps were kept
    assert _curves(study) == _curves(reference)
    assert study.table == [
        {**row, **{k: study.table[i][k] for k in ("seconds_per_step", "time_vs_sgd")}}
        for i, row in enumerate(reference.table)
    ]


def test_stored_settings_conflict_and_the_grid_extends(reference, tmp_path):
    small = _settings(methods=("adam",), num_seeds=1)
    optimizer_study(tmp_path, small)
    with pytest.raises(SettingsConflictError, match="steps: 6 -> 9") as info:
        optimizer_study(tmp_path, _settings(methods=("adam",), steps=9))
    assert info.value.differences == [("steps", 6, 9)]
    # more seeds and another learning rate only add units
    more = optimizer_study(
        tmp_path, OptimizersSettings(num_seeds=2, lrs={"adam": (1e-2, 1e-3)})
    )
    assert sorted(more.computed) == sorted(
        [
            unit_key("adam", 1e-2, 1),
            unit_key("adam", 1e-3, 0),
            unit_key("adam", 1e-3, 1),
        ]
    )
    assert more.skipped == (unit_key("adam", 1e-2, 0),)
    assert (
        _curves(more)[unit_key("adam", 1e-2, 1)]
        == _curves(reference)[unit_key("adam", 1e-2, 1)]
    )


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"methods": ("adam", "lbfgs")}, ValueError, "method must be one of"),
        ({"methods": ()}, ValueError, "at least one"),
        ({"methods": "adam"}, TypeError, "list of names"),
        ({"problem": "nope"}, ValueError, "problem must be one of"),
        ({"lrs": {"adam": (-1.0,)}}, ValueError, "positive and finite"),
        ({"lrs": {"adam": ()}}, ValueError, "grid of adam is empty"),
        ({"lrs": {"adam": ("fast",)}}, TypeError, "must be numbers"),
        ({"lrs": {"lbfgs": (1.0,)}}, ValueError, "unknown methods"),
        ({"num_seeds": 0}, ValueError, "num_seeds must be >= 1"),
        ({"steps": 2.5}, TypeError, "steps must be an int"),
        ({"criterion": "best"}, ValueError, "criterion must be one of"),
        ({"dtype": "float16"}, ValueError, "dtype must be one of"),
    ],
)
def test_bad_settings(tmp_path, changes, error, match):
    with pytest.raises(error, match=match):
        optimizer_study(tmp_path, _settings(**changes))
    assert not (tmp_path / "study.json").exists()


def test_a_dask_worker_must_run_one_task_at_a_time(tmp_path):
    class Client:
        def scheduler_info(self, n_workers=-1):
            return {"workers": {"w": {"nthreads": 2}}}

    with pytest.raises(ValueError, match="threads_per_worker=1"):
        optimizer_study(tmp_path, _settings(methods=("sgd",)), client=Client())


def test_runs_on_a_loopback_dask_cluster_equal_in_process_runs(reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    settings = _settings(methods=("adahesscale", "adahessian"))
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            local_directory=str(tmp_path / "dask"),
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        study = optimizer_study(tmp_path / "study", settings, client=client, threads=1)
    assert len(study.computed) == 4
    expected = _curves(reference)
    assert _curves(study) == {unit: expected[unit] for unit in study.runs}
    invocation = RunFolder(study.folder).invocations("optimizers")[-1]
    assert invocation["parallel"] == "dask"


def test_a_folder_that_holds_something_else_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no study"):
        optimizer_study(tmp_path, _settings())


def test_a_partial_run_with_other_settings_starts_over(reference, tmp_path):
    """A run left by an interrupted call with other steps is retrained."""

    def stop(event):
        if event.kind == "phase" and event.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        optimizer_study(
            tmp_path, _settings(methods=("adam",), steps=9), on_progress=stop
        )
    unit = unit_key("adam", 1e-2, 0)
    assert RunFolder.open(tmp_path / "runs" / unit).config.steps == 9
    study = optimizer_study(tmp_path, _settings(methods=("adam",), num_seeds=1))
    assert study.computed == (unit,)
    assert _curves(study)[unit] == _curves(reference)[unit]

"""``curvlab spectrum`` and ``curvlab plot``: runs, resuming, figures, exit codes."""

import sys

import pytest
from typer.testing import CliRunner

from curvlab.cli import app as app_module
from curvlab.cli import plot as plot_module
from curvlab.cli.app import app
from curvlab.experiments.spectrum import STAGE, read_spectrum
from curvlab.experiments.training import train
from curvlab.runs import RunFolder, TrainConfig

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"

# digits_mlp: the full Hessian (D = 3190) and the first layer (1300) by SLQ, the
# other layers (420, 210) exactly.
FAST = [
    "--samples-per-class",
    "2",
    "--top-k",
    "2",
    "--bottom-k",
    "1",
    "--num-steps",
    "16",
    "--max-exact-dim",
    "450",
    "--tol",
    "1e-4",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    config = TrainConfig(
        problem="digits_mlp",
        steps=3,
        batch_size=10,
        record_steps=(0,),
        num_samples=100,
        lr=0.1,
    )
    path = tmp_path_factory.mktemp("cli_spectrum") / "run"
    train(config, path)
    return path


def _invoke(*args):
    return runner.invoke(app, list(args))


def _text(result):
    """The output with line wrapping undone."""
    return " ".join(result.output.split())


def test_spectrum_then_plots(run_dir):
    result = _invoke("spectrum", "--run", str(run_dir), "--layers", *FAST)
    assert result.exit_code == 0, result.output
    for text in ("step 3: D=3190", "λ by |λ|", "trace", "Done in"):
        assert text in _text(result)
    run = RunFolder.open(run_dir)
    assert run.done_steps(STAGE) == [0, 3]
    stored = read_spectrum(run, 3).spectra["hessian"]
    assert len(stored.blocks) == 6
    assert stored.full.top_eigenvalues.numel() == 2

    path = run.path_for(STAGE, 0, ".json")
    mtime = path.stat().st_mtime_ns
    again = _invoke("spectrum", "--run", str(run_dir), "--layers", *FAST)
    assert again.exit_code == 0, again.output
    assert "Already done: steps [0, 3]" in _text(again)
    assert "Nothing to do" in _text(again)
    assert path.stat().st_mtime_ns == mtime

    changed = _invoke("spectrum", "--run", str(run_dir), *FAST)  # no --layers
    assert changed.exit_code == 2
    assert "--force" in _text(changed)

    plots = _invoke("plot", "spectrum", "--run", str(run_dir))
    assert plots.exit_code == 0, plots.output
    match = _invoke("plot", "match", "--run", str(run_dir), "--step", "0")
    assert match.exit_code == 0, match.output
    files = (plots.output + match.output).split()
    names = {f.rpartition("/")[2] for f in files}
    assert {
        "spectrum_hessian.png",
        "spectrum_extremes.png",
        "match_distros_peak.png",
        "match_distros_wasserstein.png",
        "match_distances.csv",
    } <= names
    for name in names:
        file = run_dir / "plots" / name
        assert file.stat().st_size > 500
        if file.suffix == ".png":
            assert file.read_bytes()[:8] == PNG

    missing_op = _invoke("plot", "match", "--run", str(run_dir), "--operator", "ggn")
    assert missing_op.exit_code == 2
    assert "split-ggn" in _text(missing_op)


def test_split_ggn_on_one_step_via_main(run_dir, tmp_path, monkeypatch, capsys):
    # a second run folder of digits_logreg: exact spectra, GGN split, one step
    config = TrainConfig(
        problem="digits_logreg", steps=2, batch_size=10, num_samples=50, lr=0.1
    )
    path = tmp_path / "logreg"
    train(config, path)
    argv = ["curvlab", "spectrum", "--run", str(path), "--method", "exact"]
    argv += ["--split-ggn", "--steps", "2", "--samples-per-class", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        app_module.main()
    assert exit_info.value.code == 0
    assert "step 2: D=650 (exact)" in " ".join(capsys.readouterr().out.split())
    stored = read_spectrum(RunFolder.open(path), 2).spectra
    assert set(stored) == {"hessian", "ggn", "residual"}
    assert RunFolder.open(path).done_steps(STAGE) == [2]

    monkeypatch.setattr(
        sys, "argv", ["curvlab", "plot", "spectrum", "--run", str(path)]
    )
    with pytest.raises(SystemExit) as exit_info:
        app_module.main()
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for operator in ("hessian", "ggn", "residual"):
        assert f"spectrum_{operator}.png" in out
    no_layers = _invoke("plot", "match", "--run", str(path))
    assert no_layers.exit_code == 2
    assert "--layers" in _text(no_layers)


def test_errors(tmp_path, run_dir):
    missing = _invoke("spectrum", "--run", str(tmp_path / "nope"))
    assert missing.exit_code == 2
    assert "not a curvlab run folder" in _text(missing)
    bad = _invoke("spectrum", "--run", str(run_dir), "--method", "dense")
    assert bad.exit_code == 2
    assert "method must be one of" in _text(bad)
    step = _invoke("spectrum", "--run", str(run_dir), "--steps", "1", *FAST)
    assert step.exit_code == 2
    assert "not recorded" in _text(step)
    nothing = _invoke("plot", "spectrum", "--run", str(tmp_path / "nope"))
    assert nothing.exit_code == 2


def test_plot_overlap_dispatch(tmp_path, monkeypatch, run_dir):
    calls = []

    class FakeModule:
        @staticmethod
        def plot_overlap(run):
            calls.append(run.path)
            return [run.path / "plots" / "overlap.png"]

    monkeypatch.setattr(plot_module.importlib.util, "find_spec", lambda name: True)
    monkeypatch.setattr(plot_module.importlib, "import_module", lambda name: FakeModule)
    result = _invoke("plot", "overlap", "--run", str(run_dir))
    assert result.exit_code == 0, result.output
    assert calls == [RunFolder.open(run_dir).path]
    assert "overlap.png" in result.output

    monkeypatch.setattr(plot_module.importlib.util, "find_spec", lambda name: None)
    absent = _invoke("plot", "overlap", "--run", str(run_dir))
    assert absent.exit_code == 2
    assert "overlap" in _text(absent)

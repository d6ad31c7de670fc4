"""Spectra over training: stored results, resuming, the GGN split and the plots."""

import json

import pytest
import torch

from curvlab.experiments.spectrum import (
    STAGE,
    SpectrumSettings,
    SpectrumSettingsError,
    compute_spectra,
    hessian_data,
    read_spectrum,
    spectrum_run,
    subset_indices,
)
from curvlab.experiments.spectrum_plots import match_rows, plot_match, plot_spectrum
from curvlab.experiments.training import train
from curvlab.operators import HessianOperator
from curvlab.runs import MissingStepError, RunFolder, TrainConfig
from curvlab.subspace.spectra import spectrum_distance

# digits_mlp: D = 3190, blocks of 1300, 4 x 420 and 210 parameters. Blocks up to
# 450 are exact, the full Hessian and the first layer go through SLQ + Lanczos.
SETTINGS = SpectrumSettings(
    layers=True,
    samples_per_class=2,
    top_k=3,
    bottom_k=1,
    num_steps=20,
    max_exact_dim=450,
    tol=1e-4,
)
PNG = b"\x89PNG\r\n\x1a\n"


def _train(path, problem="digits_mlp", steps=4):
    config = TrainConfig(
        problem=problem,
        steps=steps,
        batch_size=10,
        record_steps=(0,),
        num_samples=100,
        lr=0.1,
    )
    return train(config, path).run


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """A tiny digits_mlp run (steps 0 and 4) with its spectra."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = _train(tmp_path_factory.mktemp("spectrum_run"))
        events = []
        result = spectrum_run(run, SETTINGS, on_progress=events.append)
    finally:
        torch.set_num_threads(threads)
    return run, result, events


def test_stored_results_match_the_library(computed):
    run, result, events = computed
    assert result.computed == (0, 4)
    assert run.done_steps(STAGE) == [0, 4]
    problem = run.problem()
    data = hessian_data(problem, SETTINGS.samples_per_class, run.config.seed)
    assert data.num_samples == 20
    for step in (0, 4):
        stored = read_spectrum(run, step)
        assert stored.settings == SETTINGS
        assert stored.num_samples == 20
        model = run.load_into(problem.model, step).eval()
        want = compute_spectra(
            model, problem.loss_fn, data, SETTINGS, seed=run.config.seed
        )["hessian"]
        got = stored.spectra["hessian"]
        assert list(got.blocks) == ["0", "2", "4", "6", "8", "10"]
        assert got.full.method == "slq"
        assert got.blocks["0"].method == "slq"
        assert got.blocks["2"].method == "exact"
        for a, b in [(got.full, want.full)] + [
            (got.blocks[n], want.blocks[n]) for n in want.blocks
        ]:
            for key in ("nodes", "weights", "top_eigenvalues", "density", "grid"):
                torch.testing.assert_close(
                    getattr(a, key), getattr(b, key), rtol=1e-10, atol=1e-12
                )
            assert a.num_matvecs == b.num_matvecs
    # an exact block equals eigvalsh of the dense block on the same data
    model = run.load_into(problem.model, 4).eval()
    block = HessianOperator(model, problem.loss_fn, data, ["10.weight", "10.bias"])
    dense = block.to_dense().double()
    torch.testing.assert_close(
        read_spectrum(run, 4).spectra["hessian"].blocks["10"].eigenvalues,
        torch.linalg.eigvalsh((dense + dense.T) / 2),
        rtol=1e-10,
        atol=1e-10,
    )
    kinds = [e.kind for e in events]
    assert kinds[0] == "start"
    assert kinds[-1] == "done"
    assert kinds.count("spectrum") == 14 == events[-1].total
    entry = run.entry(STAGE, 4)
    assert entry["info"]["settings"] == SETTINGS.to_dict()
    assert entry["info"]["dim"] == 3190


def test_file_format(computed):
    run, _, _ = computed
    content = json.loads(run.path_for(STAGE, 0, ".json").read_text())
    assert content["format"] == "curvlab-spectrum"
    assert content["format_version"] == 1
    assert set(content["spectra"]) == {"hessian"}
    full = content["spectra"]["hessian"]["full"]
    assert len(full["grid"]) == len(full["density"]) == 1024
    assert abs(sum(full["weights"]) - 1) < 1e-12
    exact = content["spectra"]["hessian"]["blocks"]["2"]
    assert exact["weights"] is None  # uniform, left out
    assert len(exact["nodes"]) == 420


def test_resume_skips_done_steps(computed):
    run, _, _ = computed
    path = run.path_for(STAGE, 0, ".json")
    mtime = path.stat().st_mtime_ns
    events = []
    again = spectrum_run(run, SETTINGS, on_progress=events.append)
    assert again.computed == ()
    assert again.skipped == (0, 4)
    assert not [e for e in events if e.kind == "spectrum"]
    assert path.stat().st_mtime_ns == mtime
    with pytest.raises(SpectrumSettingsError, match="top_k"):
        spectrum_run(run, SpectrumSettings(**{**SETTINGS.to_dict(), "top_k": 2}))
    with pytest.raises(MissingStepError, match="not recorded"):
        spectrum_run(run, SETTINGS, steps=[3])


def test_unrequested_max_exact_dim_resumes_with_the_stored_one(computed):
    """Steps stored with another dense limit (4096 before ``MAX_DENSE_DIM``) resume."""
    run, _, _ = computed
    unrequested = SpectrumSettings(**{**SETTINGS.to_dict(), "max_exact_dim": None})
    again = spectrum_run(run, unrequested)
    assert again.computed == ()
    assert again.skipped == (0, 4)
    assert read_spectrum(run, 0).settings.max_exact_dim == 450
    with pytest.raises(SpectrumSettingsError, match="max_exact_dim"):
        spectrum_run(
            run, SpectrumSettings(**{**SETTINGS.to_dict(), "max_exact_dim": 9})
        )


def test_unrequested_max_exact_dim_of_a_new_run_is_the_dense_limit():
    from curvlab._limits import MAX_DENSE_DIM

    assert SpectrumSettings().spectrum_options(0)["max_exact_dim"] == MAX_DENSE_DIM


def test_subset_is_balanced_and_seeded():
    y = torch.arange(10).repeat(7)
    first = subset_indices(y, 10, 3, seed=0)
    assert torch.equal(first, subset_indices(y, 10, 3, seed=0))
    assert not torch.equal(first, subset_indices(y, 10, 3, seed=1))
    assert torch.bincount(y[first], minlength=10).tolist() == [3] * 10
    assert torch.equal(first, torch.sort(first).values)
    regression = subset_indices(torch.zeros(20, 2), None, 5, seed=0)
    assert regression.numel() == 5


def test_plots_and_match_distances(computed):
    run, _, _ = computed
    files = plot_spectrum(run)
    assert [f.name for f in files] == ["spectrum_hessian.png", "spectrum_extremes.png"]
    files += plot_match(run, step=0)
    names = [f.name for f in files]
    assert "match_distros_peak.png" in names
    assert "match_distros_wasserstein.png" in names
    for path in files:
        assert path.parent == run.path / "plots"
        assert path.stat().st_size > 500
        if path.suffix == ".png":
            assert path.stat().st_size > 10_000
            assert path.read_bytes()[:8] == PNG
    assert not list((run.path / "plots").glob(".tmp.*"))
    rows = run.read_table("plots/match_distances.csv")
    assert len(rows) == 2 * 6
    stored = read_spectrum(run, 4).spectra["hessian"]
    row = next(r for r in rows if r["step"] == 4 and str(r["layer"]) == "6")
    assert row["wasserstein"] == pytest.approx(
        spectrum_distance(stored.full, stored.blocks["6"]), rel=1e-12
    )
    assert row["layerhessians"] == pytest.approx(
        spectrum_distance(stored.full, stored.blocks["6"], "layerhessians"), rel=1e-12
    )
    with pytest.raises(MissingStepError, match="step 3"):
        plot_match(run, step=3)
    with pytest.raises(ValueError, match="split-ggn"):
        plot_spectrum(run, operators=["ggn"])
    with pytest.raises(ValueError, match="split-ggn"):
        match_rows({4: read_spectrum(run, 4)}, "residual")


def test_plots_of_the_computed_records_equal_those_of_the_stored_ones(computed):
    run, result, _ = computed
    stored = [p.read_bytes() for p in plot_spectrum(run) + plot_match(run)]
    files = plot_spectrum(run, result.results) + plot_match(run, result.results)
    assert [p.read_bytes() for p in files] == stored


def test_ggn_split_of_logistic_regression(tmp_path):
    # the Hessian of a model linear in its parameters is its GGN: H - G = 0
    run = _train(tmp_path / "logreg", problem="digits_logreg", steps=2)
    settings = SpectrumSettings(
        method="exact", split_ggn=True, samples_per_class=1, top_k=2
    )
    spectrum_run(run, settings, steps=[2])
    with pytest.raises(MissingStepError):
        read_spectrum(run, 0)
    stored = read_spectrum(run, 2).spectra
    assert set(stored) == {"hessian", "ggn", "residual"}
    hessian, ggn = stored["hessian"].full, stored["ggn"].full
    residual = stored["residual"].full
    assert hessian.dim == 650
    scale = float(hessian.eigenvalues.abs().max())
    assert float(residual.eigenvalues.abs().max()) < 1e-5 * scale
    assert float(ggn.eigenvalues.min()) > -1e-5 * scale
    torch.testing.assert_close(
        hessian.eigenvalues, ggn.eigenvalues, rtol=0, atol=1e-5 * scale
    )
    assert residual.num_matvecs == 0  # from the dense H and G
    rerun = spectrum_run(run, settings, steps=[2], force=True)
    assert rerun.computed == (2,)
    run2 = RunFolder.open(run.path)
    assert run2.invocations("spectrum")[-1]["status"] == "finished"

"""The report's Markdown-to-HTML converter, number formatting and layer section."""

from curvlab.experiments.report import _layers, fmt, markdown_to_html
from curvlab.experiments.spectrum import SpectrumSettings, read_spectrum, spectrum_run
from curvlab.experiments.training import train
from curvlab.runs import TrainConfig
from curvlab.subspace import layer_full_distances


def test_fmt_prints_four_significant_digits():
    assert fmt(1.23456) == "1.235"
    assert fmt(-0.000123456) == "-0.0001235"
    assert fmt(None) == "-"


def test_markdown_subset_converts_to_html():
    text = (
        "# Title\n\n"
        "A paragraph with `code` and **bold**\nover two lines & <escaped>.\n\n"
        "- one\n- two\n\n"
        "| a | b |\n|---|---|\n| 1 | `x` |\n| 2 | 3 |\n\n"
        "![a figure](plots/x.png)\n\n"
        "## Sub\n"
    )
    page = markdown_to_html(text, title="T")
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>T</title>" in page
    assert "<h1>Title</h1>" in page
    assert "<h2>Sub</h2>" in page
    assert (
        "<p>A paragraph with <code>code</code> and <strong>bold</strong> over two "
        "lines &amp; &lt;escaped&gt;.</p>"
    ) in page
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in page
    assert "<thead><tr><th>a</th><th>b</th></tr></thead>" in page
    assert "<tr><td>1</td><td><code>x</code></td></tr>" in page
    assert '<p><img src="plots/x.png" alt="a figure"></p>' in page


def test_layer_section_computes_its_distances_without_the_match_plot(tmp_path):
    config = TrainConfig(
        problem="digits_mlp",
        steps=1,
        batch_size=10,
        record_steps=(0,),
        num_samples=100,
        lr=0.1,
    )
    run = train(config, tmp_path / "run").run
    settings = SpectrumSettings(
        layers=True, samples_per_class=1, top_k=2, num_steps=10, max_exact_dim=450
    )
    spectrum_run(run, settings, steps=[0])
    figures = {
        name: f"plots/{name}"
        for name in ("match_distros_peak.png", "match_distros_wasserstein.png")
    }
    text, findings = _layers({0: read_spectrum(run, 0)}, figures)
    assert not (run.path / "plots" / "match_distances.csv").exists()
    rows = layer_full_distances({0: read_spectrum(run, 0).spectra["hessian"]})
    for row in rows:
        assert f"| {fmt(row.wasserstein)} |" in text
    by_distance = sorted(rows, key=lambda r: r.wasserstein)
    assert findings["closest_layer"] == by_distance[0].depth + 1
    assert findings["farthest_layer"] == by_distance[-1].depth + 1

"""The report's Markdown-to-HTML converter and number formatting."""

from curvlab.experiments.report import fmt, markdown_to_html


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

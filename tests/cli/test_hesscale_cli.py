"""``curvlab hesscale-quality`` and ``curvlab hesscale-cost``: files and tables."""

import csv
import sys

import pytest
import torch
from typer.testing import CliRunner

from curvlab.cli import app as app_module
from curvlab.cli._study import parse_numbers
from curvlab.cli.app import app
from curvlab.experiments.hesscale_cost import COST_METHODS
from curvlab.experiments.hesscale_quality import METHODS

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

QUALITY = ["--seeds", "1", "--samples", "2", "--width", "4", "--epochs", "0"]
COST = ["--depths", "0,1", "--width", "6", "--repeats", "2"]


def _png_ok(path):
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "hesscale-quality" in result.output
    assert "hesscale-cost" in result.output


def test_quality_writes_table_csv_and_png(tmp_path):
    threads = torch.get_num_threads()
    result = runner.invoke(app, ["hesscale-quality", *QUALITY, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads
    assert "| estimator |" in result.output
    assert "Ranking" in result.output
    for name in ("hesscale_quality.csv", "hesscale_quality.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert _png_ok(tmp_path / "hesscale_quality.png")
    with open(tmp_path / "hesscale_quality.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["method"] for row in rows] == list(METHODS)
    by_method = {row["method"]: row for row in rows}
    assert float(by_method["HesScale"]["total normalized"]) == 1.0
    assert float(by_method["zero"]["total normalized"]) > 0
    assert float(by_method["zero"]["total L1"]) > 0
    markdown = (tmp_path / "hesscale_quality.md").read_text()
    assert "| HesScale |" in markdown


def test_cost_writes_table_csv_and_png(tmp_path):
    out = tmp_path / "new" / "folder"
    result = runner.invoke(app, ["hesscale-cost", *COST, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| depth | D | gradient (ms) |" in result.output
    assert _png_ok(out / "hesscale_cost.png")
    with open(out / "hesscale_cost.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 * (1 + len(COST_METHODS))
    assert {row["method"] for row in rows} == {"gradient", *COST_METHODS}
    assert all(float(row["gradient_steps"]) > 0 for row in rows)
    assert (out / "hesscale_cost.md").read_text().count("\n") > 3


def test_cost_subset_of_methods(tmp_path):
    result = runner.invoke(
        app,
        [
            "hesscale-cost",
            *COST,
            "--methods",
            "SGD, AdaHesScale",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "| depth" in line)
    assert "SGD" in header
    assert "AdaHesScale" in header
    assert "Adam " not in header


def test_main_entry_point_runs_a_command(tmp_path, monkeypatch):
    argv = ["curvlab", "hesscale-quality", *QUALITY, "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        app_module.main()
    assert exit_info.value.code == 0
    assert _png_ok(tmp_path / "hesscale_quality.png")


@pytest.mark.parametrize(
    "args",
    [
        ["hesscale-quality", "--seeds", "0"],
        ["hesscale-quality", "--samples", "0"],
        ["hesscale-quality", "--samples", "100000"],
        ["hesscale-cost", "--depths", "one"],
        ["hesscale-cost", "--depths", ","],
        ["hesscale-cost", "--methods", "LBFGS", "--depths", "1", "--width", "2"],
    ],
)
def test_bad_values_exit_with_2(args, tmp_path):
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2


def test_out_is_required():
    result = runner.invoke(app, ["hesscale-quality", *QUALITY])
    assert result.exit_code == 2


def test_parse_list():
    assert parse_numbers(" 1, 2 ,4,", "--depths", str) == ["1", "2", "4"]
    with pytest.raises(ValueError, match="--depths"):
        parse_numbers(" , ", "--depths", str)

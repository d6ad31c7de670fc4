"""``curvlab grassmann``: files, tables and argument errors."""

import csv

import pytest
import torch
from typer.testing import CliRunner

from curvlab.cli._study import parse_numbers
from curvlab.cli.app import app
from curvlab.experiments.grassmann import QUANTITIES

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = ["--dims", "30,60", "--ratios", "0.1, 0.2", "--trials", "2"]


def test_help_lists_the_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "grassmann" in result.output


def test_writes_tables_csv_and_png(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "new" / "folder"
    result = runner.invoke(app, ["grassmann", *SMALL, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads
    assert "Chance values at k/D = 0.2 (D = 60, k = 12)" in result.output
    assert "| quantity | paper | random pair | random mask |" in result.output
    assert "| geodesic | 0.75466 |" in result.output
    assert "| rotated 0.5 | 0.2 | 60 | 12 |" in result.output
    png = (out / "grassmann.png").read_bytes()
    assert len(png) > 1000
    assert png.startswith(PNG_MAGIC)
    assert "| scenario | k/D | D | k |" in (out / "grassmann.md").read_text()
    with open(out / "grassmann.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 * 4 * 2
    assert {row["scenario"] for row in rows} == {"random", "mask", "rotated", "shared"}
    for quantity in QUANTITIES:
        assert all(0.0 <= float(row[f"{quantity}_mean"]) <= 1.0 for row in rows)
        assert all(float(row[f"{quantity}_std"]) >= 0.0 for row in rows)
    rotated = [row for row in rows if row["scenario"] == "rotated"]
    assert all(float(row["overlap_mean"]) == pytest.approx(0.5) for row in rotated)
    assert all(row["planted"] == "0.5" for row in rotated)


def test_without_the_chance_ratio(tmp_path):
    args = ["--dims", "20", "--ratios", "0.1", "--planted", "0.3", "--trials", "1"]
    result = runner.invoke(app, ["grassmann", "--out", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Chance values" not in text
    assert "| shared 0.3 | 0.1 | 20 | 2 |" in text
    assert "Wrote grassmann.csv" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dims", "10,a"], "--dims must be a comma-separated list of ints"),
        (["--ratios", ""], "--ratios must be a comma-separated list"),
        (["--ratios", "1.5"], "ratios must lie in (0, 1]"),
        (["--planted", "2"], "planted values must lie in [0, 1]"),
        (["--trials", "0"], "--trials"),
    ],
)
def test_rejects_bad_values(tmp_path, args, message):
    result = runner.invoke(app, ["grassmann", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_parse_numbers():
    assert parse_numbers(" 1, 2,3 ", "--x", int) == [1, 2, 3]
    assert parse_numbers("0.5", "--x") == [0.5]
    with pytest.raises(ValueError, match="--x must be a comma-separated list"):
        parse_numbers(" , ", "--x")

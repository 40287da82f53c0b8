"""Every line of `tune search`, `results`, `status` and `export` fits an 80-column terminal."""

import shutil

import pytest
from click.testing import CliRunner

from xtune.cli import tune
from xtune.data._synthetic import make_image_folder

pytestmark = pytest.mark.slow


def test_every_line_fits_80_columns_and_uses_more_when_wider(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def run(*args, columns=80):
        # In this process (the search itself runs in its child): the width comes from COLUMNS,
        # as in a terminal; no second TensorFlow start per command.
        monkeypatch.setenv("COLUMNS", str(columns))
        result = CliRunner().invoke(tune, list(args))
        assert result.exit_code == 0, result.output
        return result.output  # stdout and stderr, as a terminal shows them

    make_image_folder(tmp_path / "images", classes=("top", "middle", "bottom"), per_class=12)
    outputs = {
        "search": run("search", "--data", "images", "--project", "p", "--data-dir", "d", "--image-size", "16",
                      "--batch-size", "8", "--space", "small", "--max-trials", "4", "--max-epochs", "2",
                      "--factor", "2", "--workers", "1", "--verbose"),
        "results": run("results", "--project", "p"),
        "status": run("status", "--project", "p"),
        "export": run("export", "--project", "p", "--data-dir", "d"),
        "pareto": run("results", "--project", "p", "--pareto"),
    }
    for command, text in outputs.items():
        long = [line for line in text.splitlines() if len(line) > 80]
        assert not long, (command, long)
    assert "Test: accuracy" in outputs["export"] and "rank  trial" in outputs["results"]
    assert "epoch 1/2" in outputs["search"] and "Search finished" in outputs["search"]
    # A wider terminal gets the architecture beside the numbers, on one line per trial.
    wide = run("results", "--project", "p", columns=200)
    assert any(len(line) > 80 and "architecture" in line for line in wide.splitlines())
    shutil.rmtree(tmp_path / "d", ignore_errors=True)

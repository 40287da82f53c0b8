"""Every line of `tune search`, `results`, `status` and `export` fits an 80-column terminal."""

import os
import shutil
import subprocess
import sys

import pytest

from xtune.data._synthetic import make_image_folder

pytestmark = pytest.mark.slow


def tune(cwd, *args, columns=80):
    env = dict(os.environ, COLUMNS=str(columns), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-m", "xtune", *args], cwd=cwd, capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_every_line_fits_80_columns_and_uses_more_when_wider(tmp_path):
    make_image_folder(tmp_path / "images", classes=("top", "middle", "bottom"), per_class=12)
    outputs = {
        "search": tune(tmp_path, "search", "--data", "images", "--project", "p", "--data-dir", "d", "--image-size",
                       "16", "--batch-size", "8", "--space", "small", "--max-trials", "4", "--max-epochs", "2",
                       "--factor", "2", "--workers", "1", "--verbose"),
        "results": tune(tmp_path, "results", "--project", "p"),
        "status": tune(tmp_path, "status", "--project", "p"),
        "export": tune(tmp_path, "export", "--project", "p", "--data-dir", "d"),
        "pareto": tune(tmp_path, "results", "--project", "p", "--pareto"),
    }
    for command, text in outputs.items():
        long = [line for line in text.splitlines() if len(line) > 80]
        assert not long, (command, long)
    assert "Test: accuracy" in outputs["export"] and "rank  trial" in outputs["results"]
    # A wider terminal gets the architecture beside the numbers, on one line per trial.
    wide = tune(tmp_path, "results", "--project", "p", columns=200)
    assert any(len(line) > 80 and "architecture" in line for line in wide.splitlines())
    shutil.rmtree(tmp_path / "d", ignore_errors=True)

"""A size budget that resamples, searching some more, and a warm start (end to end, tiny)."""

import json
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from xtune.cli import tune
from xtune.search import load_project
from xtune.spaces import count_flops, count_params
from xtune.spaces._config import MiniXceptionConfig

from .conftest import search_args

pytestmark = pytest.mark.slow


def test_a_budget_excluding_most_of_the_space_completes_its_plan_within_it(image_folder, data_dir, tmp_path):
    project = tmp_path / "budget"
    # At 16 px, 2 classes: 9 % of the small space has at most 2,000 parameters; 0.7 % at most 300,000 FLOPs
    # (four draws that ignored the budget would all fit it once in 400 million searches).
    result = CliRunner().invoke(tune, search_args(image_folder, project, data_dir, "--max-params", "2000",
                                                  "--max-flops", "300000", "--quiet", "--max-trials", "4",
                                                  "--max-epochs", "2", "--factor", "2"))
    assert result.exit_code == 0, result.output
    state = load_project(project)
    assert len(state.trials) == state.plan.total_trials == 4
    assert all(t.status == "COMPLETED" for t in state.trials)  # nothing over budget was built, nothing failed
    for t in state.trials:
        config = MiniXceptionConfig.from_values(t.values)
        assert t.params == count_params(config, (16, 16, 3), 2) <= 2000
        assert count_flops(config, (16, 16, 3), 2) <= 300_000
    assert state.settings.max_params == 2000 and state.settings.max_flops == 300_000  # kept for a resume
    refused = CliRunner().invoke(tune, ["search", "--project", str(project), "--max-params", "3000"])
    assert refused.exit_code == 2 and "--max-params 3000 conflicts with this search's 2000" in refused.output


def test_an_impossible_budget_is_one_line_before_training(image_folder, data_dir, tmp_path):
    project = tmp_path / "impossible"
    result = CliRunner().invoke(tune, search_args(image_folder, project, data_dir, "--max-params", "100"))
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "no configuration of the space" in line and "fits 100 parameters at 16x16 with 2 classes" in line
    assert "the smallest has 737 parameters" in line  # and says how far off it is
    assert not list(project.glob("trial_*"))  # nothing trained


def _brackets(state):
    return [(t.bracket, t.round, t.epochs) for t in sorted(state.trials, key=lambda t: t.trial_id)]


def test_extending_a_finished_search_adds_whole_brackets_and_reruns_nothing(image_folder, data_dir, tmp_path):
    project = tmp_path / "extended"
    # A finished search of four trials (its own: extending the shared ten-trial one trains ten more).
    base = CliRunner().invoke(tune, search_args(image_folder, project, data_dir, "--max-trials", "4",
                                                "--max-epochs", "2", "--factor", "2", "--quiet"))
    assert base.exit_code == 0, base.output
    before = load_project(project)
    assert before.done and len(before.trials) == 4
    stamps = {t.trial_id: (project / f"trial_{t.trial_id}" / "checkpoint.weights.h5").stat().st_mtime_ns
              for t in before.trials}

    plan = CliRunner().invoke(tune, ["search", "--project", str(project), "--max-trials", "8", "--plan"])
    assert plan.exit_code == 0 and "This extends the search's plan of 4 trials" in plan.output
    assert "new" in plan.output

    # The extension (the default command), killed in the middle (after its first new trial), then resumed.
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, "-m", "xtune", "search", "--project", str(project), "--max-trials", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("trial 0004"):
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    result = CliRunner().invoke(tune, ["search", "--project", str(project), "--max-trials", "8", "--workers", "1"])
    assert result.exit_code == 0, result.output

    after = load_project(project)
    assert after.plan.total_trials == len(after.trials) == 8 and after.done
    assert all(t.status == "COMPLETED" for t in after.trials)
    assert after.plan.brackets[: len(before.plan.brackets)] == before.plan.brackets  # the old plan, then new brackets
    assert len(after.plan.brackets) > len(before.plan.brackets)
    for t in before.trials:  # kept, never re-run
        assert (project / f"trial_{t.trial_id}" / "checkpoint.weights.h5").stat().st_mtime_ns == stamps[t.trial_id]
        assert after.trial(t.trial_id).record.history == t.record.history
    assert _brackets(after)[:4] == _brackets(before)
    run = json.loads((project / "run.json").read_text())
    assert run["settings"]["max_trials"] == 8 and run["extensions"][0]["from_max_trials"] == 4
    # Fewer trials than stored is still a conflict.
    shrink = CliRunner().invoke(tune, ["search", "--project", str(project), "--max-trials", "4"])
    assert shrink.exit_code == 2 and "--max-trials 4 conflicts" in shrink.output


def test_a_warm_start_begins_with_the_other_searchs_best(finished, image_folder, data_dir, tmp_path):
    other = load_project(finished[0])
    best = []
    for t in other.ranked():
        if t.values not in best:
            best.append(t.values)
    project = tmp_path / "warm"
    args = ["search", "--data", str(image_folder), "--project", str(project), "--data-dir", str(data_dir),
            "--image-size", "24", "--batch-size", "8", "--space", "small", "--max-trials", "4", "--max-epochs", "2",
            "--factor", "2", "--seed", "9", "--warm-start", str(finished[0]), "--warm-start-top", "3", "--quiet",
            "--workers", "1"]
    result = CliRunner().invoke(tune, args)
    assert result.exit_code == 0, result.output
    state = load_project(project)
    firsts = [t.values for t in sorted(state.trials, key=lambda t: t.trial_id) if t.round == 0][:3]
    assert firsts == best[:3]
    warm = state.run["warm_start"]
    assert warm["project"] == str(finished[0].resolve()) and warm["image_size"] == 16 and warm["top"] == 3
    shown = CliRunner().invoke(tune, ["results", "--project", str(project)])
    assert f"Warm start: the first 3 configurations are the best of {finished[0].resolve()}" in " ".join(
        shown.output.split())

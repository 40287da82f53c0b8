"""`tune results`: one ranked row per trial, the best config, in table, CSV and JSON."""

import csv
import io
import json

import pytest
from click.testing import CliRunner

from xtune.cli import tune
from xtune.results import best_config, search_results, trial_config, trial_rows
from xtune.search import ProjectLock, load_project
from xtune.spaces import count_params

from .conftest import IMAGE_SIZE


def run(*args):
    return CliRunner().invoke(tune, list(map(str, args)))


def test_one_row_per_trial_ranked_by_the_objective(finished_search):
    state = load_project(finished_search)
    rows = trial_rows(state)
    assert sorted(r["trial_id"] for r in rows) == sorted(t.trial_id for t in state.trials)
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    for r in rows:
        trial = next(t for t in state.trials if t.trial_id == r["trial_id"])
        assert r["status"] == "COMPLETED"
        assert r["score"] == trial.score
        assert r["best_epoch"] == trial.record.best_epoch
        history = {h["epoch"]: h for h in trial.record.history}
        assert history[r["best_epoch"]]["val_accuracy"] == pytest.approx(r["score"])
        assert r["initial_epoch"] < r["epochs"] <= 4
        assert r["bracket"] is not None and r["round"] is not None
        assert r["params"] == count_params(trial_config(state, trial), (IMAGE_SIZE, IMAGE_SIZE, 3), 2)
        assert r["seconds"] > 0
        assert r["values"] and not any(k.startswith("tuner/") for k in r["values"])
    # Promotions continue their parent: some trial starts after epoch 0.
    assert any(r["initial_epoch"] > 0 for r in rows)


def test_best_config_is_the_top_row_and_rebuilds_with_its_parameter_count(finished_search):
    from xtune.spaces import build_model

    state = load_project(finished_search)
    best = best_config(state)
    top = trial_rows(state)[0]
    assert best["trial_id"] == top["trial_id"] and best["score"] == top["score"]
    assert set(best["config"]) >= set(top["values"])
    model = build_model(trial_config(state, state.trials[int(best["trial_id"])]), (IMAGE_SIZE, IMAGE_SIZE, 3), 2)
    assert model.count_params() == best["params"]
    assert best["class_names"] == ["horizontal", "vertical"]


def test_failed_interrupted_and_running_trials_are_listed_unranked(search_copy):
    # A failed trial (as the tuner records one), and one interrupted mid-way.
    failed, interrupted = search_copy / "trial_0001", search_copy / "trial_0002"
    for folder, status in ((failed, "FAILED"), (interrupted, "RUNNING")):
        trial = json.loads((folder / "trial.json").read_text())
        trial["status"], trial["score"] = status, None
        (folder / "trial.json").write_text(json.dumps(trial))
    record = json.loads((failed / "xtune.json").read_text())
    record.update(status="FAILED", reason="out of memory (ResourceExhaustedError)")
    (failed / "xtune.json").write_text(json.dumps(record))
    (interrupted / "backup").mkdir()
    (interrupted / "backup" / "state.json").write_text(json.dumps({"epochs_done": 1, "weights": "x", "history": []}))

    rows = {r["trial_id"]: r for r in search_results(search_copy).rows}
    assert rows["0001"]["status"] == "FAILED" and rows["0001"]["rank"] is None
    assert rows["0001"]["reason"] == "out of memory (ResourceExhaustedError)"
    assert rows["0002"]["status"] == "INTERRUPTED" and rows["0002"]["rank"] is None and rows["0002"]["epochs"] == 1
    ordered = [r["status"] for r in search_results(search_copy).rows]
    assert ordered[-2:] == ["INTERRUPTED", "FAILED"] and set(ordered[:-2]) == {"COMPLETED"}
    assert search_results(search_copy).state == "finished"

    with ProjectLock(search_copy):  # a search holds the project: its unfinished trial is running
        found = search_results(search_copy)
        assert found.state == "running"
        assert {r["trial_id"]: r for r in found.rows}["0002"]["status"] == "RUNNING"
        result = run("results", "--project", search_copy)
    assert result.exit_code == 0, result.output
    assert "out of memory (ResourceExhaustedError)" in result.output and "RUNNING" in result.output


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_results_command_in_every_format(finished_search, fmt):
    result = run("results", "--project", finished_search, "--format", fmt)
    assert result.exit_code == 0, result.output
    state = load_project(finished_search)
    best = trial_rows(state)[0]
    if fmt == "json":
        found = json.loads(result.output)
        assert [r["trial_id"] for r in found["trials"]] == [r["trial_id"] for r in trial_rows(state)]
        assert found["best"]["trial_id"] == best["trial_id"] and found["state"] == "finished"
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(result.output)))
        assert len(rows) == len(state.trials)
        assert rows[0]["trial_id"] == best["trial_id"] and rows[0]["rank"] == "1"
        assert float(rows[0]["score"]) == best["score"]
        for name in ("status", "bracket", "round", "epochs", "params", "seconds", "num_stages", "learning_rate"):
            assert name in rows[0]
        assert not any(k.startswith("tuner/") for k in rows[0])
    else:
        lines = result.output.splitlines()
        header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "trial", "status"])
        assert lines[header + 1].split()[:3] == ["1", best["trial_id"], "COMPLETED"]
        assert f"Best architecture: trial {best['trial_id']}" in result.output
        config = best_config(state)["config"]
        for key in config:  # the config reads as TOML
            assert any(line.startswith(f"{key} = ") for line in lines), key
        import tomllib

        block = "\n".join(line for line in lines if any(line.startswith(f"{k} = ") for k in config))
        assert tomllib.loads(block) == config


def test_top_keeps_the_best_completed_trials(finished_search):
    result = run("results", "--project", finished_search, "--top", 2, "--format", "json")
    assert result.exit_code == 0
    assert [r["rank"] for r in json.loads(result.output)["trials"]] == [1, 2]


def test_no_such_project_is_one_line(tmp_path):
    result = run("results", "--project", tmp_path / "nope")
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "no search at" in result.output


def test_a_folder_that_is_not_a_search_is_one_line(tmp_path):
    result = run("results", "--project", tmp_path)
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "is not a tune search" in result.output


def test_a_search_without_trials_lists_nothing(tmp_path):
    from xtune.search._project import SearchSettings, write_run
    from xtune.spaces import load_space

    write_run(tmp_path, SearchSettings(data="generated", image_size=IMAGE_SIZE), load_space("small").to_dict(), None)
    result = run("results", "--project", tmp_path)
    assert result.exit_code == 0 and "no trials yet" in result.output
    assert search_results(tmp_path).best is None

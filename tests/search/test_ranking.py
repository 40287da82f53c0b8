"""Ties on the objective are broken by validation loss, then by fewer parameters (results and promotions)."""

import json

from xtune.search import hyperband_plan, load_project
from xtune.search._project import SearchSettings, write_run
from xtune.search._state import rank_key
from xtune.spaces import load_space

from .test_oracle import TS, make_oracle


def test_rank_key_orders_by_objective_then_loss_then_parameters():
    def key(score, loss, params, tid):
        return rank_key("val_accuracy", True, score, loss, None, params, tid)
    trials = [key(0.9, 0.30, 100, "0003"), key(0.9, 0.20, 900, "0002"), key(0.95, 0.5, 10, "0005"),
              key(0.9, 0.20, 500, "0004"), key(0.9, None, 1, "0001")]
    assert [t[-1] for t in sorted(trials)] == [5, 4, 2, 3, 1]
    # A loss objective: lower is better; ties go to the higher accuracy.
    def loss(score, acc, tid):
        return rank_key("val_loss", False, score, None, acc, None, tid)
    assert [t[-1] for t in sorted([loss(0.3, 0.8, "1"), loss(0.3, 0.9, "2"), loss(0.2, 0.1, "3")])] == [3, 2, 1]


def _trial(project, trial_id, score, loss, params):
    folder = project / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    values = {"num_stages": 2, "tuner/bracket": 0, "tuner/round": 0, "tuner/epochs": 2, "tuner/initial_epoch": 0}
    (folder / "trial.json").write_text(json.dumps({
        "trial_id": trial_id, "status": "COMPLETED", "score": score,
        "hyperparameters": {"space": [], "values": values}}))
    (folder / "xtune.json").write_text(json.dumps({
        "trial_id": trial_id, "values": {"num_stages": 2}, "status": "COMPLETED", "best_epoch": 2, "params": params,
        "history": [{"epoch": 1, "val_accuracy": 0.5, "val_loss": 9.0},
                    {"epoch": 2, "val_accuracy": score, "val_loss": loss}]}))


def test_results_break_ties_by_validation_loss(tmp_path):
    write_run(tmp_path, SearchSettings(data="generated"), load_space("small").to_dict(), None)
    _trial(tmp_path, "0000", 0.975, 0.40, 1_000)  # the earlier trial, which a plain sort would keep first
    _trial(tmp_path, "0001", 0.975, 0.10, 5_000)
    _trial(tmp_path, "0002", 0.975, 0.10, 2_000)
    _trial(tmp_path, "0003", 0.900, 0.01, 10)
    state = load_project(tmp_path)
    assert [t.trial_id for t in state.ranked()] == ["0002", "0001", "0000", "0003"]
    assert state.best.trial_id == "0002"

    from click.testing import CliRunner

    from xtune.cli import tune

    out = CliRunner().invoke(tune, ["results", "--project", str(tmp_path), "--format", "json"])
    found = json.loads(out.output)
    assert found["tie_breaker"] == "val_loss" and [r["tie_breaker"] for r in found["trials"]] == [0.1, 0.1, 0.4, 0.01]


def test_promotions_break_ties_by_validation_loss(tmp_path):
    plan = hyperband_plan(10, 4, 3)  # bracket 1: 5 trials, the best 2 promoted
    oracle = make_oracle(tmp_path, plan)
    losses = {"0000": 0.9, "0001": 0.1, "0002": 0.5, "0003": 0.2, "0004": 0.7}
    for _ in range(5):
        trial = oracle.create_trial("tuner0")
        oracle.update_trial(trial.trial_id, {"val_accuracy": 0.8, "val_loss": losses[trial.trial_id], "params": 1.0})
        trial.status = TS.COMPLETED
        oracle.end_trial(trial)
    promoted = [oracle.create_trial(f"tuner{k}").hyperparameters.values["tuner/trial_id"] for k in (1, 2)]
    assert promoted == ["0001", "0003"]  # all tied on accuracy: the lowest validation losses

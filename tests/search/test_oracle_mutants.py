"""The oracle's promotion logic where mutation testing found it unpinned (no training: made-up scores).

Several workers (concurrent trials), failures that shrink a round, the tie-breakers of
a promotion, retries, and what ``reload`` leaves after a kill. See setup.cfg [mutmut].
"""

import json

import keras_tuner
import pytest
from keras_tuner.engine.trial import TrialStatus as TS

from xtune.search import _kt, hyperband_plan
from xtune.search._oracle import PlannedHyperbandOracle, trial_values
from xtune.search._sampler import ConfigSampler
from xtune.spaces import load_space, sample_config

from .test_oracle import drive, make_oracle

# hyperband_plan(10, 4, 3): bracket 1 runs 5 trials for 2 epochs, then its best 2 to 4
# epochs; bracket 0 runs 3 trials for 4 epochs. 9 trials in all.
PLAN = hyperband_plan(10, 4, 3)


def values(trial) -> dict:
    return trial.hyperparameters.values


def end(oracle, trial, status=TS.COMPLETED, **metrics):
    if metrics:
        oracle.update_trial(trial.trial_id, metrics)
    trial.status = status
    oracle.end_trial(trial)


def oracle_for(tmp_path, objective, direction, name="o"):
    hp = keras_tuner.HyperParameters()
    space = load_space("small")
    sample_config(hp, space)
    oracle = PlannedHyperbandOracle(keras_tuner.Objective(objective, direction), PLAN, ConfigSampler(space, 7),
                                    hyperparameters=hp)
    oracle.verbose = 0
    _kt.attach(oracle, tmp_path / name)
    return oracle


def test_failures_shrink_the_next_round_to_the_trials_that_completed(tmp_path):
    """Bracket 1 promotes 2 of 5; with only one of the 5 completed, its second round is that one trial."""
    oracle = make_oracle(tmp_path, PLAN)
    def first_round(t):
        return values(t)["tuner/bracket"] == 1 and values(t)["tuner/round"] == 0
    trials = drive(oracle, fail=lambda t: first_round(t) and t.trial_id != "0002")
    assert [(values(t)["tuner/bracket"], values(t)["tuner/round"]) for t in trials] == \
        [(1, 0)] * 5 + [(1, 1)] + [(0, 0)] * 3
    assert values(trials[5])["tuner/trial_id"] == "0002"
    assert oracle.is_finished()  # the shrunk round is complete: nothing is left waiting for a second promotion


@pytest.mark.parametrize("ended_first, ended_then", [
    # 3 of 5 results: the top 2 of 5 are not sure yet (upstream's rule); the 4th makes them sure.
    ([TS.COMPLETED] * 3, TS.COMPLETED),
    # A failure counts as a known loser: 2 completed + 1 failed is not enough, 3 + 1 is.
    ([TS.COMPLETED, TS.COMPLETED, TS.FAILED], TS.COMPLETED),
])
def test_with_several_workers_a_promotion_starts_once_the_top_of_the_round_is_sure(tmp_path, ended_first, ended_then):
    oracle = make_oracle(tmp_path, PLAN)
    running = [oracle.create_trial(f"w{k}") for k in range(5)]  # bracket 1's first round, all running
    scores = {"0000": 0.3, "0001": 0.6, "0002": 0.5, "0003": 0.9, "0004": 0.99}
    for trial, status in zip(running, ended_first + [ended_then]):
        if trial is running[len(ended_first)]:
            early = oracle.create_trial("w5")
            # Not sure yet: the free worker starts bracket 0 instead of promoting.
            assert (values(early)["tuner/bracket"], values(early)["tuner/round"]) == (0, 0)
            assert "tuner/trial_id" not in values(early)
        end(oracle, trial, status, **({"val_accuracy": scores[trial.trial_id]} if status == TS.COMPLETED else {}))
    promoted = oracle.create_trial("w6")
    completed = [t.trial_id for t in running[:4] if t.status == TS.COMPLETED]
    assert values(promoted)["tuner/round"] == 1
    # The best of the results so far, while trial 0004 (which would score best) still runs.
    assert values(promoted)["tuner/trial_id"] == max(completed, key=scores.get)


def test_an_idle_worker_waits_while_another_runs_the_last_trial(tmp_path):
    oracle = make_oracle(tmp_path, PLAN)
    assert not oracle.is_finished()  # nothing started
    drive(oracle, stop_after=PLAN.total_trials - 1)
    assert not oracle.is_finished()
    last = oracle.create_trial("w0")
    assert last.status == TS.RUNNING
    # Every bracket is started and full, but the last trial still runs: wait, do not stop.
    assert oracle.create_trial("w1").status == TS.IDLE
    assert not oracle.is_finished()
    end(oracle, last, val_accuracy=0.5)
    assert oracle.create_trial("w1").status == TS.STOPPED
    assert oracle.is_finished()


def _first_round_then_promote(oracle, metrics_of):
    for _ in range(5):
        trial = oracle.create_trial("w0")
        end(oracle, trial, **metrics_of[trial.trial_id])
    return [values(oracle.create_trial(f"w{k}"))["tuner/trial_id"] for k in (1, 2)]


def test_promotions_break_ties_by_fewer_parameters_then_the_earlier_trial(tmp_path):
    params = {"0000": 500, "0001": 100, "0002": 100, "0003": 300, "0004": 100}
    metrics = {t: {"val_accuracy": 0.8, "val_loss": 0.5, "params": float(p)} for t, p in params.items()}
    assert _first_round_then_promote(make_oracle(tmp_path, PLAN), metrics) == ["0001", "0002"]


def test_a_loss_objective_promotes_the_lowest_loss_then_the_highest_accuracy(tmp_path):
    metrics = {"0000": {"val_loss": 0.3, "val_accuracy": 0.7}, "0001": {"val_loss": 0.3, "val_accuracy": 0.9},
               "0002": {"val_loss": 0.2, "val_accuracy": 0.1}, "0003": {"val_loss": 0.3, "val_accuracy": 0.8},
               "0004": {"val_loss": 0.4}}  # a trial that reported no accuracy is ranked all the same
    oracle = oracle_for(tmp_path, "val_loss", "min")
    assert _first_round_then_promote(oracle, metrics) == ["0002", "0001"]


def test_a_trial_that_ends_invalid_runs_once_more_then_counts_as_failed(tmp_path):
    oracle = make_oracle(tmp_path, PLAN)
    first = oracle.create_trial("w0")
    end(oracle, first, TS.INVALID)  # e.g. an error that may be transient
    again = oracle.create_trial("w0")
    assert again.trial_id == first.trial_id and again.status == TS.RUNNING
    end(oracle, again, TS.INVALID)
    assert oracle.get_trial(first.trial_id).status == TS.FAILED  # one retry only
    assert oracle.create_trial("w0").trial_id != first.trial_id


@pytest.mark.parametrize("killed", ["before oracle.json saw the end", "while end_trial saved oracle.json"])
def test_reload_leaves_the_bookkeeping_a_clean_end_leaves(tmp_path, killed):
    oracle = make_oracle(tmp_path, PLAN)
    drive(oracle, stop_after=2)
    trial = oracle.create_trial("tuner0")
    end(oracle, trial, TS.INVALID)
    oracle.save()
    trial = oracle.create_trial("tuner0")  # its retry: the trial's second run
    assert trial.trial_id == "0002"
    before_end = (tmp_path / "p" / "oracle.json").read_text()
    end(oracle, trial, val_accuracy=0.5)
    if killed.startswith("before"):
        (tmp_path / "p" / "oracle.json").write_text(before_end)
    else:  # end_trial saves oracle.json before it lets go of the running trial
        assert json.loads((tmp_path / "p" / "oracle.json").read_text())["ongoing_trials"]
    fresh = make_oracle(tmp_path, PLAN)
    fresh.reload()
    assert fresh.end_order == oracle.end_order == ["0000", "0001", "0002"]
    assert dict(_kt.run_times(fresh)) == dict(_kt.run_times(oracle)) == {"0000": 1, "0001": 1, "0002": 2}
    assert _kt.retry_queue(fresh) == [] and not fresh.ongoing_trials
    assert fresh.create_trial("tuner0").trial_id == "0003"


def test_a_state_without_xtune_brackets_is_refused(tmp_path):
    oracle = make_oracle(tmp_path, PLAN)
    drive(oracle, stop_after=1)
    def saved():
        return json.loads((tmp_path / "p" / "oracle.json").read_text())  # set_state changes what it is given
    fresh = make_oracle(tmp_path, PLAN, name="q")
    upstream = {k: v for k, v in saved().items() if k != "xtune"}  # KerasTuner's own, or an earlier xtune's
    with pytest.raises(ValueError, match="no xtune bracket state"):
        fresh.set_state(upstream)
    other_format = saved()
    other_format["xtune"]["format"] += 1
    with pytest.raises(ValueError, match="no xtune bracket state"):
        fresh.set_state(other_format)
    fresh.set_state(saved())  # the same state with its brackets loads
    assert fresh.brackets == oracle.brackets and fresh.taken == oracle.taken


def test_a_trial_carries_the_registered_space(tmp_path):
    oracle = make_oracle(tmp_path, PLAN)
    registered = [hp.name for hp in oracle.hyperparameters.space]
    trial = oracle.create_trial("w0")
    assert registered and [hp.name for hp in trial.hyperparameters.space] == registered
    saved = json.loads((tmp_path / "p" / f"trial_{trial.trial_id}" / "trial.json").read_text())
    assert [hp["config"]["name"] for hp in saved["hyperparameters"]["space"]] == registered


def test_trial_values_are_the_architectures_without_bookkeeping(tmp_path):
    trial = make_oracle(tmp_path, PLAN).create_trial("w0")
    assert trial_values(trial) == {k: v for k, v in values(trial).items() if not k.startswith(("tuner/", "xtune/"))}
    assert trial_values(trial) and "tuner/epochs" in values(trial) and "xtune/seed" in values(trial)

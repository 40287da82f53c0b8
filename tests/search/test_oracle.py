"""The planned Hyperband oracle, driven without training (scores are made up)."""

import json
import random

import keras_tuner
import pytest
from keras_tuner.engine.trial import TrialStatus as TS

from xtune.search import _kt, hyperband_plan
from xtune.search._oracle import PlannedHyperbandOracle
from xtune.search._sampler import ConfigSampler
from xtune.search._state import space_values
from xtune.spaces import load_space, sample_config


def make_oracle(tmp_path, plan, seed=7, space="small", name="p"):
    hp = keras_tuner.HyperParameters()
    loaded = load_space(space)
    sample_config(hp, loaded)
    sampler = ConfigSampler(loaded, seed, first=[loaded.default_config().to_dict()])
    oracle = PlannedHyperbandOracle(keras_tuner.Objective("val_accuracy", "max"), plan, sampler, hyperparameters=hp)
    oracle.verbose = 0
    _kt.attach(oracle, tmp_path / name)
    return oracle


def drive(oracle, fail=lambda trial: False, score_seed=0, stop_after=None):
    """Run the oracle like a tuner would; return the created trials in order."""
    rng = random.Random(score_seed)
    created = []
    while stop_after is None or len(created) < stop_after:
        trial = oracle.create_trial("tuner0")
        if trial.status == TS.STOPPED:
            break
        assert trial.status == TS.RUNNING
        created.append(trial)
        if fail(trial):
            trial.status = TS.FAILED
        else:
            oracle.update_trial(trial.trial_id, {"val_accuracy": rng.random()})
            trial.status = TS.COMPLETED
        oracle.end_trial(trial)
        oracle.save()  # as BaseTuner.on_trial_end does
    return created


@pytest.mark.parametrize("max_trials, max_epochs", [(10, 4), (20, 4), (44, 100), (30, 9), (75, 27)])
def test_the_oracle_runs_exactly_the_plan(tmp_path, max_trials, max_epochs):
    plan = hyperband_plan(max_trials, max_epochs, 3)
    oracle = make_oracle(tmp_path, plan)
    trials = drive(oracle)
    assert len(trials) == plan.total_trials
    expected = [(b.number, r, rnd.epochs) for b in plan.brackets for r, rnd in enumerate(b.rounds) for _ in range(rnd.trials)]
    got = [(t.hyperparameters.values["tuner/bracket"], t.hyperparameters.values["tuner/round"],
            t.hyperparameters.values["tuner/epochs"]) for t in trials]
    assert got == expected
    assert oracle.is_finished()
    new = [t for t in trials if "tuner/trial_id" not in t.hyperparameters.values]
    assert len(new) == plan.architectures


def test_promotions_take_the_best_of_the_previous_round(tmp_path):
    plan = hyperband_plan(10, 4, 3)  # bracket 1: 5 trials x 2 epochs, then the best 2 to 4 epochs
    oracle = make_oracle(tmp_path, plan)
    trials = drive(oracle, score_seed=3)
    first_round = trials[:5]
    best_two = sorted(first_round, key=lambda t: oracle.get_trial(t.trial_id).score, reverse=True)[:2]
    promoted = [t.hyperparameters.values["tuner/trial_id"] for t in trials[5:7]]
    assert promoted == [t.trial_id for t in best_two]
    for t in trials[5:7]:
        assert t.hyperparameters.values["tuner/initial_epoch"] == 2
        parent = oracle.get_trial(t.hyperparameters.values["tuner/trial_id"])
        assert space_values(t.hyperparameters.values) == space_values(parent.hyperparameters.values)


def test_failed_trials_do_not_stall_a_bracket(tmp_path):
    plan = hyperband_plan(44, 100, 3)
    oracle = make_oracle(tmp_path, plan)
    # Every third trial fails, promotions included.
    trials = drive(oracle, fail=lambda t: int(t.trial_id) % 3 == 0)
    assert oracle.is_finished()
    assert len(trials) <= plan.total_trials
    # Each bracket still ends with trials trained to max_epochs.
    last_rounds = [t for t in trials if t.hyperparameters.values["tuner/epochs"] == 100]
    assert {t.hyperparameters.values["tuner/bracket"] for t in last_rounds} == {2, 1, 0}


def test_a_round_with_nothing_to_promote_ends_its_bracket(tmp_path):
    plan = hyperband_plan(10, 4, 3)
    oracle = make_oracle(tmp_path, plan)
    trials = drive(oracle, fail=lambda t: t.hyperparameters.values["tuner/bracket"] == 1)
    # Bracket 1's five first-round trials all failed: no promotion; bracket 0 still runs.
    assert [t.hyperparameters.values["tuner/bracket"] for t in trials] == [1] * 5 + [0] * 3
    assert oracle.is_finished()  # bracket 1 is over, not waiting for promotions that cannot come


def test_same_seed_same_architectures_in_the_same_order(tmp_path):
    plan = hyperband_plan(20, 4, 3)
    a = drive(make_oracle(tmp_path, plan, seed=11, name="a"), score_seed=1)
    b = drive(make_oracle(tmp_path, plan, seed=11, name="b"), score_seed=2)
    c = drive(make_oracle(tmp_path, plan, seed=12, name="c"), score_seed=1)
    def first(trials):
        return [t.hyperparameters.values for t in trials if t.hyperparameters.values["tuner/round"] == 0]
    assert first(a) == first(b)
    assert first(a) != first(c)


def test_reload_forgets_a_trial_created_but_never_recorded(tmp_path):
    plan = hyperband_plan(10, 4, 3)
    oracle = make_oracle(tmp_path, plan)
    drive(oracle, stop_after=3)
    # A kill between writing trial_0003/trial.json and oracle.json: the trial file
    # exists, oracle.json does not know it.
    saved = json.loads((tmp_path / "p" / "oracle.json").read_text())
    ghost = oracle.create_trial("tuner0")
    (tmp_path / "p" / "oracle.json").write_text(json.dumps(saved))
    fresh = make_oracle(tmp_path, plan)
    fresh.reload()
    assert sorted(fresh.trials) == ["0000", "0001", "0002"]
    again = fresh.create_trial("tuner0")
    assert again.trial_id == ghost.trial_id
    assert again.hyperparameters.values == ghost.hyperparameters.values


def test_reload_ends_a_trial_whose_end_was_half_written(tmp_path):
    plan = hyperband_plan(10, 4, 3)
    oracle = make_oracle(tmp_path, plan)
    drive(oracle, stop_after=2)
    trial = oracle.create_trial("tuner0")
    before_end = json.loads((tmp_path / "p" / "oracle.json").read_text())
    oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5})
    trial.status = TS.COMPLETED
    oracle.end_trial(trial)
    # A kill after trial.json said COMPLETED but before oracle.json did.
    (tmp_path / "p" / "oracle.json").write_text(json.dumps(before_end))
    fresh = make_oracle(tmp_path, plan)
    fresh.reload()
    nxt = fresh.create_trial("tuner0")
    assert nxt.trial_id == "0003"  # 0002 is not re-run
    assert fresh.get_trial("0002").status == TS.COMPLETED


def test_the_first_trial_is_the_default_configuration(tmp_path):
    from xtune.spaces import PRESETS

    oracle = make_oracle(tmp_path, hyperband_plan(10, 4, 3), space="default")
    first = oracle.create_trial("tuner0")
    values = space_values(first.hyperparameters.values)
    assert values == PRESETS["seed"].to_dict()  # the book's model is always measured
    second = oracle.create_trial("tuner1")
    assert space_values(second.hyperparameters.values) != values

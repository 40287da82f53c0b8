"""--max-trials maps to complete Hyperband brackets, never more trials than asked.

"KerasTuner's" Hyperband is asked at test time, never copied: the round sizes, epochs and
bracket counts come from ``keras_tuner.oracles.HyperbandOracle`` itself (``_get_size``,
``_get_epochs``, ``_get_num_rounds``, ``_get_num_brackets`` in
keras_tuner/src/tuners/hyperband.py, read on 1.4.8), so an upgrade that changes them
fails these tests instead of silently disagreeing with the plan.
"""

import functools

import keras_tuner
import pytest

from xtune.errors import UsageError
from xtune.search import hyperband_plan
from xtune.search._plan import min_epochs_for

# (max_epochs, factor): powers of the factor and not, factors 2 to 4, one bracket only (1, 4).
SETTINGS = [(100, 3), (81, 3), (27, 3), (9, 3), (4, 3), (1, 3), (9, 2), (16, 2), (50, 4), (4, 4)]


def keras_tuner_oracle(max_epochs, factor, min_epochs=None):
    """KerasTuner's own HyperbandOracle; ``min_epochs`` set after construction, as xtune's oracle does."""
    oracle = keras_tuner.oracles.HyperbandOracle(objective=keras_tuner.Objective("val_accuracy", "max"),
                                                 max_epochs=max_epochs, factor=factor)
    if min_epochs is not None:
        oracle.min_epochs = min_epochs
    return oracle


@functools.cache
def keras_tuner_hyperband(max_epochs, factor):
    """(most brackets, {bracket: [(trials, epochs) per round]}) of KerasTuner's Hyperband."""
    oracle = keras_tuner_oracle(max_epochs, factor)
    most = oracle._get_num_brackets()
    rounds = {b: [(oracle._get_size(b, r), oracle._get_epochs(b, r)) for r in range(oracle._get_num_rounds(b))]
              for b in range(most)}
    return most, rounds


def iteration_trials(max_epochs, factor, brackets):
    """Trials of one KerasTuner iteration of ``brackets`` brackets (``brackets-1 .. 0``)."""
    _, rounds = keras_tuner_hyperband(max_epochs, factor)
    return sum(t for b in range(brackets) for t, _ in rounds[b])


def check_plan_rule(max_trials, max_epochs, factor):
    """Assert the plan's defining rule (the module docstring of xtune.search._plan)."""
    case = f"--max-trials {max_trials} --max-epochs {max_epochs} --factor {factor}"
    most, rounds = keras_tuner_hyperband(max_epochs, factor)
    try:
        plan = hyperband_plan(max_trials, max_epochs, factor)
    except UsageError as error:
        # Refused only when even one iteration of one bracket (full trainings) does not fit.
        smallest = iteration_trials(max_epochs, factor, 1)
        assert smallest > max_trials, f"{case}: refused, yet {smallest} trials would fit"
        assert f"smallest complete plan has {smallest} trials" in str(error), case
        return None
    assert (plan.max_trials, plan.max_epochs, plan.factor) == (max_trials, max_epochs, factor), case

    # 1. The most brackets s for which one iteration (brackets s-1 .. 0) fits.
    s = plan.num_brackets
    assert 1 <= s <= most, case
    one = iteration_trials(max_epochs, factor, s)
    assert one <= max_trials, f"{case}: one iteration of {s} brackets is {one} trials"
    for more in range(s + 1, most + 1):
        assert iteration_trials(max_epochs, factor, more) > max_trials, \
            f"{case}: {more} brackets fit ({iteration_trials(max_epochs, factor, more)} trials), the plan has {s}"
    # KerasTuner, given the plan's min_epochs, runs that many brackets.
    assert keras_tuner_oracle(max_epochs, factor, plan.min_epochs)._get_num_brackets() == s, case

    # 2. As many whole iterations as fit, then as many leading brackets of one more as fit.
    order = list(range(s - 1, -1, -1))  # KerasTuner's order: most rounds first
    whole = sum(1 for b in plan.brackets if b.number == order[-1])  # each whole iteration ends with bracket 0
    assert whole * one <= max_trials < (whole + 1) * one, f"{case}: {whole} whole iterations of {one} trials"
    leading = len(plan.brackets) - whole * s
    assert 0 <= leading < s, case
    expected = [(i, n) for i in range(whole) for n in order] + [(whole, n) for n in order[:leading]]
    assert [(b.iteration, b.number) for b in plan.brackets] == expected, case
    room = max_trials - whole * one
    used = iteration_trials(max_epochs, factor, s) - iteration_trials(max_epochs, factor, s - leading)
    assert used <= room, case
    next_bracket = sum(t for t, _ in rounds[order[leading]])
    assert used + next_bracket > room, f"{case}: bracket {order[leading]} ({next_bracket} trials) would fit"

    # Every bracket is KerasTuner's, round for round; promotions train only the epochs they add.
    total_trials = total_epochs = architectures = 0
    for bracket in plan.brackets:
        assert [(r.trials, r.epochs) for r in bracket.rounds] == rounds[bracket.number], case
        previous = 0
        for r in bracket.rounds:
            assert r.new_epochs == r.epochs - previous, case
            previous = r.epochs
            total_epochs += r.trials * r.new_epochs
        assert bracket.rounds[-1].epochs == max_epochs, case  # every bracket ends with full trainings
        assert bracket.trials == sum(r.trials for r in bracket.rounds), case
        total_trials += bracket.trials
        architectures += bracket.rounds[0].trials
    assert plan.total_trials == total_trials <= max_trials, case
    assert plan.total_epochs == total_epochs and plan.architectures == architectures, case
    assert plan.full_trainings == pytest.approx(total_epochs / max_epochs), case
    assert plan.iterations == whole + (1 if leading else 0), case
    return plan


@pytest.mark.parametrize("max_epochs, factor", SETTINGS)
def test_every_budget_gets_the_plan_the_rule_defines(max_epochs, factor):
    # Every --max-trials from 1 to a little over two iterations of the most brackets.
    most, _ = keras_tuner_hyperband(max_epochs, factor)
    budgets = range(1, 2 * iteration_trials(max_epochs, factor, most) + 5)
    plans = [check_plan_rule(n, max_epochs, factor) for n in budgets]
    # The budgets cover every bracket count, refusals and partial iterations.
    assert {p.num_brackets for p in plans if p} == set(range(1, most + 1))
    assert None in plans or iteration_trials(max_epochs, factor, 1) == 1
    assert any(p and p.iterations > 1 and len(p.brackets) % p.num_brackets for p in plans) or most == 1


@pytest.mark.parametrize("max_epochs, factor", SETTINGS)
def test_min_epochs_gives_keras_tuner_each_bracket_count(max_epochs, factor):
    most, _ = keras_tuner_hyperband(max_epochs, factor)
    for s in range(1, most + 1):
        assert keras_tuner_oracle(max_epochs, factor, min_epochs_for(max_epochs, factor, s))._get_num_brackets() == s


def _drive_keras_tuner(tmp_path, max_epochs, factor):
    """Run KerasTuner's HyperbandOracle for one iteration; (bracket, round, epochs) of each trial."""
    hp = keras_tuner.HyperParameters()
    hp.Int("x", 0, 10**6)  # room for every draw: no collisions
    oracle = keras_tuner.oracles.HyperbandOracle(objective=keras_tuner.Objective("score", "max"), max_epochs=max_epochs,
                                                 factor=factor, hyperband_iterations=1, seed=1, hyperparameters=hp)
    oracle._set_project_dir(str(tmp_path), "kt")
    seen = []
    for n in range(10_000):
        trial = oracle.create_trial("tuner0")
        if trial.status == "STOPPED":
            return seen
        values = trial.hyperparameters.values
        seen.append((values["tuner/bracket"], values["tuner/round"], values["tuner/epochs"]))
        oracle.update_trial(trial.trial_id, {"score": (n * 7919) % 1000})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    raise AssertionError("KerasTuner's Hyperband did not stop")


@pytest.mark.parametrize("max_epochs, factor", [(27, 3), (9, 3), (4, 3), (9, 2), (16, 4)])
def test_a_budget_of_one_keras_tuner_iteration_plans_exactly_that_iteration(tmp_path, max_epochs, factor):
    ran = _drive_keras_tuner(tmp_path, max_epochs, factor)
    plan = hyperband_plan(len(ran), max_epochs, factor)
    assert plan.total_trials == len(ran)
    assert [(b.number, r, rnd.epochs) for b in plan.brackets for r, rnd in enumerate(b.rounds)
            for _ in range(rnd.trials)] == ran


def test_the_readme_plan():
    plan = hyperband_plan(50, 100, 3)
    assert plan.total_trials == 44
    assert [(b.number, [(r.trials, r.epochs) for r in b.rounds]) for b in plan.brackets] == [
        (2, [(18, 12), (6, 34), (2, 100)]),
        (1, [(9, 34), (3, 100)]),
        (0, [(6, 100)]),
    ]
    assert plan.architectures == 18 + 9 + 6
    # Promotions continue from their parent: 18*12 + 6*22 + 2*66 + 9*34 + 3*66 + 6*100.
    assert plan.total_epochs == 1584
    assert plan.full_trainings == pytest.approx(15.84)
    assert plan.iterations == 1


def test_the_plan_as_a_dict_is_the_plan():
    """``to_dict`` is what run_search's ``search_start`` event carries (and the CLI prints from)."""
    plan = hyperband_plan(180, 27, 3)  # two whole iterations and part of a third
    assert plan.iterations == 3
    d = plan.to_dict()
    assert {k: d[k] for k in ("max_trials", "max_epochs", "factor", "brackets_per_iteration", "iterations",
                              "total_trials", "architectures", "total_epochs")} == {
        "max_trials": 180, "max_epochs": 27, "factor": 3, "brackets_per_iteration": plan.num_brackets,
        "iterations": 3, "total_trials": plan.total_trials, "architectures": plan.architectures,
        "total_epochs": plan.total_epochs}
    assert d["full_trainings"] == round(plan.full_trainings, 2)
    assert d["brackets"] == [
        {"iteration": b.iteration, "bracket": b.number, "trials": b.trials,
         "rounds": [{"trials": r.trials, "epochs": r.epochs, "new_epochs": r.new_epochs} for r in b.rounds]}
        for b in plan.brackets]


@pytest.mark.parametrize("args, message", [
    ((3, 100, 3), "--max-trials 3 is too small .* smallest complete plan has 6 trials"),
    ((0, 100, 3), "--max-trials must be at least 1; got 0"),
    ((10, 0, 3), "--max-epochs must be at least 1; got 0"),
    ((10, 9, 1), "--factor must be at least 2; got 1"),
])
def test_out_of_range_arguments_are_a_clear_error(args, message):
    with pytest.raises(UsageError, match=message):
        hyperband_plan(*args)


def test_the_smallest_arguments_are_accepted():
    plan = hyperband_plan(1, 1, 2)  # one trial of one epoch: one bracket of one round
    assert [(b.number, [(r.trials, r.epochs) for r in b.rounds]) for b in plan.brackets] == [(0, [(1, 1)])]


def test_more_budget_never_means_fewer_trials():
    totals = [hyperband_plan(n, 27, 3).total_trials for n in range(5, 300)]
    assert totals == sorted(totals)


def test_the_plan_defaults_are_the_search_defaults():
    from xtune.search import SearchSettings

    d = SearchSettings(data="demo")
    assert hyperband_plan() == hyperband_plan(d.max_trials, d.max_epochs, d.factor)


def test_command_line_defaults_are_the_settings_defaults():
    import dataclasses

    from xtune.cli.cmd_search import search
    from xtune.search import SearchSettings

    # What the command receives when no option is given (Click >= 8.3 shows an option
    # without a default as a sentinel in `param.default`, and passes None).
    defaults = dict(search.make_context("search", []).params)
    defaults["max_image_bytes"] = defaults.pop("max_image_mb") << 20
    for field in dataclasses.fields(SearchSettings):
        if field.name in ("data", "brackets_per_iteration"):  # required; fixed by an extension, not an option
            continue
        assert defaults[field.name] == field.default, field.name

"""--max-trials maps to complete Hyperband brackets, never more trials than asked."""

import pytest

from xtune.errors import UsageError
from xtune.search import hyperband_plan
from xtune.search._plan import _bracket, _num_brackets


@pytest.mark.parametrize("max_epochs, factor, trials", [(100, 3, 254), (81, 3, 211), (27, 3, 70), (9, 3, 23)])
def test_one_full_iteration_matches_keras_tuner(max_epochs, factor, trials):
    # The per-iteration sizes DESIGN.md measured on KerasTuner 1.4.8.
    brackets = range(_num_brackets(max_epochs, factor))
    assert sum(_bracket(max_epochs, factor, 0, b).trials for b in brackets) == trials


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


@pytest.mark.parametrize("max_trials", range(3, 400, 7))
@pytest.mark.parametrize("max_epochs, factor", [(100, 3), (27, 3), (4, 3), (9, 2), (50, 4)])
def test_plans_are_complete_and_never_over_budget(max_trials, max_epochs, factor):
    try:
        plan = hyperband_plan(max_trials, max_epochs, factor)
    except UsageError as error:
        assert "too small" in str(error)
        return
    assert plan.total_trials <= max_trials
    for bracket in plan.brackets:
        assert bracket.rounds[-1].epochs == max_epochs  # every bracket ends with full trainings
        assert [r.trials for r in bracket.rounds] == sorted((r.trials for r in bracket.rounds), reverse=True)
    # Brackets run in KerasTuner's order: most rounds first, within each iteration.
    numbers = [b.number for b in plan.brackets]
    assert numbers[: plan.num_brackets] == list(range(plan.num_brackets - 1, -1, -1))
    # Close to the budget: one more bracket of the next in line would not fit.
    full = [b for b in plan.brackets if b.iteration == 0]
    next_bracket = full[len(plan.brackets) % len(full)]
    assert plan.total_trials + next_bracket.trials > max_trials


def test_too_small_a_budget_is_a_clear_error():
    with pytest.raises(UsageError, match="--max-trials 3 is too small .* smallest complete plan has 6 trials"):
        hyperband_plan(3, 100, 3)


def test_more_budget_never_means_fewer_trials():
    totals = [hyperband_plan(n, 27, 3).total_trials for n in range(5, 300)]
    assert totals == sorted(totals)


def test_command_line_defaults_are_the_settings_defaults():
    import dataclasses

    from xtune.cli.cmd_search import search
    from xtune.search import SearchSettings

    defaults = {p.name: p.default for p in search.params}
    defaults["max_image_bytes"] = defaults.pop("max_image_mb") << 20
    for field in dataclasses.fields(SearchSettings):
        if field.name == "data":
            continue
        value = defaults[field.name]
        if field.name == "kaggle_split":
            value = tuple(int(v) for v in value.split(","))
        assert value == field.default, field.name

"""The sampler where mutation testing found it unpinned: coverage of every value, distinct draws in a
nearly exhausted space, the given first configurations, the architecture seeds. See setup.cfg [mutmut]."""

import numpy as np
import pytest

from xtune.search._sampler import BudgetError, ConfigSampler, active_values, config_key, draw_values
from xtune.spaces import load_space
from xtune.spaces._space import FAMILY, SEED, narrow_space

# Six configurations: batch norm on (momentum 0.99 or 0.9) or off, times two optimizers;
# every other hyperparameter fixed at the seed model's value (which is also its default).
TINY = narrow_space({**{s.name: getattr(SEED, s.name) for s in FAMILY}, "batch_norm": [True, False],
                     "bn_momentum": [0.99, 0.9], "optimizer": ["rmsprop", "adam"]}, name="tiny")
FULL = SEED.to_dict()  # every hyperparameter, as the seed model has it


def test_draws_reach_every_value_of_every_hyperparameter():
    space = load_space("small")
    rng = np.random.default_rng(0)
    seen = {spec.name: set() for spec in space.specs}
    for _ in range(400):
        for name, value in draw_values(space, rng).items():
            seen[name].add(value)
    for spec in space.specs:
        assert seen[spec.name] == set(spec.all_values()), spec.name


def test_a_configuration_is_one_key_in_any_order():
    values = {"optimizer": "adam", "batch_norm": False, "num_stages": 2}
    assert config_key(values) == config_key(dict(reversed(list(values.items()))))


@pytest.mark.parametrize("reverse", [False, True])
def test_draws_are_distinct_until_the_space_is_exhausted_then_repeat(reverse):
    """Every configuration once; a taken configuration recorded in another key order is still taken."""
    assert TINY.num_configurations() == 6
    sampler, taken, got = ConfigSampler(TINY, 11), set(), []
    for slot in range(6):
        values = sampler.draw(slot, taken)
        got.append(config_key(values))
        taken.add(config_key(dict(reversed(list(values.items()))) if reverse else values))
    assert len(set(got)) == 6
    # Nothing left: a repeat (the slot's own seed still differs), not an error.
    assert config_key(sampler.draw(6, taken)) in set(got)


def test_nothing_within_the_budget_is_an_error_that_says_so():
    with pytest.raises(BudgetError, match="size budget"):
        ConfigSampler(TINY, 1, fits=lambda values: False).draw(0, set())


def test_given_first_configurations_are_kept_once_in_order_and_within_the_budget():
    a = {**FULL, "batch_norm": False, "bn_momentum": 0.9, "optimizer": "adam"}  # momentum inactive here
    big = {**FULL, "batch_norm": True, "bn_momentum": 0.99, "optimizer": "adam"}
    b = {"batch_norm": True, "bn_momentum": 0.9}  # partial (an older record): the rest takes the defaults

    def fits(values):
        return not (values["batch_norm"] and values["bn_momentum"] == 0.99 and values["optimizer"] == "adam")

    sampler = ConfigSampler(TINY, 5, fits=fits, first=[a, a, big, b])
    active_a = {k: v for k, v in a.items() if k != "bn_momentum"}
    active_b = {**FULL, **b}
    assert sampler.first == [active_a, active_b]
    taken = set()
    for slot, expected in enumerate([active_a, active_b]):
        assert sampler.draw(slot, taken) == expected
        taken.add(config_key(expected))
    assert sampler.draw(2, taken) not in (active_a, active_b)  # then drawn, within the budget
    assert fits(sampler.draw(2, taken))


def test_active_values_keeps_every_active_value_after_an_inactive_one():
    space = load_space("default")
    values = {**FULL, "batch_norm": False, "optimizer": "adam", "learning_rate": 3e-3}
    out = active_values(space, values)
    assert "bn_momentum" not in out  # inactive without batch norm
    assert out == {k: v for k, v in values.items() if k != "bn_momentum"}
    assert list(out) == [s.name for s in space.specs if s.name != "bn_momentum"]  # the space's order


def test_architecture_seeds_are_distinct_32_bit_integers():
    sampler = ConfigSampler(load_space("small"), 3)
    seeds = [sampler.seed_of(slot) for slot in range(500)]
    assert all(type(s) is int and 0 <= s < 2**31 for s in seeds)  # a valid seed for every RNG it seeds
    assert len(set(seeds)) == len(seeds)
    assert seeds == [ConfigSampler(load_space("small"), 3).seed_of(slot) for slot in range(500)]

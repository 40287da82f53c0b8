"""Which configuration a new trial gets: seeded per slot, distinct, within a size budget.

A search draws one configuration for every first-round trial of its plan. The n-th
such *slot* (counted in plan order) is drawn from ``SeedSequence(seed, spawn_key=(n,
attempt))``, so

* nearby seeds give independent streams (KerasTuner adds one to the seed per value
  drawn, so ``--seed 1`` and ``--seed 2`` walked overlapping streams),
* a slot gets the same configuration however many workers run the search and in
  whatever order they ask, and
* a search extended with more brackets draws its new slots as a longer search would.

The first slots take the given configurations (a warm start's, then the space's
default); a draw that repeats an earlier one, or that is over the size budget, is
drawn again before anything is built.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np

from xtune.spaces import SearchSpace

ATTEMPTS = 2000  # draws per slot before a repeat is accepted (a nearly exhausted space)


class BudgetError(ValueError):
    """No configuration of the space fits the size budget."""


def config_key(values: dict) -> str:
    """A configuration's identity (its active values, order-free)."""
    return json.dumps(values, sort_keys=True)


def draw_values(space: SearchSpace, rng: np.random.Generator) -> dict:
    """Uniform values for every active hyperparameter of ``space`` (inactive ones are left out)."""
    values: dict = {}
    for spec in space.specs:
        if spec.condition and values.get(spec.condition[0]) not in spec.condition[1]:
            continue
        options = spec.all_values()
        values[spec.name] = options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]
    return values


def active_values(space: SearchSpace, config_values: dict) -> dict:
    """``config_values`` restricted to the hyperparameters active in ``space`` (in its order)."""
    out: dict = {}
    for spec in space.specs:
        if spec.condition and out.get(spec.condition[0]) not in spec.condition[1]:
            continue
        out[spec.name] = config_values.get(spec.name, spec.default)
    return out


class ConfigSampler:
    """Draws the configuration of each first-round slot of a search.

    Args:
        space: The search space.
        seed: The search seed.
        fits: ``values -> bool``: whether a configuration is within the size budget
            (None: no budget).
        first: Configurations (value dicts) for the first slots, in order; those over
            the budget or repeated are left out.
    """

    def __init__(self, space: SearchSpace, seed: int, *, fits: Callable[[dict], bool] | None = None,
                 first: Sequence[dict] = ()):
        self.space = space
        self.seed = int(seed)
        self.fits = fits or (lambda values: True)
        self.first: list[dict] = []
        seen: set[str] = set()
        for values in first:
            values = active_values(space, values)
            key = config_key(values)
            if key not in seen and self.fits(values):
                seen.add(key)
                self.first.append(values)

    def seed_of(self, slot: int) -> int:
        """The seed of the architecture drawn for ``slot`` (its weights, random layers)."""
        state = np.random.SeedSequence(self.seed, spawn_key=(1, slot)).generate_state(1)[0]
        return int(state) % (2**31 - 1)

    def draw(self, slot: int, taken: set[str]) -> dict:
        """The configuration of ``slot`` (0-based, in plan order), not in ``taken``.

        Raises:
            BudgetError: Nothing within the budget was found.
        """
        if slot < len(self.first):
            return dict(self.first[slot])
        fallback = None
        for attempt in range(ATTEMPTS):
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(0, slot, attempt)))
            values = draw_values(self.space, rng)
            if not self.fits(values):
                continue
            if config_key(values) not in taken:
                return values
            fallback = fallback or values
        if fallback is not None:
            return fallback  # the space is (nearly) exhausted: a repeat, with its own seed
        raise BudgetError(f"no configuration of the space fits the size budget in {ATTEMPTS} draws")

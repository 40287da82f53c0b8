"""A size budget: parameters and FLOPs per image, from the family's closed forms.

A configuration's size depends only on its architecture hyperparameters (not on
augmentation, dropout or training choices, nor on ``bn_momentum``), so how much of a
space fits a budget is counted exactly by enumerating those, however large the space.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from xtune.spaces._builder import count_flops, count_params
from xtune.spaces._config import MiniXceptionConfig
from xtune.spaces._space import SearchSpace

# The hyperparameters a model's size depends on (see count_params, count_flops).
SIZE_FIELDS = ("num_stages", "base_width", "width_growth", "conv_type", "residual", "batch_norm",
               "convs_per_stage", "kernel_size", "stem_filters", "stem_kernel", "head")


@dataclass(frozen=True)
class Budget:
    """At most ``max_params`` parameters and ``max_flops`` FLOPs per image (None: no limit)."""

    max_params: int | None = None
    max_flops: int | None = None

    def __bool__(self) -> bool:
        return self.max_params is not None or self.max_flops is not None

    def describe(self) -> str:
        parts = []
        if self.max_params is not None:
            parts.append(f"{self.max_params:,} parameters")
        if self.max_flops is not None:
            parts.append(f"{self.max_flops:,} FLOPs per image")
        return " and ".join(parts) or "no budget"

    def fits(self, config: MiniXceptionConfig, input_shape, num_classes: int) -> bool:
        if self.max_params is not None and count_params(config, input_shape, num_classes) > self.max_params:
            return False
        return self.max_flops is None or count_flops(config, input_shape, num_classes) <= self.max_flops

    def predicate(self, input_shape, num_classes: int) -> Callable[[dict], bool] | None:
        """``values -> bool`` for a sampler (None without a budget)."""
        if not self:
            return None
        return lambda values: self.fits(MiniXceptionConfig.from_values(values), input_shape, num_classes)


@dataclass(frozen=True)
class BudgetShare:
    """How much of a space fits a budget."""

    architectures: int
    architectures_fitting: int
    configurations: int
    configurations_fitting: int

    @property
    def share(self) -> float:
        return self.configurations_fitting / self.configurations if self.configurations else 0.0


def budget_share(space: SearchSpace, budget: Budget, input_shape, num_classes: int) -> BudgetShare:
    """Count the architectures and configurations of ``space`` within ``budget`` (exactly)."""
    size_specs = [space[name] for name in SIZE_FIELDS]
    other = [s for s in space.specs if s.name not in SIZE_FIELDS]
    arch_total = arch_fit = conf_total = conf_fit = 0
    base = space.default_config()
    for combo in itertools.product(*(s.all_values() for s in size_specs)):
        values = dict(zip(SIZE_FIELDS, combo))
        # Architectures count bn_momentum where batch norm is on; configurations count every other choice.
        arch = _multiplicity([s for s in other if s.group == "architecture"], values)
        conf = _multiplicity(other, values)
        fits = not budget or budget.fits(base.replace(**values), input_shape, num_classes)
        arch_total += arch
        conf_total += conf
        if fits:
            arch_fit += arch
            conf_fit += conf
    return BudgetShare(arch_total, arch_fit, conf_total, conf_fit)


def _multiplicity(specs, values: dict) -> int:
    return math.prod(len(s.all_values()) for s in specs
                     if not s.condition or values.get(s.condition[0]) in s.condition[1])

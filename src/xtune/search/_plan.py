"""The Hyperband plan: which brackets run, how many trials and epochs each round has.

KerasTuner's Hyperband has no trial cap, and cutting it short at N trials leaves a
random search of 2-epoch models. So ``--max-trials N`` is mapped to a plan made of
*complete* brackets only, each ending with its best models trained to ``max_epochs``:

1. Take the most brackets ``s`` (the most aggressive early stopping KerasTuner's
   Hyperband allows for ``max_epochs`` and ``factor``) for which one iteration of
   brackets ``s-1 .. 0`` fits in N trials. Fewer brackets are obtained with
   KerasTuner's own ``min_epochs`` knob; round sizes and epochs are KerasTuner's.
2. Run as many whole iterations as fit, then as many leading brackets of one more
   iteration as fit. The total is never above N.

Promoted trials continue from their parent's weights, so a round's trials train only
the epochs between the previous round's budget and their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xtune.errors import UsageError


@dataclass(frozen=True)
class Round:
    """One round of a bracket: ``trials`` models trained up to ``epochs`` in total."""

    trials: int
    epochs: int
    new_epochs: int  # epochs each trial of this round trains (the rest is inherited)


@dataclass(frozen=True)
class Bracket:
    """One Hyperband bracket (KerasTuner's ``bracket_num``) of one iteration."""

    iteration: int
    number: int
    rounds: tuple[Round, ...]

    @property
    def trials(self) -> int:
        return sum(r.trials for r in self.rounds)

    @property
    def epochs(self) -> int:
        return sum(r.trials * r.new_epochs for r in self.rounds)


@dataclass(frozen=True)
class HyperbandPlan:
    """A complete Hyperband plan; see the module docstring for the rule.

    Attributes:
        max_trials: The cap asked for.
        max_epochs: Epochs of one full training (every bracket's last round).
        factor: Hyperband's reduction factor.
        num_brackets: Brackets per iteration.
        min_epochs: KerasTuner's ``min_epochs`` that yields ``num_brackets``.
        brackets: Every bracket of the plan, in the order they run.
    """

    max_trials: int
    max_epochs: int
    factor: int
    num_brackets: int
    min_epochs: float
    brackets: tuple[Bracket, ...]

    @property
    def total_trials(self) -> int:
        return sum(b.trials for b in self.brackets)

    @property
    def architectures(self) -> int:
        """Distinct configurations sampled (the first round of every bracket)."""
        return sum(b.rounds[0].trials for b in self.brackets)

    @property
    def total_epochs(self) -> int:
        return sum(b.epochs for b in self.brackets)

    @property
    def full_trainings(self) -> float:
        """The plan's compute as a multiple of one training for ``max_epochs``."""
        return self.total_epochs / self.max_epochs

    @property
    def iterations(self) -> int:
        """Hyperband iterations started (the last one may be partial)."""
        return self.brackets[-1].iteration + 1

    def to_dict(self) -> dict:
        return {
            "max_trials": self.max_trials,
            "max_epochs": self.max_epochs,
            "factor": self.factor,
            "brackets_per_iteration": self.num_brackets,
            "iterations": self.iterations,
            "total_trials": self.total_trials,
            "architectures": self.architectures,
            "total_epochs": self.total_epochs,
            "full_trainings": round(self.full_trainings, 2),
            "brackets": [
                {
                    "iteration": b.iteration,
                    "bracket": b.number,
                    "trials": b.trials,
                    "rounds": [{"trials": r.trials, "epochs": r.epochs, "new_epochs": r.new_epochs} for r in b.rounds],
                }
                for b in self.brackets
            ],
        }


# KerasTuner's HyperbandOracle formulas (keras_tuner/src/tuners/hyperband.py, 1.4.8).
def _num_brackets(max_epochs: int, factor: int, min_epochs: float = 1) -> int:
    epochs: float = max_epochs
    brackets = 0
    while epochs >= min_epochs:
        epochs = epochs / factor
        brackets += 1
    return brackets


def round_size(max_epochs: int, factor: int, bracket: int, round_num: int) -> int:
    """Trials in ``round_num`` of ``bracket`` (KerasTuner's ``_get_size``)."""
    end_size = math.ceil(1 + math.log(max_epochs, factor)) / (bracket + 1)
    return math.ceil(end_size * factor ** (bracket - round_num))


def round_epochs(max_epochs: int, factor: int, bracket: int, round_num: int) -> int:
    """Epoch budget of ``round_num`` of ``bracket`` (KerasTuner's ``_get_epochs``)."""
    return math.ceil(max_epochs / factor ** (bracket - round_num))


def _bracket(max_epochs: int, factor: int, iteration: int, number: int) -> Bracket:
    rounds, previous = [], 0
    for r in range(number + 1):
        epochs = round_epochs(max_epochs, factor, number, r)
        rounds.append(Round(round_size(max_epochs, factor, number, r), epochs, epochs - previous))
        previous = epochs
    return Bracket(iteration, number, tuple(rounds))


def min_epochs_for(max_epochs: int, factor: int, num_brackets: int) -> float:
    """A ``min_epochs`` that makes KerasTuner's Hyperband use ``num_brackets`` brackets."""
    # Strictly between max/f^s and max/f^(s-1), far from both (no float ties).
    return max_epochs / factor ** (num_brackets - 0.5)


def hyperband_plan(max_trials: int = 50, max_epochs: int = 100, factor: int = 3,
                   num_brackets: int | None = None) -> HyperbandPlan:
    """The largest complete Hyperband plan with at most ``max_trials`` trials.

    Args:
        max_trials: Upper bound on trials, promotions included.
        max_epochs: Epochs of one full training.
        factor: Hyperband's reduction factor (at least 2).
        num_brackets: Brackets per iteration, fixed (an extended search keeps its
            own, so that its plan so far stays the start of the longer one); default:
            the rule above.

    Returns:
        The plan.

    Raises:
        UsageError: The arguments are out of range, or even the smallest plan
            (one bracket of full trainings) has more than ``max_trials`` trials.
    """
    if factor < 2:
        raise UsageError(f"--factor must be at least 2; got {factor}")
    if max_epochs < 1:
        raise UsageError(f"--max-epochs must be at least 1; got {max_epochs}")
    if max_trials < 1:
        raise UsageError(f"--max-trials must be at least 1; got {max_trials}")
    most = _num_brackets(max_epochs, factor)
    per_iteration = {
        s: [_bracket(max_epochs, factor, 0, n) for n in range(s - 1, -1, -1)] for s in range(1, most + 1)
    }
    fitting = [s for s in per_iteration if sum(b.trials for b in per_iteration[s]) <= max_trials]
    if not fitting:
        smallest = per_iteration[1][0].trials
        raise UsageError(
            f"--max-trials {max_trials} is too small for Hyperband with --max-epochs {max_epochs} "
            f"--factor {factor}: the smallest complete plan has {smallest} trials"
        )
    s = max(fitting)
    if num_brackets is not None:
        if num_brackets not in per_iteration or num_brackets not in fitting:
            raise UsageError(f"--max-trials {max_trials} is too small for this search's {num_brackets} bracket(s) "
                             "per iteration")
        s = num_brackets
    one = sum(b.trials for b in per_iteration[s])
    iterations = max_trials // one
    brackets = [
        _bracket(max_epochs, factor, i, b.number) for i in range(iterations) for b in per_iteration[s]
    ]
    room = max_trials - iterations * one
    for b in per_iteration[s]:
        if b.trials > room:
            break
        brackets.append(_bracket(max_epochs, factor, iterations, b.number))
        room -= b.trials
    return HyperbandPlan(max_trials, max_epochs, factor, s, min_epochs_for(max_epochs, factor, s), tuple(brackets))

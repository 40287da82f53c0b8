"""xtune's Hyperband oracle: the brackets of a plan, its own sampler, its own state.

It is a ``keras_tuner.Oracle`` (KerasTuner's tuner, chief service and trial files
work with it unchanged) that owns the Hyperband logic instead of inheriting
``HyperbandOracle``'s private members:

* It runs exactly the brackets of a ``HyperbandPlan`` (complete brackets only), in
  order, then stops. Round sizes and epochs come from the plan (KerasTuner's
  formulas, ``xtune.search._plan``).
* A failed trial counts as a finished loser: the next round promotes the best of the
  completed trials, and a round with nothing to promote ends its bracket (upstream
  waits for a full round, so one failure could stall a bracket).
* New configurations come from ``ConfigSampler`` (seeded per slot, distinct, within
  the size budget; the first slots are a warm start's and the space's default).
* Promotions rank a round by the objective, then the tie-breakers of
  ``xtune.search._state.rank_key`` (validation loss, then fewer parameters).
* Each trial carries its slot and the seed of its architecture (``xtune/slot``,
  ``xtune/seed``); a promoted trial inherits its parent's, so a lineage trains as
  one continued run, whoever runs it.
* Its state (``oracle.json``, key ``xtune``) is the list of brackets started and who
  is in each round; ``reload`` repairs what a kill between two state writes leaves.
"""

from __future__ import annotations

import keras_tuner

from xtune.search import _kt
from xtune.search._plan import HyperbandPlan
from xtune.search._sampler import ConfigSampler, config_key
from xtune.search._state import rank_key, space_values

STATE_FORMAT = 1
SEED_KEY = "xtune/seed"
SLOT_KEY = "xtune/slot"

_TS = _kt.TrialStatus
_FINISHED = (_TS.COMPLETED, _TS.FAILED)


class PlannedHyperbandOracle(keras_tuner.Oracle):
    """Hyperband over the brackets of ``plan``, drawing from ``sampler``.

    Args:
        objective: A ``keras_tuner.Objective`` (e.g. ``val_accuracy``, max).
        plan: The plan to run (``xtune.search.hyperband_plan``).
        sampler: Draws the configuration of each first-round slot.
        hyperparameters: The registered space (``HyperParameters``), optional.
    """

    def __init__(self, objective, plan: HyperbandPlan, sampler: ConfigSampler, hyperparameters=None):
        super().__init__(objective=objective, hyperparameters=hyperparameters, seed=sampler.seed,
                         max_retries_per_trial=1,  # a trial that failed for a maybe-transient reason
                         max_consecutive_failed_trials=None)  # counted by the tuner, which stops cleanly
        self.plan = plan
        self.sampler = sampler
        self.brackets: list[list[list[dict]]] = []  # started brackets (plan order) -> rounds -> members
        self.taken: set[str] = set()  # configurations drawn so far

    # -- the plan --------------------------------------------------------------------------

    def _slot(self, index: int, position: int) -> int:
        return sum(b.rounds[0].trials for b in self.plan.brackets[:index]) + position

    def _target(self, index: int, round_num: int) -> int:
        """Trials round ``round_num`` of bracket ``index`` will hold: its size, or fewer once failures are known."""
        size = self.plan.brackets[index].rounds[round_num].trials
        if round_num == 0:
            return size
        previous = self.brackets[index][round_num - 1]
        if len(previous) < self._target(index, round_num - 1):
            return size
        statuses = [self.trials[m["id"]].status for m in previous]
        if any(s not in _FINISHED for s in statuses):
            return size
        return min(size, sum(s == _TS.COMPLETED for s in statuses))

    def _complete(self, index: int) -> bool:
        last = len(self.brackets[index]) - 1
        return len(self.brackets[index][last]) >= self._target(index, last)

    def _ranked(self, trials: list) -> list:
        maximize = self.objective.direction == "max"

        def key(trial):
            metrics = trial.metrics
            loss = metrics.get_last_value("val_loss") if metrics.exists("val_loss") else None
            accuracy = metrics.get_last_value("val_accuracy") if metrics.exists("val_accuracy") else None
            params = metrics.get_last_value("params") if metrics.exists("params") else None
            return rank_key(self.objective.name, maximize, trial.score, loss, accuracy, params, trial.trial_id)

        return sorted(trials, key=key)

    def _promotion(self, index: int, round_num: int):
        """The trial to promote into ``round_num`` of bracket ``index`` now, or None."""
        rounds = self.brackets[index]
        current, past = rounds[round_num], rounds[round_num - 1]
        size, past_size = self._target(index, round_num), self._target(index, round_num - 1)
        if len(current) >= size or len(past) < past_size:
            return None
        chosen = {m["parent"] for m in current}
        past_trials = [self.trials[m["id"]] for m in past]
        candidates = [t for t in past_trials if t.status == _TS.COMPLETED and t.trial_id not in chosen]
        if not candidates:
            return None
        failed = sum(t.status == _TS.FAILED for t in past_trials)
        done = all(t.status in _FINISHED for t in past_trials)
        # Enough results to be sure of a top-`size` pick (upstream's rule), with failures
        # counted as known losers; once the round is over, promote the best.
        if not done and len(candidates) + failed <= past_size - size:
            return None
        return self._ranked(candidates)[0]

    def populate_space(self, trial_id):
        for index in range(len(self.brackets)):
            if self._complete(index):
                continue
            if len(self.brackets[index][0]) < self._target(index, 0):
                return self._new_trial(trial_id, index)
            for round_num in range(1, len(self.brackets[index])):
                parent = self._promotion(index, round_num)
                if parent is not None:
                    return self._promote(trial_id, index, round_num, parent)
        if len(self.brackets) >= len(self.plan.brackets):
            # Open brackets wait for running trials (other workers); else the plan is done.
            return {"status": _TS.IDLE if self.ongoing_trials else _TS.STOPPED}
        self.brackets.append([[] for _ in self.plan.brackets[len(self.brackets)].rounds])
        return self._new_trial(trial_id, len(self.brackets) - 1)

    def _new_trial(self, trial_id: str, index: int) -> dict:
        bracket = self.plan.brackets[index]
        slot = self._slot(index, len(self.brackets[index][0]))
        values = self.sampler.draw(slot, self.taken)
        self.taken.add(config_key(values))
        values.update({"tuner/epochs": bracket.rounds[0].epochs, "tuner/initial_epoch": 0,
                       "tuner/bracket": bracket.number, "tuner/round": 0,
                       SLOT_KEY: slot, SEED_KEY: self.sampler.seed_of(slot)})
        self.brackets[index][0].append({"id": trial_id, "parent": None})
        return {"status": _TS.RUNNING, "values": values}

    def _promote(self, trial_id: str, index: int, round_num: int, parent) -> dict:
        rounds = self.plan.brackets[index].rounds
        values = parent.hyperparameters.values.copy()
        values.update({"tuner/trial_id": parent.trial_id, "tuner/epochs": rounds[round_num].epochs,
                       "tuner/initial_epoch": rounds[round_num - 1].epochs, "tuner/round": round_num})
        self.brackets[index][round_num].append({"id": trial_id, "parent": parent.trial_id})
        return {"status": _TS.RUNNING, "values": values}

    def is_finished(self) -> bool:
        """Every planned bracket started and complete, and nothing running."""
        if len(self.brackets) < len(self.plan.brackets) or self.ongoing_trials:
            return False
        return all(self._complete(i) for i in range(len(self.brackets)))

    # -- state -----------------------------------------------------------------------------

    def get_state(self):
        state = super().get_state()
        state["xtune"] = {"format": STATE_FORMAT, "brackets": self.brackets, "taken": sorted(self.taken)}
        return state

    def set_state(self, state):
        super().set_state(state)
        ours = state.get("xtune")
        if not ours or ours.get("format") != STATE_FORMAT:
            raise ValueError("oracle.json holds no xtune bracket state (written by an earlier xtune)")
        self.brackets = ours["brackets"]
        self.taken = set(ours["taken"])

    def reload(self):
        super().reload()  # ongoing trials are now in the retry queue
        recorded = set(self.start_order)
        for trial_id in [t for t in self.trials if t not in recorded]:
            del self.trials[trial_id]  # created, never recorded: the same draw recreates it
        queue, runs = _kt.retry_queue(self), _kt.run_times(self)
        for trial_id in list(queue):
            trial = self.trials.get(trial_id)
            if trial is not None and trial.status in _FINISHED:
                # trial.json says it ended; oracle.json was saved before (or during) its end.
                queue.remove(trial_id)
                if trial_id not in self.end_order:
                    self.end_order.append(trial_id)
                    runs[trial_id] += 1


def trial_values(trial) -> dict:
    """A trial's hyperparameter values without the bookkeeping keys."""
    return space_values(trial.hyperparameters.values)

"""KerasTuner's Hyperband oracle, held to a plan, failure-aware, and safe to reload.

Differences from ``keras_tuner.oracles.HyperbandOracle`` (1.4.8), each for a reason:

* It runs exactly the brackets of a ``HyperbandPlan`` (complete brackets only) and
  then stops, instead of a trial cap that can cut a bracket short.
* A failed trial counts as a finished loser. Upstream only promotes from completed
  trials and waits for a full round, so one failure in a round can leave a bracket
  that never reaches ``max_epochs``; here the next round promotes the best of the
  completed trials, and a round with nothing to promote ends its bracket.
* The first trial is the space's default configuration (the book's model, unless a
  space file moves the defaults), so every search measures the seed and only picks
  something else by beating it; the random draws start with the second trial.
* ``tuner/bracket`` is the trial's own bracket (upstream labels promotions with the
  current bracket).
* ``reload`` repairs what a kill between two state writes leaves: a trial created but
  never recorded in ``oracle.json`` is forgotten (its id is reused by the same draw),
  and a trial whose ``trial.json`` says it ended while ``oracle.json`` says it is
  running is ended, not re-run (upstream re-runs it: ``end_trial`` saves the oracle
  before it drops the trial from ``ongoing_trials``).
"""

from __future__ import annotations

from keras_tuner.src.engine import trial as trial_module
from keras_tuner.src.tuners.hyperband import HyperbandOracle

from xtune.search._plan import HyperbandPlan

_TS = trial_module.TrialStatus
_FINISHED = (_TS.COMPLETED, _TS.FAILED)


class PlannedHyperbandOracle(HyperbandOracle):
    """Hyperband that runs the brackets of ``plan`` and then stops.

    Args:
        objective: The metric to optimize (e.g. "val_accuracy").
        plan: The plan (its ``max_epochs``, ``factor``, ``min_epochs`` and bracket count).
        seed: Seeds the hyperparameter draws.
        hyperparameters: Optional pre-registered space.
    """

    def __init__(self, objective, plan: HyperbandPlan, seed: int, hyperparameters=None):
        self.planned_brackets = None  # set below; the parent's __init__ opens a bracket first
        super().__init__(
            objective=objective,
            max_epochs=plan.max_epochs,
            factor=plan.factor,
            hyperband_iterations=plan.iterations,
            seed=seed,
            hyperparameters=hyperparameters,
            max_retries_per_trial=1,  # a trial that failed for a maybe-transient reason
            # Consecutive failures are counted by the tuner, which stops cleanly.
            max_consecutive_failed_trials=None,
        )
        self.min_epochs = plan.min_epochs
        self.planned_brackets = len(plan.brackets)
        self.brackets_started = 0
        self._current_iteration = 0
        self._current_bracket = self._get_num_brackets() - 1
        self._brackets = []
        self._start_new_bracket()

    # -- plan ------------------------------------------------------------------------

    def _start_new_bracket(self):
        super()._start_new_bracket()
        if self.planned_brackets is not None:
            self.brackets_started += 1

    def _round_target(self, bracket, round_num) -> int:
        """Trials this round will hold: its size, or fewer once failures are known."""
        size = self._get_size(bracket["bracket_num"], round_num)
        if round_num == 0:
            return size
        previous = bracket["rounds"][round_num - 1]
        if len(previous) < self._round_target(bracket, round_num - 1):
            return size
        statuses = [self.trials[info["id"]].status for info in previous]
        if any(s not in _FINISHED for s in statuses):
            return size
        return min(size, sum(s == _TS.COMPLETED for s in statuses))

    def _bracket_is_complete(self, bracket) -> bool:
        last = len(bracket["rounds"]) - 1
        return len(bracket["rounds"][last]) >= self._round_target(bracket, last)

    def _remove_completed_brackets(self):
        self._brackets = [b for b in self._brackets if not self._bracket_is_complete(b)]

    def _promotion(self, bracket, round_num):
        """The trial to promote into ``round_num`` now, or None."""
        rounds = bracket["rounds"]
        round_info, past_info = rounds[round_num], rounds[round_num - 1]
        size = self._round_target(bracket, round_num)
        past_size = self._round_target(bracket, round_num - 1)
        if len(round_info) >= size or len(past_info) < past_size:
            return None
        selected = {info["past_id"] for info in round_info}
        past = [self.trials[info["id"]] for info in past_info]
        candidates = [t for t in past if t.status == _TS.COMPLETED and t.trial_id not in selected]
        if not candidates:
            return None
        failed = sum(t.status == _TS.FAILED for t in past)
        all_done = all(t.status in _FINISHED for t in past)
        # Upstream's rule (enough results to be sure of a top-`size` pick), with
        # failures counted as known losers; once the round is over, promote the best.
        if not all_done and len(candidates) + failed <= past_size - size:
            return None
        reverse = self.objective.direction == "max"
        return sorted(candidates, key=lambda t: t.score, reverse=reverse)[0]

    def populate_space(self, trial_id):
        self._remove_completed_brackets()
        for bracket in self._brackets:
            number, rounds = bracket["bracket_num"], bracket["rounds"]
            if len(rounds[0]) < self._get_size(number, 0):
                return self._random_trial(trial_id, bracket)
            for round_num in range(1, len(rounds)):
                best = self._promotion(bracket, round_num)
                if best is None:
                    continue
                values = best.hyperparameters.values.copy()
                values["tuner/trial_id"] = best.trial_id
                values["tuner/epochs"] = self._get_epochs(number, round_num)
                values["tuner/initial_epoch"] = self._get_epochs(number, round_num - 1)
                values["tuner/bracket"] = number
                values["tuner/round"] = round_num
                rounds[round_num].append({"past_id": best.trial_id, "id": trial_id})
                return {"status": _TS.RUNNING, "values": values}
        if self.brackets_started >= self.planned_brackets:
            # Open brackets wait for running trials (other workers); else the plan is done.
            return {"status": _TS.IDLE if self.ongoing_trials else _TS.STOPPED}
        self._increment_bracket_num()
        self._start_new_bracket()
        return self._random_trial(trial_id, self._brackets[-1])

    def _random_values(self):
        if self.trials:
            return super()._random_values()
        # The first trial is the space's default configuration (the book's model in the
        # full family): the search always measures it, and can only pick something
        # else by beating it. The draws of the seeded sampler start with the second.
        hps = self.hyperparameters.copy()
        hps.ensure_active_values()
        return {name: value for name, value in hps.values.items() if hps.is_active(name)}

    def _random_trial(self, trial_id, bracket):
        response = super()._random_trial(trial_id, bracket)
        if response.get("status") == _TS.RUNNING:
            response["values"]["tuner/bracket"] = bracket["bracket_num"]
        return response

    # -- state -----------------------------------------------------------------------

    def is_finished(self) -> bool:
        """All planned brackets started and complete, and nothing running."""
        if self.brackets_started < self.planned_brackets or self.ongoing_trials:
            return False
        return all(self._bracket_is_complete(b) for b in self._brackets)

    def get_state(self):
        state = super().get_state()
        state.update({"planned_brackets": self.planned_brackets, "brackets_started": self.brackets_started})
        return state

    def set_state(self, state):
        super().set_state(state)
        self.planned_brackets = state["planned_brackets"]
        self.brackets_started = state["brackets_started"]

    def reload(self):
        super().reload()  # ongoing trials are now in the retry queue
        recorded = set(self.start_order)
        for trial_id in [t for t in self.trials if t not in recorded]:
            del self.trials[trial_id]  # created, never recorded: the same draw recreates it
        for trial_id in list(self._retry_queue):
            trial = self.trials.get(trial_id)
            if trial is not None and trial.status in _FINISHED:
                # trial.json says it ended; oracle.json was saved before (or during) its end.
                self._retry_queue.remove(trial_id)
                if trial_id not in self.end_order:
                    self.end_order.append(trial_id)
                    self._run_times[trial_id] += 1

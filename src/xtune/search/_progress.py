"""Where a running search stands: trials done of the plan, the best so far, the time left.

The estimate of the time left counts work, not trials: each trial costs a fixed part
(building, tracing, saving: measured as its wall time minus its epochs) plus its
epochs (measured per epoch). Both rates come from this session's trials, and what
is left comes from the plan (trials, and the epochs each still has to train), so a
search of many short first-round trials followed by a few long last-round ones is
not extrapolated from the first ones' pace. Several workers divide the time left
(the rates are per process; they run side by side).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from xtune._events import EpochEnded, Event, SearchStarted, TrialEnded, TrialStarted


class SearchProgress:
    """Folds a search's events into what a user wants to see while it runs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.start = clock()
        self.plan: dict | None = None
        self.maximize = True
        self.total = 0
        self.ended = 0
        self.best: float | None = None
        self.workers = 1
        self._epoch_seconds = 0.0
        self._epochs = 0
        self._overhead = 0.0
        self._trials = 0
        self._started: dict[str, float] = {}
        self._trial_epoch_seconds: dict[str, float] = {}
        self._epochs_left = 0
        self._running: dict[str, TrialStarted] = {}
        self._done_in_trial: dict[str, int] = {}
        self._ended: list[tuple[int, float]] = []  # (epochs trained, seconds) of each trial ended

    def update(self, event: Event) -> None:
        if isinstance(event, SearchStarted):
            self.plan = event.plan
            self.total = event.plan["total_trials"]
            self.ended = event.completed + event.failed
            self.maximize = not event.settings["objective"].endswith("loss")
            self.workers = max(1, len(event.workers))
            self._epochs_left = max(event.plan["total_epochs"] - event.epochs_done, 0)
            self.start = self.clock()
        elif isinstance(event, TrialStarted):
            self._running[event.trial_id] = event
            self._started[event.trial_id] = self.clock()
            self._trial_epoch_seconds[event.trial_id] = 0.0
            self._done_in_trial[event.trial_id] = event.resumed_at or event.initial_epoch
        elif isinstance(event, EpochEnded) and event.trial_id is not None:
            self._epochs_left = max(self._epochs_left - 1, 0)
            self._done_in_trial[event.trial_id] = event.epoch
            if event.seconds is not None:
                self._epoch_seconds += event.seconds
                self._epochs += 1
                self._trial_epoch_seconds[event.trial_id] = self._trial_epoch_seconds.get(event.trial_id, 0.0) + event.seconds
        elif isinstance(event, TrialEnded):
            self.ended += 1
            started_event = self._running.pop(event.trial_id, None)
            if started_event is not None and event.seconds is not None and started_event.epochs is not None:
                trained = started_event.epochs - (started_event.resumed_at or started_event.initial_epoch)
                self._ended.append((trained, float(event.seconds)))
            started = self._started.pop(event.trial_id, None)
            if started is not None:
                self._overhead += max(self.clock() - started - self._trial_epoch_seconds.pop(event.trial_id, 0.0), 0.0)
                self._trials += 1
            better = self.best is None or (event.score is not None and (
                event.score > self.best if self.maximize else event.score < self.best))
            if event.status == "COMPLETED" and event.score is not None and better:
                self.best = event.score

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    def eta(self) -> float | None:
        """Seconds left (None until one trial of this session has ended).

        From this session's epochs (their own seconds) and the rest of each trial's
        time; where epochs are not timed (several workers report through the chief),
        from the trials' times fitted as a fixed part plus a part per epoch. A running
        trial is priced by what it has left: its expected time less the time it has
        already run (its fixed cost is mostly paid at its start), never less than its
        epochs left. The trials left are then dealt to the workers as they free up
        (``simulate_workers``): the search cannot end before its longest running trial.
        """
        if self._trials and self._epochs:
            per_epoch = self._epoch_seconds / self._epochs
            per_trial = self._overhead / self._trials
        elif len(self._ended) >= 1:
            per_trial, per_epoch = fit_trial_times(self._ended)
        else:
            return None
        now = self.clock()
        running_left, running_epochs = [], 0
        for trial_id, started in self._running.items():
            first = started.resumed_at or started.initial_epoch
            last = started.epochs if started.epochs is not None else first
            epochs_left = max(last - max(self._done_in_trial.get(trial_id, first), first), 0)
            running_epochs += epochs_left
            expected = per_trial + (last - first) * per_epoch
            spent = now - self._started.get(trial_id, now)
            running_left.append(max(expected - spent, epochs_left * per_epoch))
        pending_trials = max(self.total - self.ended - len(running_left), 0)
        pending_epochs = max(self._epochs_left - running_epochs, 0)
        pending = [per_trial + pending_epochs / pending_trials * per_epoch] * pending_trials if pending_trials else []
        return simulate_workers(running_left, pending, self.workers)

    def trial_eta(self, trial_id: str) -> float | None:
        """Seconds left in a running trial (from this session's pace per epoch)."""
        started = self._running.get(trial_id)
        if started is None or not self._epochs or started.epochs is None:
            return None
        return max(started.epochs - self._done_in_trial.get(trial_id, 0), 0) * self._epoch_seconds / self._epochs


# How much faster a trial runs when fewer trials than workers run beside it, as
# (workers / running) ** SOLO_EXPONENT. Measured on the 2-core machine with 2 workers
# (docs/eta.md): an epoch of the last trial, running alone, took 0.62 of the time of
# one running beside another trial (2 ** -0.7 = 0.62), though each worker has its own
# thread: the rest of each process (input pipeline, Python, the chief) shares the cores.
SOLO_EXPONENT = 0.7


def simulate_workers(running: list[float], pending: list[float], workers: int) -> float:
    """Seconds until every trial is done: ``running`` trials' seconds left and ``pending``
    trials' seconds, both at the pace of a full machine (``workers`` trials side by side).

    A pending trial starts when a worker frees up; while fewer trials than workers run,
    each runs faster (``SOLO_EXPONENT``). One worker: the plain sum.
    """
    queue, active, elapsed = list(pending), [r for r in running if r > 0], 0.0
    # More trials running than workers known (workers on other machines joined a chief):
    # there are at least as many workers as running trials.
    workers = max(1, workers, len(active))
    while active or queue:
        while queue and len(active) < workers:
            active.append(queue.pop(0))
        speed = (workers / len(active)) ** SOLO_EXPONENT
        step = min(active)
        elapsed += step / speed
        active = [r - step for r in active if r - step > 1e-9]
    return elapsed


def fit_trial_times(points: list[tuple[int, float]]) -> tuple[float, float]:
    """``(seconds per trial, seconds per epoch)`` fitted to ``(epochs, seconds)`` of ended trials.

    Least squares; one rate per epoch when every trial trained as many epochs.
    """
    n = len(points)
    mean_e = sum(e for e, _ in points) / n
    mean_s = sum(s for _, s in points) / n
    spread = sum((e - mean_e) ** 2 for e, _ in points)
    per_epoch = (sum((e - mean_e) * (s - mean_s) for e, s in points) / spread) if spread else mean_s / max(mean_e, 1)
    per_epoch = max(per_epoch, 0.0)
    return max(mean_s - per_epoch * mean_e, 0.0), per_epoch


def remaining_seconds(state) -> float | None:
    """Seconds left in a search, from its files (what `tune status` shows of a running search).

    Fits each ended trial's seconds as a fixed part plus a part per epoch (least
    squares; one rate when every trial trained as many epochs), then prices what the
    plan has left: its trials and its epochs. None before two trials have ended.

    That work is shared by the search's workers: the worker slots held now
    (``cluster/worker-*.lock``, one per live worker process), at least the trials
    running, at most the trials left. Not the trials running alone: between two
    trials, or while a bracket waits for another worker's trial, fewer run than there
    are workers, and the estimate doubled for that moment.
    """
    points = [(t.epochs - t.initial_epoch, t.record.seconds) for t in state.ended
              if t.record.seconds is not None and t.epochs is not None]
    if len(points) < 2:
        return None
    fixed, per_epoch = fit_trial_times(points)
    trials_left = max(state.plan.total_trials - len(state.ended), 0)
    epochs_left = max(state.plan.total_epochs - state.epochs_done, 0)
    side_by_side = min(max(1, _live_workers(state), len(state.active)), max(1, trials_left))
    return (trials_left * fixed + epochs_left * per_epoch) / side_by_side


def _live_workers(state) -> int:
    """Worker processes of a running search: its held worker slots (0 for one process)."""
    from xtune.search._project import CLUSTER_DIR, _holder

    if not state.running:
        return 0
    return sum(_holder(path) is not None for path in (state.path / CLUSTER_DIR).glob("worker-*.lock"))

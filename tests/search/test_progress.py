"""The live progress of a search keeps the best score across failed trials (which have none)."""

from xtune._events import TrialEnded
from xtune.search import SearchProgress


def test_a_failed_trial_after_a_completed_one_keeps_the_best():
    progress = SearchProgress(clock=lambda: 0.0)
    progress.update(TrialEnded("0000", "COMPLETED", 0.5))
    progress.update(TrialEnded("0001", "FAILED", None, reason="boom"))
    assert progress.best == 0.5
    assert progress.ended == 2


def test_the_best_follows_the_objective_direction():
    progress = SearchProgress(clock=lambda: 0.0)
    for score in (0.5, 0.7, 0.6):
        progress.update(TrialEnded("0000", "COMPLETED", score))
    assert progress.best == 0.7
    progress.maximize = False  # a loss
    progress.update(TrialEnded("0001", "COMPLETED", 0.4))
    assert progress.best == 0.4


def test_the_last_trial_of_two_workers_is_not_shared_by_the_idle_one():
    """The ETA divides the work left by the trials that can run at once, at most the workers."""
    from xtune._events import TrialStarted

    progress = SearchProgress(clock=lambda: 0.0)
    progress.workers, progress.total, progress._epochs_left = 2, 4, 18
    for trial_id in ("0000", "0001"):  # two 9-epoch trials of 20 s ended: 20 s per trial
        progress.update(TrialStarted(trial_id, {}, 0, 0, 9, 0, None))
        progress.update(TrialEnded(trial_id, "COMPLETED", 0.9, seconds=20.0))
    assert progress.eta() == 20.0  # two trials left, side by side
    progress.update(TrialStarted("0002", {}, 0, 0, 9, 0, None))
    progress.update(TrialEnded("0002", "COMPLETED", 0.9, seconds=20.0))
    progress._epochs_left = 9
    assert progress.eta() == 20.0  # one left: its own time, not half of it

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

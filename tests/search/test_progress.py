"""The live progress of a search keeps the best score across failed trials (which have none)."""

import pytest

from xtune._events import TrialEnded
from xtune.search import SearchProgress
from xtune.search._progress import SOLO_EXPONENT, simulate_workers


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
    # One left: its own time (faster alone, SOLO_EXPONENT), not half of it.
    assert progress.eta() == pytest.approx(20.0 / 2 ** SOLO_EXPONENT)


def test_a_running_trial_is_priced_by_what_it_has_left():
    """Once its fixed cost is paid, a running trial adds only its epochs left to the ETA.

    Charging it a whole trial again (its start was paid minutes ago) made the last
    estimate of the demo search 66 % too long.
    """
    from xtune._events import EpochEnded, TrialStarted

    now = [0.0]
    progress = SearchProgress(clock=lambda: now[0])
    progress.workers, progress.total, progress._epochs_left = 1, 2, 4
    # One ended trial: 2 epochs of 1 s each, 3 s in all, so 1 s of fixed cost.
    progress.update(TrialStarted("0000", {}, 0, 0, 2, 0, None))
    for epoch in (1, 2):
        now[0] += 1.0
        progress.update(EpochEnded("0000", epoch, 2, 1.0, {}))
    now[0] += 1.0
    progress.update(TrialEnded("0000", "COMPLETED", 0.9, seconds=3.0))
    assert progress.eta() == 3.0  # one trial left: 1 s fixed + 2 epochs
    progress.update(TrialStarted("0001", {}, 0, 0, 2, 0, None))
    now[0] += 1.5  # its building and tracing done, then one epoch
    progress.update(EpochEnded("0001", 1, 2, 1.0, {}))
    assert progress.eta() == 1.5  # 3 s expected, 1.5 s spent; not 1 s fixed + 1 epoch again
    now[0] += 5.0  # slower than expected: never less than its epochs left
    assert progress.eta() == 1.0


def test_the_search_ends_no_sooner_than_its_longest_running_trial():
    from xtune._events import TrialStarted

    progress = SearchProgress(clock=lambda: 0.0)
    progress.workers, progress.total, progress._epochs_left = 2, 3, 9 + 1
    progress.update(TrialStarted("0000", {}, 0, 0, 1, 0, None))
    progress.update(TrialEnded("0000", "COMPLETED", 0.9, seconds=2.0))  # 2 s per epoch
    progress.update(TrialStarted("0001", {}, 0, 0, 9, 0, None))
    progress.update(TrialStarted("0002", {}, 0, 0, 1, 0, None))
    # 18 s and 2 s of work on two workers: 10 s if they were shared; but after 2 s side
    # by side, 0001 runs its last 16 s alone (faster alone, but not twice as fast).
    assert progress.eta() == pytest.approx(2.0 + 16.0 / 2 ** SOLO_EXPONENT)
    assert 10.0 < progress.eta() < 18.0


def test_trials_left_are_dealt_to_the_workers_as_they_free_up():
    assert simulate_workers([], [4.0, 4.0, 4.0], 1) == 12.0  # one worker: the sum
    assert simulate_workers([1.0], [3.0], 1) == 4.0
    # Two workers: 1 s and 3 s side by side; the pending 2 s trial starts after 1 s, then
    # 2 s side by side; nothing runs alone.
    assert simulate_workers([1.0, 3.0], [2.0], 2) == pytest.approx(3.0)
    assert simulate_workers([], [], 2) == 0.0
    # Three trials running where one worker was announced (others joined a chief): three workers.
    assert simulate_workers([2.0, 2.0, 2.0], [], 1) == pytest.approx(2.0)


def test_tune_status_shares_the_work_left_among_the_live_workers_not_the_trials_running_now(tmp_path):
    """`tune status` of a 2-worker search at a moment when one trial runs (a bracket waits
    for it, or the other worker is between trials) says the same time left as when both
    run: the work left is the same, and so are the workers."""
    import fcntl
    import json
    import os
    from types import SimpleNamespace

    from xtune.search._progress import remaining_seconds

    def trial(epochs, seconds, status="COMPLETED"):
        return SimpleNamespace(epochs=epochs, initial_epoch=0, status=status, record=SimpleNamespace(seconds=seconds))

    ended = [trial(2, 10.0), trial(4, 20.0)]  # 5 s per epoch, nothing fixed
    plan = SimpleNamespace(total_trials=6, total_epochs=22)  # 4 trials and 16 epochs left: 80 s of work

    def state(active, running=True):
        return SimpleNamespace(ended=ended, plan=plan, epochs_done=6, active=active, running=running, path=tmp_path)

    (tmp_path / "cluster").mkdir()
    held = []
    for worker in ("worker-1", "worker-2"):
        fd = os.open(tmp_path / "cluster" / f"worker-{worker}.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"pid": os.getpid()}).encode())
        held.append(fd)
    try:
        both = remaining_seconds(state([trial(4, None, "RUNNING"), trial(4, None, "RUNNING")]))
        one = remaining_seconds(state([trial(4, None, "RUNNING")]))
        none = remaining_seconds(state([]))
        assert both == one == none == pytest.approx(40.0)
    finally:
        for fd in held:
            os.close(fd)
    # The workers gone (their slots free): one process, the whole 80 s.
    assert remaining_seconds(state([trial(4, None, "RUNNING")])) == pytest.approx(80.0)

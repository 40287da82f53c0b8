"""A stop signal that arrives while the stop event is being set must not hang the process."""

import os
import signal
import threading
import time

from xtune._runtime import SignalRelay
from xtune.search._run import stop_on_signals


def test_a_sigterm_inside_event_set_stops_the_search_instead_of_hanging():
    # A killed search's children got the parent-death SIGTERM while already inside
    # Event.set (holding its lock); a handler that called Event.set again waited forever.
    event = threading.Event()
    with stop_on_signals(event):
        with event._cond:  # as if the signal landed inside Event.set
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler runs here, in this thread
        assert event.wait(5)


def test_a_second_ctrl_c_still_aborts():
    event = threading.Event()
    with stop_on_signals(event):
        os.kill(os.getpid(), signal.SIGINT)
        assert event.wait(5)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError("a second Ctrl-C did not abort")


def test_the_relay_sets_its_event_once_flagged():
    event = threading.Event()
    relay = SignalRelay(event)
    time.sleep(0.1)
    assert not event.is_set()
    relay(signal.SIGTERM, None)
    assert event.wait(2)


def test_each_search_in_a_process_leaves_no_relay_thread_behind():
    before = sum(t.name == "xtune-signals" for t in threading.enumerate())
    for _ in range(5):
        with stop_on_signals(threading.Event()):
            pass
    time.sleep(0.3)
    assert sum(t.name == "xtune-signals" for t in threading.enumerate()) == before

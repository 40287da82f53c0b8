"""The project lock: refused while held, waited for while its holder is stopping (its parent killed)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xtune.errors import ProjectError
from xtune.search._project import ProjectLock

HOLDER = """
import os, subprocess, sys, time
if sys.argv[1] == "parent":  # starts the holder, prints its pid, then waits to be killed
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], "child", sys.argv[3], sys.argv[4]])
    print(child.pid, flush=True)
    time.sleep(600)
else:  # the holder: takes the lock, keeps it while its parent lives, then a little longer (stopping)
    parent = os.getppid()  # before the lock: the test kills the parent once the lock is taken
    from xtune.search._project import ProjectLock
    lock = ProjectLock(sys.argv[2]).acquire()
    deadline = time.monotonic() + 600
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(float(sys.argv[3]))
    lock.release()
"""

# A search child told its supervisor's pid (as xtune.search._child is) that takes the lock
# only after that supervisor is gone: already re-parented to init when it writes its owner.
LATE_HOLDER = """
import os, subprocess, sys, time
if sys.argv[1] == "parent":
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], "child", sys.argv[3], str(os.getpid())])
    print(child.pid, flush=True)
    time.sleep(600)
else:
    supervisor = int(sys.argv[3])
    while os.getppid() == supervisor:
        time.sleep(0.05)
    from xtune.search._project import ProjectLock, set_supervisor
    set_supervisor(supervisor)
    lock = ProjectLock(sys.argv[2]).acquire()
    time.sleep(2.0)
    lock.release()
"""


def start(script: str, project, *args) -> tuple[subprocess.Popen, int]:
    """Run ``script`` as a parent that starts it again as its child; return the parent and the child's pid."""
    proc = subprocess.Popen([sys.executable, "-c", script, "parent", script, str(project), *map(str, args)],
                            stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def wait_until_taken(lock: Path) -> None:
    """Until ``lock`` is written, with the holder's parent in it."""
    deadline = time.monotonic() + 30
    while not lock.exists() or b"parent" not in lock.read_bytes():
        assert time.monotonic() < deadline, f"nobody took {lock.name}"
        time.sleep(0.05)


def lock_after_waiting(project) -> tuple[list, float]:
    """Take the project's lock and let it go: the waits it announced, and the seconds it took."""
    waits: list = []
    started = time.monotonic()
    with ProjectLock(project, on_wait=waits.append):
        took = time.monotonic() - started
    return waits, took


def start_holder(project, stopping_for: float):
    proc, holder = start(HOLDER, project, stopping_for)
    wait_until_taken(project / ".lock")
    return proc, holder


def test_a_held_lock_is_refused_at_once(tmp_path):
    proc, holder = start_holder(tmp_path, 0)
    try:
        started = time.monotonic()
        with pytest.raises(ProjectError, match=rf"being searched by another tune process \(pid {holder} on"):
            ProjectLock(tmp_path).acquire()
        assert time.monotonic() - started < 2  # its parent lives: nothing to wait for
    finally:
        proc.kill()
        proc.wait()


def test_a_holder_whose_parent_was_killed_is_waited_for(tmp_path):
    """What a job scheduler does: kill -9 `tune search`, start it again at once."""
    proc, holder = start_holder(tmp_path, 2.0)
    proc.send_signal(signal.SIGKILL)  # the supervisor dies; its search process stops at its next batch
    proc.wait()
    waits, took = lock_after_waiting(tmp_path)
    assert len(waits) == 1 and waits[0].pid == holder
    assert 1.0 < took < ProjectLock.ORPHAN_WAIT
    deadline = time.monotonic() + 30  # it released the lock as it stopped; now it exits
    while running(holder) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(holder)


def running(pid: int) -> bool:
    try:  # a reaped process is gone; one nobody reaped (its parent was killed) is a zombie
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_a_holder_that_locked_after_its_supervisor_died_is_waited_for(tmp_path):
    """Killed right after it started its children: one of them locks as an orphan, and stops."""
    proc, holder = start(LATE_HOLDER, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_until_taken(tmp_path / ".lock")
    waits, _ = lock_after_waiting(tmp_path)  # waited for, not refused
    assert len(waits) == 1 and waits[0].pid == holder


SLOT_HOLDER = """
import os, subprocess, sys, time
if sys.argv[1] == "parent":
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], "child", sys.argv[3], str(os.getpid())])
    print(child.pid, flush=True)
    time.sleep(600)
else:  # a worker of a search: holds its slot; once its supervisor dies it stops, 2 s later
    supervisor = int(sys.argv[3])
    from pathlib import Path
    from xtune.search._project import set_supervisor
    from xtune.search._worker import _WorkerSlot
    set_supervisor(supervisor)
    with _WorkerSlot(Path(sys.argv[2]), "2"):
        while os.getppid() == supervisor:
            time.sleep(0.05)
        time.sleep(2.0)
"""


def test_a_search_waits_for_a_killed_searchs_stopping_worker(tmp_path):
    """Its chief let go first; a trial handed out again before the worker stops would be trained twice."""
    proc, holder = start(SLOT_HOLDER, tmp_path)
    wait_until_taken(tmp_path / "cluster" / "worker-2.lock")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    waits, took = lock_after_waiting(tmp_path)
    assert len(waits) == 1 and waits[0].pid == holder
    assert 1.0 < took < ProjectLock.ORPHAN_WAIT


def test_a_live_worker_is_not_waited_for(tmp_path):
    proc, _ = start(SLOT_HOLDER, tmp_path)
    try:
        wait_until_taken(tmp_path / "cluster" / "worker-2.lock")
        waits: list = []
        started = time.monotonic()
        with ProjectLock(tmp_path, on_wait=waits.append):
            assert time.monotonic() - started < 1.0 and waits == []
    finally:
        proc.kill()
        proc.wait()

"""One way to run child processes: start a role with a spec, stream its typed events,
restart it after a native crash or when it ends itself to release memory, stop it.

Every mode of `tune search` uses this: one search process; a chief and N workers on
this machine; a lone `tune worker`; a served chief. A child runs
``python -m xtune.search._child ROLE SPEC`` (the spec is JSON: a request object, never
a rebuilt command line) and writes one event per line (``xtune._events``) on a pipe.

* **Restart.** A child that dies of a signal it was not sent (a crash inside
  TensorFlow, the out-of-memory killer) is started again with its ``restart_spec``:
  a search resumes at the trial's last saved epoch, a worker under the same id gets
  its trial back. ``MAX_DEATHS`` deaths in a row without progress (no epoch or trial
  ended in between) give up. A child that exits with ``RECYCLE_EXIT`` ended itself
  between trials to release memory: it is started again at once, not counted.
* **Stop.** Ctrl-C or SIGTERM to this process stops the children in stages (workers,
  stage 0, first; then the chief or the search, stage 1), each with SIGINT: it stops
  within its epoch, resumable. A second Ctrl-C kills them all (every state write is
  atomic). Children run in their own sessions, so a terminal's Ctrl-C reaches them
  only through here, in order. A child gets SIGTERM when this process dies (Linux
  ``PR_SET_PDEATHSIG``) and also checks that its parent is alive every second.

See docs/ARCHITECTURE.md ("The process model").
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from xtune._events import ChildError, ChildOutcome, EpochEnded, Event, ProcessRestarted, TrialEnded, from_dict

EARLY_LINES = 1000  # kept for a log whose folder does not exist yet; the oldest go first

RECYCLE_EXIT = 75  # a child's exit code for "my memory grew: start me again"
MAX_DEATHS = 3
STAGE_TIMEOUT = 60.0  # seconds a stopping stage may take before it is killed


@dataclass
class ChildSpec:
    """What to run in a child process.

    Attributes:
        name: Shown in messages ("search", "chief", "worker-1").
        role: The entry point's role ("search", "chief" or "worker").
        spec: The role's request, as JSON-ready data.
        restart_spec: The request for a restart (e.g. without ``overwrite``); default ``spec``.
        env: Environment variables to set for it.
        log: A file for its stdout and stderr; None: passed to ``on_output``.
        stage: Stop order (lower stops first).
        stdin: Give it a pipe on its standard input (``Child.send``); otherwise none.
    """

    name: str
    role: str
    spec: dict
    restart_spec: dict | None = None
    env: dict = field(default_factory=dict)
    log: Path | None = None
    stage: int = 1
    stdin: bool = False


class Child:
    """A running child process and what it said."""

    def __init__(self, spec: ChildSpec, events: queue.Queue, on_output):
        self.spec = spec
        self.events = events
        self.on_output = on_output
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        self.deaths = 0
        self.restarts = 0
        self.progressed = False
        self.outcome: ChildOutcome | None = None
        self.error: ChildError | None = None
        self.done = False  # ended for good
        self.gave_up: str | None = None  # why it was not restarted
        self.stop_sent = False
        self.tail: deque[str] = deque(maxlen=50)
        self._log: TextIO | None = None
        # Lines written before the log's folder exists (a worker starts with its chief,
        # before the chief creates the project), written first once it does.
        self._early: deque[str] = deque(maxlen=EARLY_LINES)
        self._log_lock = threading.Lock()  # stdout's and stderr's readers both write

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, restart: bool = False) -> None:
        self.generation += 1
        self.outcome = self.error = None
        self.progressed = False
        self.stop_sent = False
        spec = (self.spec.restart_spec or self.spec.spec) if restart else self.spec.spec
        read_fd, write_fd = os.pipe()
        payload = json.dumps({**spec, "events_fd": write_fd, "parent": os.getpid()})
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.spec.env}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xtune.search._child", self.spec.role, payload], env=env,
            stdin=subprocess.PIPE if self.spec.stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, pass_fds=(write_fd,),
            start_new_session=True)  # Ctrl-C reaches it through the supervisor, in order
        os.close(write_fd)
        generation = self.generation
        threading.Thread(target=self._read_events, args=(read_fd, generation), daemon=True).start()
        for stream, is_err in ((self.proc.stdout, False), (self.proc.stderr, True)):
            threading.Thread(target=self._read_output, args=(stream, is_err), daemon=True).start()

    def _read_events(self, fd: int, generation: int) -> None:
        with os.fdopen(fd, "r", encoding="utf-8") as lines:
            for line in lines:
                try:
                    event = from_dict(json.loads(line))
                except ValueError:
                    continue
                if event is not None:
                    self.events.put((self, generation, event))

    def _read_output(self, stream, is_err: bool) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            log = self.spec.log
            if log is None:
                self.on_output(self, line, is_err)
                continue
            with self._log_lock:
                if self._log is None and log.parent.is_dir():
                    self._log = open(log, "a", encoding="utf-8")  # noqa: SIM115 - open while the child lives
                    self._log.writelines(early + "\n" for early in self._early)
                    self._early.clear()
                if self._log is None:
                    self._early.append(line)
                    continue
                self._log.write(line + "\n")
                self._log.flush()

    def send(self, data: dict) -> bool:
        """Write ``data`` as one JSON line on its standard input; False if it is gone."""
        if not self.alive() or self.proc is None or self.proc.stdin is None:
            return False
        try:
            self.proc.stdin.write((json.dumps(data) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum) -> None:
        if self.alive():
            assert self.proc is not None  # alive() says so
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:  # pragma: no cover - exited meanwhile
                pass

    def last_line(self) -> str:
        lines = [line for line in self.tail if line.strip()]
        return lines[-1] if lines else ""


def signal_name(returncode: int) -> str:
    """``SIGKILL`` for -9, ``exit status 3`` for 3."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


class Supervisor:
    """Runs ``Child`` processes until they end for good (see the module docstring).

    Args:
        on_event: Called with ``(child, event)`` for every event a child sends.
        on_output: Called with ``(child, line, is_stderr)`` for output of children
            without a log file.
        on_done: Called with a child once it ended for good (not restarted).
        stop_event: Set it to stop the children as Ctrl-C would.
    """

    def __init__(self, on_event: Callable, on_output: Callable | None = None, on_done: Callable | None = None,
                 stop_event: threading.Event | None = None):
        self.on_event = on_event
        self.on_output = on_output or (lambda child, line, is_err: None)
        self.on_done = on_done or (lambda child: None)
        self.stop_event = stop_event or threading.Event()
        self.children: list[Child] = []
        self._events: queue.Queue = queue.Queue()
        self._stopping = False
        self._stage_deadline: float | None = None
        self._interrupts = 0

    def start(self, spec: ChildSpec) -> Child:
        child = Child(spec, self._events, self.on_output)
        child.start()
        self.children.append(child)
        return child

    def stop(self) -> None:
        """Stop the children in stages (SIGINT: each stops within its epoch, resumable)."""
        self._stopping = True

    def kill(self) -> None:
        for child in self.children:
            child.signal(signal.SIGKILL)

    def run(self) -> None:
        """Supervise until every child ended for good. Handles Ctrl-C and SIGTERM."""
        main = threading.current_thread() is threading.main_thread()
        previous = {}
        if main:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            while any(not c.done for c in self.children):
                self._pump(0.2)
                if self.stop_event.is_set():
                    self._stopping = True
                for child in list(self.children):
                    if not child.done and child.proc is not None and child.proc.poll() is not None:
                        self._ended(child)
                if self._stopping:
                    self._advance_stop()
            self._pump(0.0)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum, frame) -> None:
        self._interrupts += 1
        if self._interrupts > 1 and signum == signal.SIGINT:
            self.kill()  # a second Ctrl-C: now
        self._stopping = True

    def _pump(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                child, generation, event = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if generation != child.generation:
                continue  # from a process that was restarted since
            self._note(child, event)
            self.on_event(child, event)

    @staticmethod
    def _note(child: Child, event: Event) -> None:
        if isinstance(event, (EpochEnded, TrialEnded)):
            child.progressed = True
        elif isinstance(event, ChildOutcome):
            child.outcome = event
        elif isinstance(event, ChildError):
            child.error = event

    def _ended(self, child: Child) -> None:
        time.sleep(0.05)  # the reader threads pass on the last events of a process that just ended
        self._pump(0.0)
        assert child.proc is not None  # it ran, and ended
        code = child.proc.returncode
        stopped_by_us = child.stop_sent or self._stopping
        if code == RECYCLE_EXIT and not stopped_by_us:
            self._restart(child, "ended itself to release memory")
            return
        killed = code < 0 and -code not in (signal.SIGINT, signal.SIGTERM)
        if killed and not stopped_by_us and child.error is None:
            child.deaths = 0 if child.progressed else child.deaths + 1
            if child.deaths < MAX_DEATHS:
                self._restart(child, signal_name(code))
                return
            child.gave_up = (f"died {child.deaths} times in a row ({signal_name(code)}) without saving an epoch: "
                             f"{child.last_line() or 'no output'}")
        child.done = True
        self.on_done(child)

    def _restart(self, child: Child, reason: str) -> None:
        old = child.pid
        child.restarts += 1
        child.start(restart=True)
        assert old is not None and child.pid is not None  # it ran, and runs again
        self.on_event(child, ProcessRestarted(child.name, old, child.pid, reason))

    def _advance_stop(self) -> None:
        alive = [c for c in self.children if not c.done]
        if not alive:
            return
        stage = min(c.spec.stage for c in alive)
        current = [c for c in alive if c.spec.stage == stage]
        fresh = [c for c in current if not c.stop_sent]
        if fresh:
            for child in fresh:
                child.stop_sent = True
                child.signal(signal.SIGINT)
            self._stage_deadline = time.monotonic() + STAGE_TIMEOUT
        elif self._stage_deadline is not None and time.monotonic() > self._stage_deadline:
            for child in current:
                child.signal(signal.SIGKILL)

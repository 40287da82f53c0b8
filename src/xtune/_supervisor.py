"""Run `tune search` in a child process and resume it when the process dies.

A search survives a kill by design (atomic state, per-epoch backups), so a process
that dies of a signal (a crash inside TensorFlow, the out-of-memory killer) is simply
started again: it resumes at the trial's last completed epoch. So is a process that
ended itself between trials because TensorFlow's memory grew past ``XTUNE_RECYCLE_MB``
(exit code ``RECYCLE_EXIT``). A trial that kills the
process twice from the same epoch is failed by the tuner (see ``_tuner.run_trial``),
so crashes cannot loop forever; three deaths in a row that saved nothing stop here.

Signals: the child stays in the caller's process group, so a terminal's Ctrl-C reaches
it directly (the parent ignores SIGINT); SIGTERM sent to the parent is passed on; if
the parent dies, the child gets SIGTERM (Linux ``PR_SET_PDEATHSIG``) and stops at its
next batch, resumable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from xtune._runtime import NATIVE_LOG

CHILD_ENV = "XTUNE_SEARCH_CHILD"
MAX_DEATHS = 3
# The child's exit code for "my memory grew too much: resume me in a fresh process".
RECYCLE_EXIT = 75
RECYCLE_ENV = "XTUNE_RECYCLE_MB"
RECYCLE_MB = 256.0


def recycle_mb() -> float:
    """How many MB a supervised search process may grow after its first trial before it
    ends between trials and is resumed fresh (``XTUNE_RECYCLE_MB``, default 256)."""
    try:
        return float(os.environ.get(RECYCLE_ENV, RECYCLE_MB))
    except ValueError:
        return RECYCLE_MB


def in_child() -> bool:
    """Whether this process is a supervised search (then it runs the search itself)."""
    return os.environ.get(CHILD_ENV) == "1"


def die_with_parent() -> None:
    """In the child: get SIGTERM when the supervising parent dies (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _progress(project: Path) -> tuple[int, int]:
    """(trials ended, epochs held by backups): what a run that died may still have added."""
    import json

    ended = sum('"status"' in p.read_text(errors="ignore") for p in Path(project).glob("trial_*/xtune.json"))
    epochs = 0
    for state in Path(project).glob("trial_*/backup/state.json"):
        try:
            epochs += json.loads(state.read_text()).get("epochs_done", 0)
        except (ValueError, OSError):
            pass
    return ended, epochs


def supervise(first_args: list[str], resume_args: list[str], project: Path, echo, echo_err) -> int:
    """Run ``python -m xtune search <args>`` until it ends by itself; return its exit code.

    Args:
        first_args: Arguments of the first run.
        resume_args: Arguments of a run after a death (without ``--overwrite``).
        project: The search directory (to see whether trials end between deaths).
        echo, echo_err: Print a line of the child's stdout / stderr.
    """
    env = dict(os.environ, **{CHILD_ENV: "1", "PYTHONUNBUFFERED": "1"})
    debug = bool(os.environ.get("XTUNE_DEBUG"))
    deaths, args = 0, first_args
    main = threading.current_thread() is threading.main_thread()
    while True:
        before = _progress(project)
        proc = subprocess.Popen([sys.executable, "-m", "xtune", "search", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)

        def pump(stream, out, filtered):
            for line in stream:
                line = line.rstrip("\n")
                if not (filtered and not debug and NATIVE_LOG.match(line)):
                    out(line)

        pumps = [threading.Thread(target=pump, args=(proc.stdout, echo, False), daemon=True),
                 threading.Thread(target=pump, args=(proc.stderr, echo_err, True), daemon=True)]
        for t in pumps:
            t.start()
        previous = {}
        if main:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda s, f: proc.send_signal(signal.SIGTERM))
        try:
            code = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        for t in pumps:
            t.join()
        if code == RECYCLE_EXIT:  # ended between trials to release memory: not a death
            deaths, args = 0, resume_args
            continue
        if code >= 0 or -code in (signal.SIGINT, signal.SIGTERM):
            return code if code >= 0 else 128 - code
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        deaths = 0 if _progress(project) != before else deaths + 1
        if deaths >= MAX_DEATHS:
            echo_err(f"Error: the search process died {deaths} times in a row ({name}) without saving an epoch; "
                     f"resume with: tune search --project {project}")
            return 1
        echo_err(f"The search process died ({name}); resuming from the last saved epoch.")
        args = resume_args

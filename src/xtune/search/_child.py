"""The entry point of a child process: ``python -m xtune.search._child ROLE SPEC``.

ROLE is "search", "chief" or "worker"; SPEC is the JSON of a ``SearchRequest`` (or a
worker's request) plus ``events_fd`` (where to write events, one JSON object per
line) and ``parent`` (the supervisor's pid). See ``xtune._process``.

A worker whose spec says ``await_chief`` was started beside its chief, before the chief
has an address: it imports what its trials need (TensorFlow, KerasTuner: seconds of CPU
that then overlap the chief's own start) and waits for ``{"chief": "HOST:PORT"}`` on its
standard input. It touches no file before that, so a chief that refuses the search
(a user's folder, a conflicting flag) leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

from xtune._events import ChildError, ChildOutcome
from xtune._process import RECYCLE_EXIT
from xtune.errors import XtuneError

RECYCLE_ENV = "XTUNE_RECYCLE_MB"
RECYCLE_MB = 256.0


def recycle_mb() -> float:
    """How many MB a search process may grow after its first trial before it ends between
    trials and is started again (``XTUNE_RECYCLE_MB``, default 256)."""
    try:
        return float(os.environ.get(RECYCLE_ENV, RECYCLE_MB))
    except ValueError:
        return RECYCLE_MB


def _die_with_parent() -> None:
    """Get SIGTERM when the supervising parent dies (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def main(argv: list[str]) -> int:
    role, spec = argv[0], json.loads(argv[1])
    _die_with_parent()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from xtune._runtime import SignalRelay, filter_native_stderr, quiet_python_warnings

    filter_native_stderr()
    quiet_python_warnings()
    out = os.fdopen(spec.pop("events_fd"), "w", encoding="utf-8", buffering=1)
    parent = spec.pop("parent")
    from xtune.search._project import set_supervisor

    set_supervisor(parent)  # the locks this process takes name it, even if it is already gone
    lock = threading.Lock()
    stop_event = threading.Event()

    def emit(event) -> None:
        with lock:
            try:
                out.write(json.dumps(event.to_dict(), default=str) + "\n")
            except (BrokenPipeError, ValueError):
                stop_event.set()  # the supervisor is gone

    def orphaned():
        while not stop_event.wait(1.0):
            if os.getppid() != parent:
                stop_event.set()

    threading.Thread(target=orphaned, daemon=True).start()
    relay = SignalRelay(stop_event)
    for signum in (signal.SIGINT, signal.SIGTERM):  # until the search installs its own (the same)
        signal.signal(signum, relay)
    try:
        status, details = _run(role, spec, emit, stop_event)
    except XtuneError as error:
        emit(ChildError(type(error).__name__, str(error)))
        return error.exit_code
    except BaseException as error:
        emit(ChildError("crash", f"{type(error).__name__}: {error}"))
        raise
    emit(ChildOutcome(status, details))
    if status == "recycle":
        return RECYCLE_EXIT
    return {"interrupted": 130, "stopped": 1, "chief lost": 1}.get(status, 0)


def _await_chief(stop_event: threading.Event) -> str | None:
    """Warm up, then the chief's address from standard input; None if stopped (or no address comes)."""
    import xtune.search._run
    import xtune.search._worker  # noqa: F401 - imported for its imports (TensorFlow, KerasTuner)

    got: list[str] = []
    arrived = threading.Event()

    def read() -> None:
        got.append(sys.stdin.readline())
        arrived.set()

    threading.Thread(target=read, daemon=True).start()
    while not arrived.wait(0.2):
        if stop_event.is_set():
            return None
    try:
        return json.loads(got[0])["chief"] if got[0].strip() else None
    except (ValueError, KeyError, TypeError):
        return None


def _run(role: str, spec: dict, emit, stop_event) -> tuple[str, dict]:
    if role == "worker":
        from xtune.search._worker import WorkerRequest, run_worker

        if spec.pop("await_chief", False):
            spec["chief"] = _await_chief(stop_event)
            if spec["chief"] is None:
                return "interrupted", {"trials": 0, "message": "stopped before its chief served",
                                       "trial_id": None, "worker_id": spec.get("worker_id")}

        summary = run_worker(WorkerRequest.from_dict(spec), progress=emit, stop_event=stop_event,
                             recycle_mb=recycle_mb())  # a WorkerOutcome; the others' are SearchOutcomes
        return summary.status, {"trials": summary.trials, "message": summary.message, "trial_id": summary.trial_id,
                                "worker_id": summary.worker_id}
    from xtune.search._launch import SearchRequest

    request = SearchRequest.from_dict(spec)
    if role == "chief":
        from xtune.search._chief import run_chief

        outcome = run_chief(request, progress=emit, stop_event=stop_event)
    else:
        from xtune.search._run import run_search

        outcome = run_search(request.path, request.given, space_ref=request.space_ref, data_dir=request.data_dir_path,
                             archive=request.archive_path, overwrite=request.overwrite, progress=emit,
                             mixed_precision=request.mixed_precision, strategy=request.strategy,
                             stop_event=stop_event, recycle_mb=recycle_mb(), warm_start=request.warm)
    return outcome.status, {"resumed": outcome.resumed, "notes": outcome.notes, "message": outcome.message}


def _exit(code: int) -> None:
    """End now: every state file is written (atomically) and the outcome sent. An
    interpreter's own exit tears TensorFlow down for about a second per process, paid at
    the end of every search and at each memory recycling; a kill at this moment loses
    nothing either."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1:]))

"""The chief: a search's oracle served to workers over gRPC, to that search's workers only.

``run_chief`` sets a search up exactly as ``run_search`` does (the lock, run.json,
the data, resume, repairs) and then serves its oracle (KerasTuner's service, through
the seam) instead of running trials. What it adds to the raw service:

* **One search per port.** Port sharing (gRPC's default ``SO_REUSEPORT``) is off, so
  a second chief on a busy port fails in one line instead of splitting the workers.
* **Identity and a secret on every call.** Each call carries the search's id (from
  run.json) and a token that only readers of the project directory have
  (``cluster/token``, mode 0600, made once per search). The chief refuses a call
  without the token (UNAUTHENTICATED) and a call for another search
  (PERMISSION_DENIED, naming what it serves). The token keeps workers of other
  searches and clients that cannot read the project off the oracle; it is not
  encryption: the traffic is plain gRPC (see README, "Safety").
* **One view of all workers.** A watcher turns the oracle's state and the trial files
  into the search's events, each naming its worker.

Files: ``cluster/chief.json`` (where the chief listens) and ``cluster/token``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import threading
from pathlib import Path

from xtune import _atomic
from xtune._events import EpochEnded, Serving, TrialEnded, TrialStarted
from xtune.errors import UsageError
from xtune.search import _kt
from xtune.search._project import CLUSTER_DIR
from xtune.search._state import TRIAL_RECORD, space_values

CHIEF_FILE = "chief.json"
TOKEN_FILE = "token"
DEFAULT_PORT = 8000
IDENTIFY = "/xtune.Chief/Identify"
SEARCH_KEY, TOKEN_KEY = "xtune-search", "xtune-token"
SERVER_OPTIONS = [("grpc.so_reuseport", 0)]


# -- identity and token --------------------------------------------------------------------------


def search_id(run: dict) -> str:
    """The search's id (run.json; an older run.json: a hash of it)."""
    if run.get("search_id"):
        return str(run["search_id"])
    return "run-" + hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()[:16]


def read_token(project: Path) -> str | None:
    try:
        return (Path(project) / CLUSTER_DIR / TOKEN_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def ensure_token(project: Path) -> str:
    """The search's token, made once (``cluster/token``, readable by its owner only)."""
    token = read_token(project)
    if token:
        return token
    folder = Path(project) / CLUSTER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    path = folder / TOKEN_FILE
    tmp = folder / f"{TOKEN_FILE}{_atomic.TMP_MARK}{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return token


def read_chief_file(project: Path) -> dict | None:
    try:
        return _atomic.read_json(Path(project) / CLUSTER_DIR / CHIEF_FILE)
    except (OSError, ValueError):
        return None


def _checker(expected_id: str, token: str, identity: dict):
    """A gRPC server interceptor: only calls with this search's id and token get through."""
    import grpc

    def refuse(code, details):
        def abort(request, context):
            context.abort(code, details)

        return grpc.unary_unary_rpc_method_handler(abort)

    class Check(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):
            metadata = dict(details.invocation_metadata or ())
            if metadata.get(SEARCH_KEY) != expected_id:  # another search's worker: say what is served here
                return refuse(grpc.StatusCode.PERMISSION_DENIED, json.dumps(identity))
            if not secrets.compare_digest(str(metadata.get(TOKEN_KEY, "")), token):
                return refuse(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
            return continuation(details)

    return Check()


def _identity_handler(payload: bytes):
    """A gRPC method next to KerasTuner's: which search this chief serves."""
    import grpc

    return grpc.method_handlers_generic_handler(
        "xtune.Chief", {"Identify": grpc.unary_unary_rpc_method_handler(lambda request, context: payload)})


def host_name() -> str:
    """This machine's name as other machines would reach it (the FQDN, unless that is localhost)."""
    name = socket.getfqdn()
    return socket.gethostname() if name.startswith("localhost") else name


def _bind(server, host: str, port: int) -> int:
    try:
        bound = server.add_insecure_port(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise UsageError(f"cannot listen on {host}:{port} (in use, or not an address of this machine); "
                         "give another --port (0 picks a free one)")
    return bound


# -- the server ----------------------------------------------------------------------------------


def make_server(oracle, project: Path, search: str, host: str, port: int):
    """A gRPC server for ``oracle``: KerasTuner's service and ``Identify``, for this search's calls only.

    Returns:
        ``(server, servicer, port)``; the server is bound (not started).

    Raises:
        UsageError: The port is in use (port sharing is off) or the address is not this machine's.
    """
    from concurrent import futures

    import grpc

    project = Path(project)
    token = ensure_token(project)
    # What a refused worker is told: the search and where it runs (not the full path).
    identity = {"search_id": search, "project": project.resolve().name, "host": socket.gethostname()}
    # One thread, as KerasTuner's chief: the oracle's methods then never overlap.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=SERVER_OPTIONS,
                         interceptors=[_checker(search, token, identity)])
    servicer = _kt.add_oracle_service(server, oracle)
    server.add_generic_rpc_handlers((_identity_handler(json.dumps(identity).encode()),))
    return server, servicer, _bind(server, host, port)


class ChiefServer:
    """Serves a search's oracle to its workers until the plan is done (give it to ``run_search``).

    Args:
        host: The interface to listen on ("0.0.0.0": all; "127.0.0.1": this machine only).
        port: The port; 0 picks a free one.
        emit: Receives the search's events (``Serving`` once workers can connect).
        poll: Seconds between two looks at the oracle (progress, end).
    """

    def __init__(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT, emit=None, poll: float = 0.25):
        self.host = host
        self.port = int(port)
        self.emit = emit or (lambda event: None)
        self.poll = poll

    def serve(self, tuner, stop_event: threading.Event) -> None:
        """Serve until every planned trial has ended and every worker was told; raise SearchInterrupted on stop."""
        from xtune.search._callbacks import SearchInterrupted
        from xtune.search._project import read_run

        oracle = tuner.oracle
        oracle.verbose = 0  # KerasTuner's own trial printout; the watcher reports progress
        project = Path(tuner.project_dir)
        tuner.save()
        if oracle.is_finished() and not _kt.retry_queue(oracle):
            return  # killed after its last trial, before it said so: nothing to hand out
        run = read_run(project)
        server, servicer, port = make_server(oracle, project, search_id(run), self.host, self.port)
        identity = {"search_id": search_id(run)}
        address = f"{host_name()}:{port}"
        chief_file = project / CLUSTER_DIR / CHIEF_FILE
        _atomic.write_json(chief_file, {"address": address, "host": host_name(), "port": port, "bind": self.host,
                                        "pid": os.getpid(), "search_id": identity["search_id"]})
        server.start()
        watcher = _OracleWatcher(oracle, project, self.emit)
        try:
            self.emit(Serving(self.host, port, address, str(project.resolve())))
            while not stop_event.wait(self.poll):
                watcher.poll()
                with _kt.oracle_lock(oracle):
                    done = servicer.stop_triggered and not oracle.ongoing_trials and not oracle.tuner_ids
                if done:
                    break
            watcher.poll()
        finally:
            server.stop(grace=1).wait()
            tuner.save()  # end_trial saves before it drops the trial from ongoing_trials: save what is
            if (read_chief_file(project) or {}).get("pid") == os.getpid():
                chief_file.unlink(missing_ok=True)
        if stop_event.is_set():
            raise SearchInterrupted("interrupted")


class _OracleWatcher:
    """The search's events, from the chief's oracle and the trial files.

    A trial starts when the oracle hands it to a worker (``ongoing_trials``) and ends
    when it reaches ``end_order``; its epochs come from its per-epoch backup while it
    runs, and from its record (``xtune.json``) when it ends. Every event names the
    worker.
    """

    def __init__(self, oracle, project: Path, emit):
        self.oracle = oracle
        self.project = Path(project)
        self.emit = emit
        self._lock = _kt.oracle_lock(oracle)
        with self._lock:
            self.ended = set(oracle.end_order)
        self.running: dict[str, str] = {}  # trial id -> tuner id
        self.last_epoch: dict[str, int] = {}
        self._stamps: dict[str, int] = {}

    def poll(self) -> None:
        with self._lock:
            ongoing = [(tuner_id, trial.trial_id, dict(trial.hyperparameters.values))
                       for tuner_id, trial in self.oracle.ongoing_trials.items()]
            ended = [(t, self.oracle.trials[t].status, self.oracle.trials[t].score)
                     for t in self.oracle.end_order if t not in self.ended]
        for tuner_id, trial_id, values in ongoing:
            if self.running.get(trial_id) == tuner_id:
                self._epochs(trial_id, values)
                continue
            self.running[trial_id] = tuner_id
            initial: int = values.get("tuner/initial_epoch", 0) or 0
            done = (self._backup(trial_id) or {}).get("epochs_done", initial)
            self.last_epoch.setdefault(trial_id, done)  # epochs before this session are counted already
            self.emit(TrialStarted(trial_id, space_values(values), values.get("tuner/bracket"),
                                   values.get("tuner/round"), values.get("tuner/epochs"), initial,
                                   values.get("tuner/trial_id"), resumed_at=done if done > initial else None,
                                   worker=tuner_id))
            self._epochs(trial_id, values)
        for trial_id, status, score in ended:
            self.ended.add(trial_id)
            record = _read_json_or_empty(self.project / f"trial_{trial_id}" / TRIAL_RECORD)
            worker = self.running.pop(trial_id, None)
            self._emit_epochs(trial_id, record.get("epochs"), record.get("history") or [], worker)
            self.emit(TrialEnded(trial_id, status, None if score is None else float(score), record.get("reason"),
                                 record.get("seconds"), record.get("best_epoch"), record.get("params"), worker=worker))

    def _backup(self, trial_id: str) -> dict | None:
        return _read_json_or_empty(self.project / f"trial_{trial_id}" / "backup" / "state.json") or None

    def _epochs(self, trial_id: str, values: dict) -> None:
        path = self.project / f"trial_{trial_id}" / "backup" / "state.json"
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return
        if self._stamps.get(trial_id) == stamp:
            return
        self._stamps[trial_id] = stamp
        backup = self._backup(trial_id) or {}
        self._emit_epochs(trial_id, values.get("tuner/epochs"), backup.get("history") or [],
                          self.running.get(trial_id))

    def _emit_epochs(self, trial_id, epochs, history, worker) -> None:
        last = self.last_epoch.get(trial_id, 0)
        for h in history:
            if h.get("epoch", 0) > last:
                last = h["epoch"]
                self.emit(EpochEnded(trial_id, last, epochs, None, {k: v for k, v in h.items() if k != "epoch"},
                                     worker=worker))
        self.last_epoch[trial_id] = last


def _read_json_or_empty(path: Path) -> dict:
    try:
        return _atomic.read_json(path)
    except (OSError, ValueError):
        return {}


def run_chief(request, *, progress=None, stop_event=None):
    """Start or resume the search of ``request`` and serve it to workers until its plan is done.

    Everything a single-process search does first happens here (the lock, run.json,
    the data, resume, repairs); then trials are handed to workers (``run_worker``)
    instead of run. The chief trains nothing and needs no GPU.

    Args:
        request: A ``SearchRequest`` (its ``host`` and ``port``: where to listen).
        progress: Receives the search's events.
        stop_event: Set it to stop as Ctrl-C would.

    Returns:
        A ``SearchOutcome``.
    """
    from xtune.search._run import run_search

    port = DEFAULT_PORT if request.port is None else request.port
    chief = ChiefServer(request.host, port, progress)
    return run_search(request.path, request.given, space_ref=request.space_ref, data_dir=request.data_dir_path,
                      archive=request.archive_path, overwrite=request.overwrite, progress=progress,
                      stop_event=stop_event, chief=chief, warm_start=request.warm)

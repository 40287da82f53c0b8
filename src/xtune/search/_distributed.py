"""One search over several processes and machines: KerasTuner's chief oracle, wrapped.

KerasTuner distributes a search this way: a *chief* process holds the oracle and
serves it over gRPC; *workers* ask it for trials, run them and report back. Trial ids
and the oracle's state live in the chief; the trial files are written by the workers
into the project directory, which they all share. This module drives that engine so
that nobody sets its environment variables, and fixes what is raw about it:

* ``ChiefServer`` serves the oracle of an ordinary ``run_search`` (which holds the
  project lock and writes run.json, so two chiefs on one project are refused), on a
  given port or a free one. It tells workers which search it serves, so a worker
  never writes into another one, and it turns the oracle's state and the trial files
  into the search's progress events: one view of all workers.
* ``run_worker`` never takes the lock, never writes run.json, never deletes: it reads
  the settings from run.json and refuses a directory without one. While the chief
  has nothing to hand out it sleeps (0.2 s, doubling to 2 s) instead of asking in a
  tight loop; when the chief is gone it stops, leaving its trial resumable.
* ``launch_search`` starts a chief and N workers on this machine (GPUs divided among
  them), shows the chief's progress, restarts a worker that dies (under the same id
  the chief hands it its trial back and the per-epoch backup resumes it), and on
  Ctrl-C stops the workers first, then the chief.

Files it adds to a project: ``cluster/chief.json`` (where the chief listens, and its
token), ``cluster/worker-ID.lock`` (one process per worker id) and the logs of the
processes that ``launch_search`` started (``cluster/NAME.log``). KerasTuner adds
``worker-ID.json`` (a worker's tuner state, empty for ours).

Importing this module loads no TensorFlow, Keras or KerasTuner: the launcher runs
none of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from xtune import _atomic
from xtune.errors import DataError, ProjectError, SpaceError, UsageError, XtuneError
from xtune.search._project import FINISHED_FILE, RUN_FILE, SearchSettings, lock_owner, read_run
from xtune.search._run import SearchOutcome, _stop_on_signals

CLUSTER_DIR = "cluster"
CHIEF_FILE = "chief.json"
DEFAULT_PORT = 8000
IDLE_SLEEP = (0.2, 2.0)  # a waiting worker asks again after this long, doubling up to the second
RPC_TIMEOUT = 30  # seconds a worker waits for an unreachable chief before it stops (KerasTuner: 1 h)
MAX_RESTARTS = 3  # times in a row the launcher restarts a worker that dies without ending a trial
_IDENTIFY = "/xtune.Chief/Identify"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ERRORS = {cls.__name__: cls for cls in (UsageError, SpaceError, DataError, ProjectError, XtuneError)}


# -- addresses, worker ids -----------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> ``(host, port)``; UsageError if malformed."""
    host, sep, port = str(text).strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--chief must be HOST:PORT, like gpu-box-1:8000; got {text!r}")
    return host, int(port)


def check_worker_id(worker_id: str) -> str:
    """A worker id as given, checked: letters, digits, ``_.-``; never containing "chief".

    KerasTuner takes any tuner id containing "chief" for the chief itself.
    """
    worker_id = str(worker_id)
    if not _ID_PATTERN.match(worker_id) or "chief" in worker_id:
        raise UsageError(f"--worker-id must be letters, digits, '_', '.' or '-' (at most 63, not containing "
                         f"'chief'); got {worker_id!r}")
    return worker_id


def _default_worker_ids():
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]).strip("-") or "host"
    host = host.replace("chief", "chf")[:40]
    return (f"{host}-{k}" for k in range(1, 1000))


class _WorkerSlot:
    """One running process per worker id: an exclusive ``flock`` on ``cluster/worker-ID.lock``.

    Without an id, the first free ``<host>-<n>``: a worker restarted on the same
    machine gets its old id back, and with it its unfinished trial.
    """

    def __init__(self, project: Path, worker_id: str | None):
        self.project = Path(project)
        self.asked = check_worker_id(worker_id) if worker_id is not None else None
        self.worker_id = None
        self._fd = None

    @property
    def tuner_id(self) -> str:
        return f"worker-{self.worker_id}"

    def __enter__(self) -> "_WorkerSlot":
        import fcntl

        folder = self.project / CLUSTER_DIR
        folder.mkdir(exist_ok=True)
        for worker_id in [self.asked] if self.asked else _default_worker_ids():
            path = folder / f"worker-{worker_id}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                if self.asked:
                    try:
                        owner = json.loads(path.read_text() or "{}")
                    except (OSError, ValueError):
                        owner = {}
                    raise ProjectError(f"worker id {worker_id} is already running on {self.project} (pid "
                                       f"{owner.get('pid', '?')} on {owner.get('host', '?')}); give another "
                                       "--worker-id") from None
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
            self.worker_id, self._fd = worker_id, fd
            return self
        raise ProjectError(f"no free worker id in {folder}")  # pragma: no cover

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


def _read_chief_file(project: Path) -> dict | None:
    try:
        return _atomic.read_json(Path(project) / CLUSTER_DIR / CHIEF_FILE)
    except (OSError, ValueError):
        return None


# -- the chief -----------------------------------------------------------------------------


class ChiefServer:
    """Serves a search's oracle to workers over gRPC (KerasTuner's servicer) until its plan is done.

    Give it to ``run_search(chief=...)``: the search is set up as usual (lock, run.json,
    resume, repair) and then served here instead of run here.

    Args:
        host: The interface to listen on ("0.0.0.0": all; "127.0.0.1": this machine only).
        port: The port; 0 picks a free one.
        on_ready: Called with ``{"host", "port", "address", "project", "token"}`` once
            workers can connect.
        poll: Seconds between two looks at the oracle (progress, end).
    """

    def __init__(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT, on_ready=None, poll: float = 0.25):
        self.host = host
        self.port = int(port)
        self.on_ready = on_ready or (lambda info: None)
        self.poll = poll

    def serve(self, tuner, stop_event: threading.Event) -> None:
        """Serve until every planned trial has ended and every worker was told; raise SearchInterrupted on stop."""
        from concurrent import futures

        import grpc
        from keras_tuner.src import protos
        from keras_tuner.src.distribute import oracle_chief

        from xtune.search._callbacks import SearchInterrupted

        oracle = tuner.oracle
        oracle.verbose = 0  # KerasTuner's own trial printout; the watcher reports progress
        _silence_kerastuner_debug_print()
        project = Path(tuner.project_dir)
        tuner.save()  # as KerasTuner's chief does before serving
        if oracle.is_finished() and not oracle._retry_queue:
            return  # killed after its last trial, before it said so: nothing to hand out
        token = uuid.uuid4().hex
        address = f"{_host_name()}:{{port}}"
        # One thread, as KerasTuner's chief: the oracle's methods then never overlap.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        servicer = oracle_chief.OracleServicer(oracle)
        protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
        identity = {"token": token, "project": str(project.resolve()), "host": socket.gethostname()}
        server.add_generic_rpc_handlers((_identity_handler(json.dumps(identity).encode()),))
        port = _bind(server, self.host, self.port)
        address = address.format(port=port)
        chief_file = project / CLUSTER_DIR / CHIEF_FILE
        chief_file.parent.mkdir(exist_ok=True)
        _atomic.write_json(chief_file, {"address": address, "host": _host_name(), "port": port,
                                        "bind": self.host, "pid": os.getpid(), "token": token})
        server.start()
        watcher = _OracleWatcher(oracle, project, tuner.emit)
        try:
            self.on_ready({"host": self.host, "port": port, "address": address,
                           "project": str(project.resolve()), "token": token})
            while not stop_event.wait(self.poll):
                watcher.poll()
                if servicer.stop_triggered and oracle_chief.exit_chief(oracle):
                    break
            watcher.poll()
        finally:
            server.stop(grace=1).wait()
            tuner.save()  # end_trial saves before it drops the trial from ongoing_trials: save what is
            if (_read_chief_file(project) or {}).get("token") == token:
                chief_file.unlink(missing_ok=True)
        if stop_event.is_set():
            raise SearchInterrupted("interrupted")


def _host_name() -> str:
    """This machine's name as other machines would reach it (the FQDN, unless that is localhost)."""
    name = socket.getfqdn()
    return socket.gethostname() if name.startswith("localhost") else name


def _silence_kerastuner_debug_print() -> None:
    """KerasTuner 1.4.8 prints a condition's first value each time it goes over gRPC
    (``conditions.Parent.to_proto``): a leftover debug line, silenced in that module only."""
    from keras_tuner.src.engine import conditions

    conditions.print = lambda *args, **kwargs: None


def _bind(server, host: str, port: int) -> int:
    try:
        bound = server.add_insecure_port(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise UsageError(f"cannot listen on {host}:{port} (in use, or not an address of this machine); "
                         "give another --port (0 picks a free one)")
    return bound


def _identity_handler(payload: bytes):
    """A gRPC method next to KerasTuner's: which search this chief serves (its token and path)."""
    import grpc

    def identify(request, context):
        return payload

    return grpc.method_handlers_generic_handler(
        "xtune.Chief", {"Identify": grpc.unary_unary_rpc_method_handler(identify)})


class _OracleWatcher:
    """The search's progress events, from the chief's oracle and the trial files.

    A trial starts when the oracle hands it to a worker (``ongoing_trials``) and ends
    when it reaches ``end_order``; its epochs come from its per-epoch backup while it
    runs, and from its record (``xtune.json``) when it ends. The worker that runs it
    is named in every event.
    """

    def __init__(self, oracle, project: Path, emit):
        from keras_tuner.src.engine import oracle as oracle_module

        self.oracle = oracle
        self.project = Path(project)
        self.emit = emit
        self._lock = oracle_module.LOCKS[oracle]
        with self._lock:
            self.ended = set(oracle.end_order)
        self.running: dict[str, str] = {}  # trial id -> tuner id
        self.last_epoch: dict[str, int] = {}
        self._stamps: dict[str, int] = {}

    def poll(self) -> None:
        from xtune.search._tuner import TRIAL_RECORD, space_values

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
            backup = self._backup(trial_id)
            initial = values.get("tuner/initial_epoch", 0) or 0
            done = (backup or {}).get("epochs_done", initial)
            self.last_epoch.setdefault(trial_id, done)  # epochs before this session are counted already
            self.emit({"event": "trial_start", "trial_id": trial_id, "values": space_values(values),
                       "bracket": values.get("tuner/bracket"), "round": values.get("tuner/round"),
                       "epochs": values.get("tuner/epochs"), "initial_epoch": initial,
                       "parent": values.get("tuner/trial_id"), "worker": tuner_id,
                       "resumed_at": done if done > initial else None})
            self._epochs(trial_id, values)
        for trial_id, status, score in ended:
            self.ended.add(trial_id)
            record = _read_json_or_empty(self.project / f"trial_{trial_id}" / TRIAL_RECORD)
            worker = self.running.pop(trial_id, None)
            self._emit_epochs(trial_id, record.get("epochs"), record.get("history") or [], worker)
            self.emit({"event": "trial_end", "trial_id": trial_id, "status": status,
                       "score": None if score is None else float(score), "reason": record.get("reason"),
                       "seconds": record.get("seconds"), "best_epoch": record.get("best_epoch"),
                       "params": record.get("params"), "worker": worker})

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
                self.emit({"event": "epoch_end", "trial_id": trial_id, "epoch": last, "epochs": epochs,
                           "seconds": None, "logs": {k: v for k, v in h.items() if k != "epoch"},
                           "worker": worker})
        self.last_epoch[trial_id] = last


def _read_json_or_empty(path: Path) -> dict:
    try:
        return _atomic.read_json(path)
    except (OSError, ValueError):
        return {}


def run_chief(project: Path, given: dict, *, host: str = "0.0.0.0", port: int = DEFAULT_PORT, on_ready=None,
              **search_options) -> SearchOutcome:
    """Start or resume the search in ``project`` and serve it to workers until its plan is done.

    Everything a single-process search does first happens here (the lock, run.json,
    the data, resume, repairs); then trials are handed to workers (``run_worker``)
    instead of run. The chief trains nothing and needs no GPU.

    Args:
        project: The search directory; workers must see it at some path (shared).
        given: Settings passed explicitly, as for ``run_search``.
        host: The interface to listen on.
        port: The port (0: a free one).
        on_ready: Called with ``{"host", "port", "address", "project", "token"}`` once
            workers can connect.
        **search_options: ``run_search``'s other options (space_ref, data_dir,
            overwrite, progress, stop_event).

    Returns:
        A ``SearchOutcome``.
    """
    from xtune.search._run import run_search

    return run_search(project, given, chief=ChiefServer(host, port, on_ready), **search_options)


# -- a worker ------------------------------------------------------------------------------


@dataclass
class WorkerOutcome:
    """What a call of ``run_worker`` did.

    Attributes:
        worker_id: The worker's id (as given, or the one picked).
        status: "finished" (nothing left to run), "interrupted" (Ctrl-C / SIGTERM),
            "stopped" (too many failures in a row) or "chief lost".
        trials: Trials this worker ended.
        message: Why it stopped (for "stopped" and "chief lost").
        trial_id: The trial it was running when it stopped, if any.
    """

    worker_id: str
    status: str
    trials: int = 0
    message: str | None = None
    trial_id: str | None = None


class _PatientClient:
    """KerasTuner's ``OracleClient`` on a worker, made patient and mortal.

    While the chief answers IDLE (open brackets wait for other workers' trials), it
    sleeps between asks, 0.2 s doubling to 2 s, instead of asking again at once
    (KerasTuner's loop). A failed call (the chief stopped or unreachable) raises
    ``ChiefLost``, which stops the worker with its trial resumable.

    Args:
        client: The ``OracleClient`` KerasTuner made.
        stop_event: Set: stop waiting (``SearchInterrupted``).
        on_wait: Called once per wait, when it starts.
        sleep: ``(first, longest)`` pause between two asks.
    """

    def __init__(self, client, stop_event: threading.Event, on_wait=None, sleep=IDLE_SLEEP):
        self._client = client
        self._stop_event = stop_event
        self._on_wait = on_wait or (lambda: None)
        self._sleep = sleep
        self.current_trial = None

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_trial(self, tuner_id):
        from keras_tuner.src.engine.trial import TrialStatus

        from xtune.search._callbacks import SearchInterrupted

        delay, waiting = self._sleep[0], False
        while True:
            if self._stop_event.is_set():
                raise SearchInterrupted("interrupted")
            trial = self._call("create_trial", tuner_id)
            if trial.status != TrialStatus.IDLE:
                self.current_trial = trial.trial_id if trial.status == TrialStatus.RUNNING else None
                return trial
            if not waiting:
                self._on_wait()
                waiting = True
            if self._stop_event.wait(delay):
                raise SearchInterrupted("interrupted")
            delay = min(delay * 2, self._sleep[1])

    def end_trial(self, trial):
        self._call("end_trial", trial)
        self.current_trial = None

    def get_space(self):
        return self._call("get_space")

    def update_space(self, hyperparameters):
        return self._call("update_space", hyperparameters)

    def update_trial(self, trial_id, metrics, step=0):
        return self._call("update_trial", trial_id, metrics, step=step)

    def get_trial(self, trial_id):
        return self._call("get_trial", trial_id)

    def get_best_trials(self, num_trials=1):
        return self._call("get_best_trials", num_trials)

    def _call(self, name, *args, **kwargs):
        import grpc

        from xtune.search._callbacks import ChiefLost

        try:
            return getattr(self._client, name)(*args, **kwargs)
        except grpc.RpcError as error:
            code = error.code().name if hasattr(error, "code") else type(error).__name__
            raise ChiefLost(f"lost the chief during {name} ({code})") from None


@contextlib.contextmanager
def _kerastuner_worker(tuner_id: str, host: str, port: int):
    """KerasTuner's worker settings (environment variables, call timeout), for a block."""
    from keras_tuner.src.distribute import oracle_client

    names = {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": host, "KERASTUNER_ORACLE_PORT": str(port)}
    before = {k: os.environ.get(k) for k in names}
    timeout = oracle_client.TIMEOUT
    os.environ.update(names)
    # KerasTuner waits an hour for an unreachable chief; a worker whose chief is gone stops sooner.
    oracle_client.TIMEOUT = RPC_TIMEOUT
    try:
        yield
    finally:
        oracle_client.TIMEOUT = timeout
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _connect(host: str, port: int, project: Path, stop_event: threading.Event, on_wait) -> dict | None:
    """Wait until the chief of ``project`` answers at ``host:port``; None if the search finished.

    Raises:
        SearchInterrupted: ``stop_event`` was set while waiting.
        UsageError: Something else listens there.
        ProjectError: A chief of another search listens there.
    """
    import grpc

    from xtune.search._callbacks import SearchInterrupted

    options = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
               ("grpc.max_reconnect_backoff_ms", 2000)]
    channel = grpc.insecure_channel(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}", options=options)
    identify = channel.unary_unary(_IDENTIFY)
    waiting, other_since = False, None
    try:
        while True:
            if stop_event.is_set():
                raise SearchInterrupted("interrupted")
            if (project / FINISHED_FILE).exists():
                return None
            try:
                identity = json.loads(identify(b"", timeout=2, wait_for_ready=True))
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise UsageError(f"{host}:{port} answers, but it is not a tune chief") from None
                if not waiting:
                    on_wait()
                    waiting = True
                stop_event.wait(0.5)
                continue
            if (_read_chief_file(project) or {}).get("token") == identity.get("token"):
                return identity
            # Another search's chief, or our chief.json not visible here yet (a network file system).
            other_since = other_since or time.monotonic()
            if time.monotonic() - other_since > 10:
                raise ProjectError(f"the chief at {host}:{port} serves {identity.get('project')} on "
                                   f"{identity.get('host')}, not {project}; check --chief and --project")
            stop_event.wait(1.0)
    finally:
        channel.close()


def _finished_soon(project: Path, wait: float = 5.0) -> bool:
    """Whether the search says it is finished now or within ``wait`` s (the chief writes it as it stops)."""
    deadline = time.monotonic() + wait
    while not (project / FINISHED_FILE).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _worker_splits(project: Path, settings: SearchSettings, run: dict, data_dir):
    """The search's data: the chief's prepared copy when this machine sees it, else prepared here."""
    from xtune.data import PreparedData, load_splits
    from xtune.search._run import _load_data

    stored = run.get("data") or {}
    root = stored.get("root")
    if data_dir is None and root and Path(root).is_dir():
        prepared = PreparedData.from_dict(stored)
        return load_splits(prepared, image_size=settings.image_size, batch_size=settings.batch_size,
                           seed=settings.seed)
    splits, _ = _load_data(project, settings, run, data_dir)
    return splits


def run_worker(
    project: Path,
    chief: str | None = None,
    *,
    worker_id: str | None = None,
    data_dir: Path | None = None,
    mixed_precision: str = "auto",
    strategy: str | None = None,
    progress=None,
    stop_event: threading.Event | None = None,
    epoch_backups: bool = True,
    tensorboard: bool = True,
) -> WorkerOutcome:
    """Run trials of the search in ``project`` that its chief hands out, until none is left.

    The settings come from run.json; the worker never takes the project's lock,
    never writes run.json and never deletes anything. Trial files go into ``project``,
    which must be the chief's project directory (shared). A worker restarted under the
    same id is handed its unfinished trial again and resumes it at its last epoch.

    Args:
        project: The search directory, as this machine sees it.
        chief: ``HOST:PORT`` of the chief; default: the address in ``cluster/chief.json``.
        worker_id: Unique in the search; default: the first free ``<host>-<n>``.
        data_dir: Where prepared data is cached here. Default: the chief's prepared
            copy if this machine sees it at the same path, else the user's cache.
        mixed_precision: "auto", "on" or "off".
        strategy: "none" or "mirrored" (over this worker's visible GPUs).
        progress: Called with event dicts (``worker_start``, ``waiting_for_chief``,
            ``waiting``, ``trial_start``, ``epoch_end``, ``trial_end``).
        stop_event: Set it to stop as Ctrl-C would.
        epoch_backups: Per-epoch backups (mid-trial resume).
        tensorboard: Log trials for TensorBoard.

    Returns:
        A ``WorkerOutcome``.

    Raises:
        ProjectError: No search in ``project`` (no run.json), the worker id is taken,
            or the chief serves another search.
        UsageError, DataError: one-line user errors.
    """
    project = Path(project)
    try:
        run = read_run(project)
    except ProjectError as error:  # a worker never starts a search: no run.json, no work
        raise ProjectError(f"{error}: start the search's chief first (tune search --project DIR --chief)") from None
    settings = SearchSettings.from_dict(run["settings"])
    plan = settings.plan()
    if chief is None:
        info = _read_chief_file(project)
        if info is None:
            raise UsageError(f"give --chief HOST:PORT (no chief has announced itself in {project / CLUSTER_DIR})")
        chief = f"{info['host']}:{info['port']}"
    host, port = parse_address(chief)
    emit = progress or (lambda event: None)
    stop_event = stop_event or threading.Event()
    with _stop_on_signals(stop_event), _WorkerSlot(project, worker_id) as slot:
        outcome = WorkerOutcome(slot.worker_id, "finished")
        emit({"event": "worker_start", "worker": slot.tuner_id, "worker_id": slot.worker_id,
              "chief": f"{host}:{port}", "project": str(project), "plan": plan.to_dict(),
              "settings": settings.to_dict()})
        from xtune.search._callbacks import ChiefLost, DiskFull, SearchInterrupted, TooManyFailures

        try:
            identity = _connect(host, port, project, stop_event,
                                lambda: emit({"event": "waiting_for_chief", "chief": f"{host}:{port}"}))
        except SearchInterrupted:
            outcome.status = "interrupted"
            return outcome
        if identity is None:
            return outcome
        from xtune._runtime import configure_devices, distribution_strategy
        from xtune.search._run import _Progress, make_tuner
        from xtune.spaces import SearchSpace

        space = SearchSpace.from_dict(run["space"])
        splits = _worker_splits(project, settings, run, data_dir)
        devices = configure_devices(mixed_precision)
        strategy_obj = distribution_strategy(strategy)
        emit({"event": "worker_ready", "worker": slot.tuner_id, "devices": devices,
              "replicas": strategy_obj.num_replicas_in_sync if strategy_obj is not None else 1})

        def tagged(event):
            if event["event"] == "trial_end":
                outcome.trials += 1
            emit({**event, "worker": slot.tuner_id, "eta": None})  # one worker cannot tell the search's ETA

        tracker = _Progress(tagged, plan, not settings.objective.endswith("loss"), 0, None)
        _silence_kerastuner_debug_print()
        client = None
        with _kerastuner_worker(slot.tuner_id, host, port):
            try:
                tuner = make_tuner(project, settings, space, splits, resume=True, emit=tracker,
                                   stop_event=stop_event, epoch_backups=epoch_backups, tensorboard=tensorboard,
                                   max_consecutive_failures=settings.max_consecutive_failures,
                                   distribution_strategy=strategy_obj)
                client = tuner.oracle = _PatientClient(
                    tuner.oracle, stop_event, lambda: emit({"event": "waiting", "worker": slot.tuner_id}))
                tuner.search(verbose=0)
            except SearchInterrupted:
                outcome.status = "interrupted"
            except ChiefLost as error:
                if _finished_soon(project):
                    outcome.status = "finished"
                else:
                    outcome.status, outcome.message = "chief lost", str(error)
            except TooManyFailures as error:
                outcome.status, outcome.message = "stopped", str(error)
            except DiskFull as error:
                raise ProjectError(f"{error}; free some space and start this worker again") from None
            except OSError as error:
                if _atomic.is_disk_full(error):
                    raise ProjectError(f"disk full while saving a trial ({error}); free some space and start "
                                       "this worker again") from None
                raise
            outcome.trial_id = client.current_trial if client is not None and outcome.status != "finished" else None
        return outcome


# -- several processes on one machine --------------------------------------------------------


def assign_gpus(gpus: list[str] | None, workers: int) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` of each worker: the GPUs divided in contiguous groups.

    4 GPUs, 2 workers: "0,1" and "2,3" (``--strategy mirrored`` trains each trial on
    both of a worker's). Fewer GPUs than workers: they are shared in turn.
    No GPUs given: None (each worker sees what the machine has).
    """
    if not gpus:
        return [None] * workers
    if len(gpus) < workers:
        return [gpus[k % len(gpus)] for k in range(workers)]
    size, extra = divmod(len(gpus), workers)
    groups, start = [], 0
    for k in range(workers):
        end = start + size + (1 if k < extra else 0)
        groups.append(",".join(gpus[start:end]))
        start = end
    return groups


def parse_gpus(text: str | None) -> list[str] | None:
    """``--gpus 0,1,3`` -> ["0", "1", "3"]; UsageError if malformed."""
    if text is None:
        return None
    gpus = [g.strip() for g in str(text).split(",") if g.strip()]
    if not gpus or any(not g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise UsageError(f"--gpus must be distinct GPU numbers like 0,1; got {text!r}")
    return gpus


class _Child:
    """A chief or worker process started by the launcher, with its events pipe."""

    def __init__(self, name: str, role: str, spec: dict, env: dict, events: queue.Queue, log: Path | None):
        self.name, self.role, self.spec, self.env, self.events = name, role, spec, env, events
        self.log = log
        self.tail = deque(maxlen=50)
        self.outcome = None
        self.error = None
        self.restarts = 0
        self.proc = None
        self.generation = 0
        self._log_file = None

    def start(self) -> None:
        self.generation += 1
        self.outcome = self.error = None
        read_fd, write_fd = os.pipe()
        spec = {**self.spec, "events_fd": write_fd, "parent": os.getpid()}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xtune.search._distributed", self.role, json.dumps(spec)],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(write_fd,), start_new_session=True,  # the launcher passes Ctrl-C on, in order
        )
        os.close(write_fd)
        generation = self.generation
        threading.Thread(target=self._read_events, args=(read_fd, generation), daemon=True).start()
        threading.Thread(target=self._read_output, args=(self.proc.stdout,), daemon=True).start()

    def _read_events(self, fd: int, generation: int) -> None:
        with os.fdopen(fd, "r", encoding="utf-8") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self.events.put((self, generation, event))

    def _read_output(self, stream) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            if self.log is not None:
                if self._log_file is None and self.log.parent.is_dir():
                    self._log_file = open(self.log, "a", encoding="utf-8")
                    for earlier in list(self.tail)[:-1]:
                        self._log_file.write(earlier + "\n")
                if self._log_file is not None:
                    self._log_file.write(line + "\n")
                    self._log_file.flush()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum) -> None:
        if self.alive():
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:  # pragma: no cover - exited meanwhile
                pass

    def last_line(self) -> str:
        lines = [l for l in self.tail if l.strip()]
        return lines[-1] if lines else ""


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def launch_search(
    project: Path,
    given: dict,
    *,
    workers: int,
    gpus: list[str] | None = None,
    threads: int | None = None,
    space_ref=None,
    data_dir: Path | None = None,
    overwrite: bool = False,
    mixed_precision: str = "auto",
    strategy: str | None = None,
    progress=None,
    stop_event: threading.Event | None = None,
) -> SearchOutcome:
    """Run the search in ``project`` with a chief and ``workers`` worker processes on this machine.

    The chief (``run_chief`` on a free loopback port) sets the search up and serves
    it; the workers (``run_worker``) run its trials. This process runs no TensorFlow:
    it passes on the chief's progress events (each names its worker), restarts a
    worker that dies under the same id (its trial resumes at its last epoch; at most
    ``MAX_RESTARTS`` times in a row without an ended trial), and on Ctrl-C / SIGTERM
    stops the workers, then the chief: the search is resumable, by this or by a
    single process.

    Args:
        project: The search directory.
        given: Settings passed explicitly, as for ``run_search``.
        workers: Worker processes.
        gpus: GPU numbers to divide among the workers (``assign_gpus``).
        threads: CPU threads per worker (TensorFlow's intra- and inter-op pools,
            OpenMP). Default: the cores divided among the workers when no GPU is given.
        space_ref, data_dir, overwrite: As for ``run_search``.
        mixed_precision, strategy: Each worker's, as for ``run_search``.
        progress: Called with the chief's event dicts plus ``workers_started`` and
            ``worker_restart``.
        stop_event: Set it to stop as Ctrl-C would.

    Returns:
        A ``SearchOutcome``.

    Raises:
        UsageError, ProjectError, DataError: one-line user errors, from any process.
    """
    if workers < 1:
        raise UsageError(f"--workers must be at least 1; got {workers}")
    project = Path(project)
    owner = lock_owner(project)
    if owner is not None:
        raise ProjectError(
            f"{project} is being searched by another tune process (pid {owner.get('pid', '?')} on "
            f"{owner.get('host', '?')}, since {owner.get('since', '?')}); wait for it to finish or stop it (Ctrl-C) first")
    if threads is None and not gpus:
        threads = max(1, (os.cpu_count() or 1) // workers)
    launcher = _Launcher(project, workers, gpus, threads, progress or (lambda event: None),
                         stop_event or threading.Event())
    chief_spec = {"project": str(project), "given": given, "space_ref": _jsonable(space_ref),
                  "data_dir": _jsonable(data_dir), "overwrite": overwrite, "host": "127.0.0.1", "port": 0}
    worker_spec = {"project": str(project), "data_dir": _jsonable(data_dir), "mixed_precision": mixed_precision,
                   "strategy": strategy}
    with _stop_on_signals(launcher.stop_event):
        return launcher.run(chief_spec, worker_spec)


def _jsonable(value):
    return None if value is None else str(value)


class _Launcher:
    def __init__(self, project: Path, workers: int, gpus, threads, progress, stop_event: threading.Event):
        self.project = project
        self.count = workers
        self.gpus = gpus
        self.groups = assign_gpus(gpus, workers)
        self.threads = threads
        self.progress = progress
        self.stop_event = stop_event
        self.events: queue.Queue = queue.Queue()
        self.chief: _Child | None = None
        self.workers: list[_Child] = []
        self.running: dict[str, str] = {}  # tuner id -> trial id
        self.search_start = None
        self.fatal: XtuneError | None = None
        self.stopped: str | None = None  # why a worker stopped the search (too many failures)
        self.stopping = False

    # -- processes ---------------------------------------------------------------------

    def _env(self, gpus: str | None = None, chief: bool = False) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
            env.pop(name, None)
        if chief:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the chief trains nothing
        elif gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        if not chief and self.threads:
            for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
                env[name] = str(self.threads)
        return env

    def run(self, chief_spec: dict, worker_spec: dict) -> SearchOutcome:
        self.chief = _Child("chief", "chief", chief_spec, self._env(chief=True), self.events,
                            self.project / CLUSTER_DIR / "chief.log")
        self.chief.start()
        try:
            serving = self._until_serving()
            if serving is None:  # the chief ended before serving: an error, or nothing to do
                return self._finish()
            address = f"127.0.0.1:{serving['port']}"
            for k in range(1, self.count + 1):
                spec = {**worker_spec, "chief": address, "worker_id": str(k)}
                self.workers.append(_Child(f"worker-{k}", "worker", spec, self._env(self.groups[k - 1]),
                                           self.events, self.project / CLUSTER_DIR / f"worker-{k}.log"))
            for w in self.workers:
                w.start()
            self.progress({"event": "workers_started", "chief": {"pid": self.chief.proc.pid, "address": address},
                           "workers": [{"worker": w.name, "pid": w.proc.pid, "gpus": g, "threads": self.threads}
                                       for w, g in zip(self.workers, self.groups)]})
            self._supervise()
        except KeyboardInterrupt:  # a second Ctrl-C: stop now (every state write is atomic)
            for child in [*self.workers, self.chief]:
                child.signal(signal.SIGKILL)
            for child in [*self.workers, self.chief]:
                if child.proc is not None:
                    child.proc.wait()
            return self._outcome("interrupted")
        return self._finish()

    def _until_serving(self) -> dict | None:
        while True:
            try:
                child, _, event = self.events.get(timeout=0.2)
            except queue.Empty:
                if not self.chief.alive():
                    self._drain()
                    return None
                if self.stop_event.is_set() and not self.stopping:
                    self.stopping = True
                    self.chief.signal(signal.SIGINT)
                continue
            if event["event"] == "serving":
                return event
            self._handle(child, event)

    def _drain(self) -> None:
        time.sleep(0.1)  # the reader threads pass on the last lines of a process that just ended
        while True:
            try:
                child, generation, event = self.events.get_nowait()
            except queue.Empty:
                return
            if generation == child.generation:
                self._handle(child, event)

    def _handle(self, child: _Child, event: dict) -> None:
        kind = event["event"]
        if kind == "error":
            child.error = event
            return
        if kind == "outcome":
            child.outcome = event
            return
        if child is not self.chief:
            return  # the chief's view covers the trials; a worker's own events stay in its log
        if kind == "search_start":
            event = {**event, "workers": [{"worker": f"worker-{k + 1}", "gpus": g, "threads": self.threads}
                                          for k, g in enumerate(self.groups)]}
            self.search_start = event
        elif kind == "trial_start" and event.get("worker"):
            self.running[event["worker"]] = event["trial_id"]
        elif kind == "trial_end":
            worker = next((w for w in self.workers if w.name == event.get("worker")), None)
            if worker is not None:
                worker.restarts = 0
            self.running.pop(event.get("worker"), None)
        self.progress(event)

    def _supervise(self) -> None:
        chief_deadline = None
        while True:
            try:
                child, generation, event = self.events.get(timeout=0.2)
                if generation == child.generation:
                    self._handle(child, event)
                continue
            except queue.Empty:
                pass
            if self.stop_event.is_set() and not self.stopping:
                self._stop_workers()
            for w in self.workers:
                if w.proc.poll() is not None and not getattr(w, "done", False):
                    self._worker_ended(w)
            if self.stopping and not any(w.alive() for w in self.workers) and self.chief.alive():
                if chief_deadline is None:  # the workers are down: now the chief (it saves its oracle)
                    self._drain()
                    self.chief.signal(signal.SIGINT)
                    chief_deadline = time.monotonic() + 60
                elif time.monotonic() > chief_deadline:
                    self.chief.signal(signal.SIGKILL)
            if not self.chief.alive():
                self._drain()
                self._after_chief()
                return

    def _stop_workers(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        for w in self.workers:
            w.signal(signal.SIGINT)  # each stops at its next batch; its trial stays resumable

    def _worker_ended(self, w: _Child) -> None:
        self._drain()
        code = w.proc.returncode
        w.done = True
        if self.stopping:
            return
        outcome = (w.outcome or {}).get("status")
        if outcome == "finished":
            return
        if w.error and w.error.get("kind") in _ERRORS:
            self.fatal = _ERRORS[w.error["kind"]](w.error["message"])
            self._stop_workers()
            return
        if outcome == "stopped":
            self.stopped = w.outcome.get("message")
            self._stop_workers()
            return
        if w.restarts >= MAX_RESTARTS:
            self.fatal = XtuneError(f"{w.name} died {w.restarts + 1} times in a row ({_signal_name(code)}: "
                                    f"{w.last_line() or 'no output'}); see {w.log}")
            self._stop_workers()
            return
        old_pid = w.proc.pid
        w.restarts += 1
        w.done = False
        w.start()
        self.progress({"event": "worker_restart", "worker": w.name, "old_pid": old_pid, "pid": w.proc.pid,
                       "reason": _signal_name(code), "trial_id": self.running.get(w.name)})

    def _after_chief(self) -> None:
        """The chief ended: give the workers a moment to see it, then stop them, then kill them."""
        finished = (self.chief.outcome or {}).get("status") in ("finished", "already finished")
        if not finished:
            self._stop_workers()
        stop_at = time.monotonic() + 30  # a finished search: each worker is told at its next ask
        kill_at = None
        while any(w.alive() for w in self.workers):
            now = time.monotonic()
            if not self.stopping and now > stop_at:
                self._stop_workers()
            if self.stopping and kill_at is None:
                kill_at = now + 60
            if kill_at is not None and now > kill_at:
                for w in self.workers:
                    w.signal(signal.SIGKILL)
            time.sleep(0.1)
        self._drain()

    # -- outcome -------------------------------------------------------------------------

    def _finish(self) -> SearchOutcome:
        if self.fatal is not None:
            raise self.fatal
        chief = self.chief
        if chief.error is not None:
            raise _ERRORS.get(chief.error.get("kind"), XtuneError)(chief.error["message"])
        outcome = chief.outcome
        if outcome is None:
            raise XtuneError(f"the chief stopped unexpectedly ({_signal_name(chief.proc.returncode)}: "
                             f"{chief.last_line() or 'no output'}); resume with: {self._resume()}")
        status = outcome["status"]
        if getattr(self, "stopped", None) and status == "interrupted":
            return self._outcome("stopped", message=self.stopped)
        return self._outcome(status, outcome)

    def _outcome(self, status: str, reported: dict | None = None, message: str | None = None) -> SearchOutcome:
        from xtune.search._run import _outcome, _running_trials

        reported = reported or {}
        try:
            plan = SearchSettings.from_dict(read_run(self.project)["settings"]).plan()
        except ProjectError:
            raise XtuneError(f"the search in {self.project} did not start") from None
        outcome = _outcome(self.project, status, plan, reported.get("resumed", False), reported.get("notes"),
                           message or reported.get("message"))
        if status == "interrupted":
            running = _running_trials(self.project)
            outcome.interrupted_trial = running[0] if running else None
            outcome.resume = self._resume()
        return outcome

    def _resume(self) -> str:
        command = f"tune search --project {self.project} --workers {self.count}"
        return command + (f" --gpus {','.join(self.gpus)}" if self.gpus else "")


# -- the processes the launcher starts ----------------------------------------------------------


def _child_main(argv: list[str]) -> int:
    """``python -m xtune.search._distributed chief|worker SPEC``: run one part, report on a pipe."""
    role, spec = argv[0], json.loads(argv[1])
    out = os.fdopen(spec["events_fd"], "w", encoding="utf-8", buffering=1)
    lock = threading.Lock()
    stop_event = threading.Event()

    def emit(event: dict) -> None:
        with lock:
            try:
                out.write(json.dumps(event, default=str) + "\n")
            except (BrokenPipeError, ValueError):
                stop_event.set()  # the launcher is gone

    def orphaned():
        while not stop_event.wait(1.0):
            if os.getppid() != spec["parent"]:
                stop_event.set()

    threading.Thread(target=orphaned, daemon=True).start()
    for signum in (signal.SIGINT, signal.SIGTERM):  # until the search installs its own (the same)
        signal.signal(signum, lambda *_: stop_event.set())
    try:
        if role == "chief":
            outcome = run_chief(
                Path(spec["project"]), spec["given"], host=spec["host"], port=spec["port"],
                on_ready=lambda info: emit({"event": "serving", **{k: v for k, v in info.items() if k != "token"}}),
                space_ref=spec["space_ref"], data_dir=spec["data_dir"] and Path(spec["data_dir"]),
                overwrite=spec["overwrite"], progress=emit, stop_event=stop_event)
            emit({"event": "outcome", "status": outcome.status, "resumed": outcome.resumed,
                  "notes": outcome.notes, "message": outcome.message})
            return {"interrupted": 130, "stopped": 1}.get(outcome.status, 0)
        outcome = run_worker(Path(spec["project"]), spec["chief"], worker_id=spec["worker_id"],
                             data_dir=spec["data_dir"] and Path(spec["data_dir"]),
                             mixed_precision=spec["mixed_precision"], strategy=spec["strategy"],
                             progress=emit, stop_event=stop_event)
        emit({"event": "outcome", "status": outcome.status, "trials": outcome.trials,
              "message": outcome.message, "trial_id": outcome.trial_id})
        return {"interrupted": 130, "finished": 0}.get(outcome.status, 1)
    except XtuneError as error:
        emit({"event": "error", "kind": type(error).__name__ if type(error).__name__ in _ERRORS else "XtuneError",
              "message": str(error)})
        return error.exit_code
    except BaseException as error:
        emit({"event": "error", "kind": "crash", "message": f"{type(error).__name__}: {error}"})
        raise
    finally:
        with lock:
            try:
                out.close()
            except OSError:
                pass


if __name__ == "__main__":
    from xtune.search._distributed import _child_main as _main  # the module, not this __main__ copy

    sys.exit(_main(sys.argv[1:]))

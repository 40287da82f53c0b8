"""A worker: runs the trials a chief hands out, in the shared project directory.

``run_worker`` never takes the project's lock, never writes run.json and never
deletes: it reads the settings from run.json and refuses a directory without one.
It talks to the chief through ``RemoteOracle`` (KerasTuner's oracle service, every
call carrying the search's id and token, see ``xtune.search._chief``). While the
chief has nothing to hand out it sleeps (0.1 s, doubling to 0.5 s: ``IDLE_SLEEP``) instead of asking
in a tight loop; when the chief is gone it stops, leaving its trial resumable.
Like a single-process search, it ends itself between trials once its memory grew
(``recycle_mb``) and its supervisor starts it again under the same id.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import keras_tuner

from xtune._events import WaitingForChief, WorkerConnected, WorkerStarted, WorkerWaiting
from xtune.errors import ProjectError, UsageError
from xtune.search import _kt
from xtune.search._chief import (
    CLUSTER_DIR,
    IDENTIFY,
    SEARCH_KEY,
    TOKEN_KEY,
    read_chief_file,
    read_token,
    search_id,
)
from xtune.search._project import FINISHED_FILE, ProjectLock, SearchSettings, orphaned, supervisor_pid
from xtune.search._worker_request import WorkerOutcome, WorkerRequest, check_worker_id, parse_address, search_run

# A waiting worker asks again after this long, doubling up to the second. The chief ends
# when every worker has heard that the plan is done, so the cap is also its last wait.
IDLE_SLEEP = (0.1, 0.5)
RPC_TIMEOUT = 30  # seconds a worker waits for an unreachable chief before it stops (KerasTuner: 1 h)
# Once it is stopping (Ctrl-C, SIGTERM, its supervisor gone), at most this long: its trial is
# resumable whatever the chief hears, and a chief stopped first would hold the worker (and
# the next `tune search`, which waits for it) for the whole RPC_TIMEOUT.
STOPPING_RPC_TIMEOUT = 5


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
        self.worker_id: str | None = None
        self._fd: int | None = None

    @property
    def tuner_id(self) -> str:
        return f"worker-{self.worker_id}"

    def __enter__(self) -> _WorkerSlot:
        import fcntl

        folder = self.project / CLUSTER_DIR
        folder.mkdir(exist_ok=True)
        for worker_id in [self.asked] if self.asked else _default_worker_ids():
            path = folder / f"worker-{worker_id}.lock"
            deadline = time.monotonic() + ProjectLock.ORPHAN_WAIT
            grace = time.monotonic() + 1.0  # a search starting looks at each slot for an instant
            fd: int | None
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    os.close(fd)
                    fd = None
                if not self.asked:
                    break
                try:
                    owner = json.loads(path.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                # A holder whose supervisor was killed is stopping (PR_SET_PDEATHSIG): wait for it, as
                # ProjectLock does, so a search restarted at once gets its workers back.
                if (not orphaned(owner) and time.monotonic() > grace) or time.monotonic() > deadline:
                    raise ProjectError(f"worker id {worker_id} is already running on {self.project} (pid "
                                       f"{owner.get('pid', '?')} on {owner.get('host', '?')}); give another "
                                       "--worker-id") from None
                time.sleep(0.2)
            if fd is None:
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "parent": supervisor_pid(),
                                     "host": socket.gethostname()}).encode())
            self.worker_id, self._fd = worker_id, fd
            return self
        raise ProjectError(f"no free worker id in {folder}")  # pragma: no cover

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


# -- talking to the chief ------------------------------------------------------------------------


def _channel(host: str, port: int, metadata: tuple):
    """A channel to the chief whose every call carries ``metadata`` (the search's id and token)."""
    import grpc

    class Carry(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            details = details._replace(metadata=tuple(details.metadata or ()) + metadata)
            return continuation(details, request)

    options = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
               ("grpc.max_reconnect_backoff_ms", 2000)]
    target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    return grpc.intercept_channel(grpc.insecure_channel(target, options=options), Carry())


def _refusal(error, host: str, port: int, project: Path, mine: str) -> Exception | None:
    """The one-line error for a chief that refuses this worker, or None."""
    import grpc

    code = error.code() if hasattr(error, "code") else None
    if code == grpc.StatusCode.PERMISSION_DENIED:
        try:
            theirs = json.loads(error.details())
        except (TypeError, ValueError):
            theirs = {}
        return ProjectError(f"the chief at {host}:{port} serves another search ({theirs.get('project', '?')} on "
                            f"{theirs.get('host', '?')}, search {theirs.get('search_id', '?')}), not {project} "
                            f"(search {mine}); check --chief and --project")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ProjectError(f"the chief at {host}:{port} refused this worker's token ({project / CLUSTER_DIR}/token); "
                            "the worker must see the chief's project directory")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return UsageError(f"{host}:{port} answers, but it is not a tune chief")
    return None


class RemoteOracle(keras_tuner.Oracle):
    """The chief's oracle, seen from a worker: every call goes over gRPC.

    While the chief answers IDLE (open brackets wait for other workers' trials), it
    sleeps between asks instead of asking again at once. A failed call (the chief
    stopped or unreachable) raises ``ChiefLost``: the worker stops, its trial resumable.

    Args:
        calls: The chief's service (``_kt.OracleCalls``).
        objective: The search's objective (a ``keras_tuner.Objective``).
        stop_event: Set: stop waiting (``SearchInterrupted``).
        on_wait: Called once per wait, when it starts.
        sleep: ``(first, longest)`` pause between two asks.
    """

    def __init__(self, calls, objective, stop_event: threading.Event, on_wait=None, sleep=IDLE_SLEEP):
        super().__init__(objective=objective)
        self._calls = calls
        self._stop_event = stop_event
        self._on_wait = on_wait or (lambda: None)
        self._sleep = sleep
        self.current_trial = None

    def create_trial(self, tuner_id):
        from xtune.search._callbacks import SearchInterrupted

        delay, waiting = self._sleep[0], False
        while True:
            if self._stop_event.is_set():
                raise SearchInterrupted("interrupted")
            trial = self._call("create_trial", tuner_id)
            if trial.status != _kt.TrialStatus.IDLE:
                self.current_trial = trial.trial_id if trial.status == _kt.TrialStatus.RUNNING else None
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

    def save(self):  # the chief saves the oracle
        pass

    def reload(self):
        pass

    def _call(self, name, *args, **kwargs):
        import grpc

        from xtune.search._callbacks import ChiefLost

        if self._stop_event.is_set():
            self._calls.timeout = min(self._calls.timeout, STOPPING_RPC_TIMEOUT)
        try:
            return getattr(self._calls, name)(*args, **kwargs)
        except grpc.RpcError as error:
            code = error.code().name if hasattr(error, "code") else type(error).__name__
            raise ChiefLost(f"lost the chief during {name} ({code})") from None


def _connect(host: str, port: int, project: Path, run: dict, stop_event: threading.Event, on_wait):
    """Wait until the chief of this search answers at ``host:port``; return the channel, or None if finished.

    Raises:
        SearchInterrupted: ``stop_event`` was set while waiting.
        ProjectError, UsageError: The chief there refuses this worker, or it is not a chief.
    """
    import grpc

    from xtune.search._callbacks import SearchInterrupted

    mine = search_id(run)
    waiting = False
    while True:
        if stop_event.is_set():
            raise SearchInterrupted("interrupted")
        if (project / FINISHED_FILE).exists():
            return None
        token = read_token(project) or ""
        channel = _channel(host, port, ((SEARCH_KEY, mine), (TOKEN_KEY, token)))
        try:
            channel.unary_unary(IDENTIFY)(b"", timeout=2, wait_for_ready=True)
            return channel
        except grpc.RpcError as error:
            channel.close()
            refused = _refusal(error, host, port, project, mine)
            if refused is not None and not (isinstance(refused, ProjectError) and not token):
                raise refused from None
        if not waiting:  # the chief is not up yet (or has not written its token): wait for it
            on_wait()
            waiting = True
        stop_event.wait(0.5)


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
    from xtune.search._run import load_data

    stored = run.get("data") or {}
    root = stored.get("root")
    if data_dir is None and root and Path(root).is_dir():
        prepared = PreparedData.from_dict(stored)
        return load_splits(prepared, image_size=settings.image_size, batch_size=settings.batch_size,
                           seed=settings.seed)
    splits, _ = load_data(project, settings, run, data_dir)
    return splits


def run_worker(request: WorkerRequest, *, progress=None, stop_event: threading.Event | None = None,
               recycle_mb: float | None = None, epoch_backups: bool = True, tensorboard: bool = True) -> WorkerOutcome:
    """Run trials of the search in ``request.project`` that its chief hands out, until none is left.

    Trial files go into the project, which must be the chief's project directory
    (shared). A worker restarted under the same id is handed its unfinished trial
    again and resumes it at its last epoch.

    Args:
        request: The project as this machine sees it; the chief (``HOST:PORT``;
            default: the address in ``cluster/chief.json``); the worker id (default:
            the first free ``<host>-<n>``); where data is cached here (default: the
            chief's prepared copy if this machine sees it at the same path); the
            mixed precision and ``tf.distribute`` strategy of its trials.
        progress: Called with each event.
        stop_event: Set it to stop as Ctrl-C would.
        recycle_mb: End between trials once memory grew this much (status "recycle").
        epoch_backups: Per-epoch backups (mid-trial resume).
        tensorboard: Log trials for TensorBoard.

    Raises:
        ProjectError: No search in the project (no run.json), the worker id is taken,
            or the chief refuses this worker (another search, no token).
        UsageError, DataError: one-line user errors.
    """
    from xtune.search._run import stop_on_signals

    project = Path(request.project)
    run = search_run(project)
    chief = request.chief
    if chief is None:
        info = read_chief_file(project)
        if info is None:
            raise UsageError(f"give --chief HOST:PORT (no chief has announced itself in {project / CLUSTER_DIR})")
        chief = f"{info['host']}:{info['port']}"
    host, port = parse_address(chief)
    emit = progress or (lambda event: None)
    stop_event = stop_event or threading.Event()
    with stop_on_signals(stop_event), _WorkerSlot(project, request.worker_id) as slot:
        assert slot.worker_id is not None  # entering the slot took an id
        outcome = WorkerOutcome(slot.worker_id, "finished")
        emit(WorkerStarted(slot.tuner_id, str(project), f"{host}:{port}"))
        from xtune.search._callbacks import SearchInterrupted

        try:
            channel = _connect(host, port, project, run, stop_event,
                               lambda: emit(WaitingForChief(f"{host}:{port}", worker=slot.tuner_id)))
        except SearchInterrupted:
            outcome.status = "interrupted"
            return outcome
        if channel is None:
            return outcome
        try:
            _serve_trials(request, project, run, slot, channel, outcome, emit, stop_event, recycle_mb=recycle_mb,
                          epoch_backups=epoch_backups, tensorboard=tensorboard)
        finally:
            channel.close()
        return outcome


def _serve_trials(request, project, run, slot, channel, outcome, emit, stop_event, **options) -> None:
    from xtune import _atomic
    from xtune._events import TrialEnded
    from xtune._runtime import configure_devices, distribution_strategy
    from xtune.search._callbacks import ChiefLost, DiskFull, RecycleProcess, SearchInterrupted, TooManyFailures
    from xtune.search._run import make_tuner
    from xtune.search._state import objective_is_max
    from xtune.spaces import SearchSpace

    settings = SearchSettings.from_dict(run["settings"])
    space = SearchSpace.from_dict(run["space"])
    splits = _worker_splits(project, settings, run, request.data_dir and Path(request.data_dir))
    devices = configure_devices(request.mixed_precision)
    strategy_obj = distribution_strategy(request.strategy)
    emit(WorkerConnected(slot.tuner_id, devices,
                         strategy_obj.num_replicas_in_sync if strategy_obj is not None else 1))

    def counted(event):
        if isinstance(event, TrialEnded):
            outcome.trials += 1
        emit(event)

    objective = keras_tuner.Objective(settings.objective, "max" if objective_is_max(settings.objective) else "min")
    oracle = RemoteOracle(_kt.OracleCalls(channel, RPC_TIMEOUT), objective, stop_event,
                          lambda: emit(WorkerWaiting(slot.tuner_id)))
    try:
        with _kt.patched():
            tuner = make_tuner(project, settings, space, splits, oracle=oracle, emit=counted, stop_event=stop_event,
                               max_consecutive_failures=settings.max_consecutive_failures,
                               distribution_strategy=strategy_obj, tuner_id=slot.tuner_id, **options)
            tuner.search(verbose=0)
    except SearchInterrupted:
        outcome.status = "interrupted"
    except RecycleProcess as error:
        outcome.status, outcome.message = "recycle", str(error)
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
    if outcome.status not in ("finished", "recycle"):
        outcome.trial_id = oracle.current_trial

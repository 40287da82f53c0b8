"""`tune search` and `tune worker`: one request object, the right processes.

``start_search(request)`` picks the mode from one ``SearchRequest`` and runs it in
supervised child processes (``xtune._process``):

* one process: a "search" child (``run_search``);
* ``--workers N``: a "chief" child on a free loopback port and N "worker" children
  (GPUs divided among them, CPU threads split on a machine without), started together:
  a worker imports TensorFlow while the chief starts, then waits for its address;
* ``--chief``: a "chief" child that serves workers on other machines.

The parent renders their events (one view whatever the mode), restarts a child that
dies (a search resumes at its last saved epoch; a worker under the same id gets its
trial back), and on Ctrl-C stops the workers first, then the chief. ``start_worker``
runs a lone `tune worker` the same way.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from xtune._events import (
    BatchProgress,
    ChildOutcome,
    Event,
    MemoryRecycled,
    ProcessRestarted,
    SearchStarted,
    Serving,
    TrialEnded,
    TrialStarted,
    WorkersStarted,
)
from xtune._process import Child, ChildSpec, Supervisor
from xtune.errors import DataError, ProjectError, SpaceError, UsageError, XtuneError
from xtune.search._project import SearchSettings, read_run
from xtune.search._run import SearchOutcome, search_outcome

if TYPE_CHECKING:
    from xtune.search._worker_request import WorkerOutcome, WorkerRequest

_ERRORS = {cls.__name__: cls for cls in (UsageError, SpaceError, DataError, ProjectError, XtuneError)}
WORKER_GRACE = 30.0  # seconds finished workers get to hear from the chief that the plan is done


@dataclass(frozen=True)
class SearchRequest:
    """Everything `tune search` was asked, parsed once (the spec of every child).

    Attributes:
        project: The search directory.
        given: Settings given explicitly (``SearchSettings`` field -> value).
        space_ref: ``--space`` (a file or built-in name), or None.
        data_dir, archive: Where prepared data is cached; a downloaded Kaggle archive.
        overwrite: Start over (remove what xtune wrote in the project first).
        mixed_precision, strategy: Of each trial ("auto"/"on"/"off"; "none"/"mirrored").
        workers: Worker processes on this machine (None: one search process).
        gpus: GPU numbers to divide among the workers.
        serve: Serve the search to workers on other machines (``--chief``).
        host, port: Where a serving chief listens.
        warm_start, warm_start_top: A new search starts with the ``warm_start_top``
            best configurations of the search in ``warm_start``.
    """

    project: str
    given: dict = field(default_factory=dict)
    space_ref: str | None = None
    data_dir: str | None = None
    archive: str | None = None
    overwrite: bool = False
    mixed_precision: str = "auto"
    strategy: str = "none"
    workers: int | None = None
    gpus: tuple | None = None
    serve: bool = False
    host: str = "0.0.0.0"
    port: int | None = None
    warm_start: str | None = None
    warm_start_top: int = 5
    auto: str | None = None  # why these workers, when the machine chose them (not --workers)

    @property
    def path(self) -> Path:
        return Path(self.project)

    @property
    def data_dir_path(self) -> Path | None:
        return Path(self.data_dir) if self.data_dir is not None else None

    @property
    def archive_path(self) -> Path | None:
        return Path(self.archive) if self.archive is not None else None

    @property
    def mode(self) -> str:
        """"chief" (serve), "workers" (a chief and workers here) or "single"."""
        return "chief" if self.serve else ("workers" if self.workers else "single")

    @property
    def warm(self) -> tuple | None:
        return (self.warm_start, self.warm_start_top) if self.warm_start else None

    def resumed(self) -> SearchRequest:
        """The same request for a restart: never overwrite twice, never warm-start twice."""
        return dataclasses.replace(self, overwrite=False, warm_start=None)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["given"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.given.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SearchRequest:
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if data.get("gpus") is not None:
            data["gpus"] = tuple(data["gpus"])
        return cls(**data)

    def check(self) -> None:
        """Refuse contradictory options (UsageError)."""
        if self.serve and (self.workers or self.gpus or self.strategy != "none"):
            raise UsageError("the chief trains nothing: give --gpus and --strategy to each `tune worker` "
                             "(and --workers is for workers on this machine, without --chief)")
        if not self.serve and self.port is not None:
            raise UsageError("--host and --port are for --chief (--workers picks a free local port)")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be at least 1; got {self.workers}")


def parse_gpus(text: str | None) -> tuple | None:
    """``--gpus 0,1,3`` -> ("0", "1", "3"); UsageError if malformed."""
    if text is None:
        return None
    gpus = [g.strip() for g in str(text).split(",") if g.strip()]
    if not gpus or any(not g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise UsageError(f"--gpus must be distinct GPU numbers like 0,1; got {text!r}")
    return tuple(gpus)


def assign_gpus(gpus, workers: int) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` of each worker: the GPUs divided in contiguous groups.

    4 GPUs, 2 workers: "0,1" and "2,3" (``--strategy mirrored`` trains each trial on
    both of a worker's). Fewer GPUs than workers: they are shared in turn.
    No GPUs given: None (each worker sees what the machine has).
    """
    if not gpus:
        return [None] * workers
    gpus = list(gpus)
    if len(gpus) < workers:
        return [gpus[k % len(gpus)] for k in range(workers)]
    size, extra = divmod(len(gpus), workers)
    groups: list[str | None] = []
    start = 0
    for k in range(workers):
        end = start + size + (1 if k < extra else 0)
        groups.append(",".join(gpus[start:end]))
        start = end
    return groups


def visible_gpus() -> int:
    """NVIDIA GPUs this process would see, without loading TensorFlow (0 when unknown)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([g for g in visible.split(",") if g.strip() and g.strip() != "-1"])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def auto_workers(image_size: int | None, cores: int | None = None, gpus: int | None = None,
                 memory_gb: float | None = None) -> tuple[int, str]:
    """How many trials to run at once on this machine, and why (what `tune search` says first).

    On a CPU: one worker per core, up to four (each with an equal share of the
    threads; measured on 2 cores: 2 workers run 1.6-1.8x the trials per hour of one
    process, as each trial's fixed costs use one core), and no more than the memory
    holds (about 2 GB per worker). On one GPU: two workers when the models are small
    (``image_size`` up to 64, with memory growth on), else one. On several GPUs: one
    worker per GPU.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = visible_gpus() if gpus is None else gpus
    if memory_gb is None:
        try:
            memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        except (ValueError, OSError, AttributeError):
            memory_gb = 8.0
    by_memory = max(1, int(memory_gb // 2))
    if gpus > 1:
        return min(gpus, by_memory), f"one per GPU ({gpus} GPUs)"
    if gpus == 1:
        if image_size is not None and image_size <= 64:
            return min(2, by_memory), "two on the GPU: small models"
        return 1, "one GPU"
    workers = max(1, min(cores, 4, by_memory))
    return workers, f"{cores} CPU core(s)"


def _threads_env(threads: int | None) -> dict:
    if not threads:
        return {}
    return {name: str(threads) for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")}


class _Launch:
    """The parent's side of one `tune search`: which children, what their events mean."""

    def __init__(self, request: SearchRequest, progress, stop_event, on_output):
        self.request = request
        self.progress = progress or (lambda event: None)
        self.supervisor = Supervisor(self._on_event, on_output, self._on_done, stop_event)
        self.primary: Child | None = None
        self.workers: list[Child] = []
        self.running: dict[str, str] = {}  # worker name -> trial id
        self.fatal: XtuneError | None = None
        self.stopped: str | None = None
        self.groups = assign_gpus(request.gpus, request.workers or 0)
        self._grace: threading.Timer | None = None
        self.address: str | None = None  # the chief's, once it serves
        self.threads = None
        if request.workers and not request.gpus:
            self.threads = max(1, (os.cpu_count() or 1) // request.workers)

    def run(self) -> SearchOutcome:
        request, spec = self.request, self.request.to_dict()
        restart = self.request.resumed().to_dict()
        if request.mode == "workers":
            spec.update(host="127.0.0.1", port=0)
            restart.update(host="127.0.0.1", port=0)
        env = {"CUDA_VISIBLE_DEVICES": ""} if request.mode != "single" else {}  # a chief trains nothing
        role = "search" if request.mode == "single" else "chief"
        log = request.path / "cluster" / "chief.log" if request.mode == "workers" else None
        will_train = self._will_train()  # raises here, at once, what the child would refuse
        self.primary = self.supervisor.start(ChildSpec(role, role, spec, restart, env, log, stage=1))
        if will_train and request.mode == "workers":
            self._start_workers(None)  # beside the chief: their imports overlap its start
        try:
            self.supervisor.run()
        except KeyboardInterrupt:  # pragma: no cover - the supervisor handles signals itself
            self.supervisor.kill()
        finally:
            if self._grace is not None:
                self._grace.cancel()
        return self._outcome()

    # -- events ----------------------------------------------------------------------------

    def _on_event(self, child, event: Event) -> None:
        if child is self.primary:
            if isinstance(event, Serving) and self.request.mode == "workers":
                self._serve_workers(event.port)
                return
            if isinstance(event, SearchStarted) and self.request.mode == "workers":
                event = event.replace(workers=[{"worker": f"worker-{k + 1}", "gpus": g, "threads": self.threads,
                                                "auto": self.request.auto} for k, g in enumerate(self.groups)])
            elif isinstance(event, TrialStarted) and event.worker:
                self.running[event.worker] = event.trial_id
            elif isinstance(event, TrialEnded) and event.worker:
                self.running.pop(event.worker, None)
            if not isinstance(event, ChildOutcome):
                self.progress(event)
            return
        # A worker: its trials are reported by the chief; its restarts, memory recycling and batches are news.
        if isinstance(event, ProcessRestarted):
            self.progress(event.replace(trial_id=self.running.get(child.name)))
        elif isinstance(event, (BatchProgress, MemoryRecycled)):
            self.progress(event)

    def _will_train(self) -> bool:
        """Whether the chief will hand out trials, judged here in a fraction of a second.

        The checks a search or chief process makes first (settings against run.json, a
        folder that is not a search, a warm start) run here too, so a refusal is one line
        before any process starts TensorFlow; a finished search starts no workers.
        """
        from xtune.search._run import _resolve
        from xtune.search._state import load_project

        request = self.request
        settings, _, run, _ = _resolve(request.path, request.given, request.space_ref, request.overwrite,
                                       request.warm)
        if run is None or SearchSettings.from_dict(run["settings"]).max_trials != settings.max_trials:
            return True  # a new search, or an extension (as record_extension tells them apart)
        return not load_project(request.path).done

    def _start_workers(self, address: str | None) -> None:
        """Start the workers; without the chief's address yet, they import TensorFlow and wait for it."""
        from xtune.search._worker_request import WorkerRequest

        request = self.request
        assert request.workers is not None  # "workers" mode
        for k in range(1, request.workers + 1):
            spec = WorkerRequest(str(request.path), address, str(k), request.data_dir, request.mixed_precision,
                                 request.strategy).to_dict()
            env = _threads_env(self.threads)
            if self.groups[k - 1] is not None:
                env["CUDA_VISIBLE_DEVICES"] = self.groups[k - 1]
            log = request.path / "cluster" / f"worker-{k}.log"
            waits = address is None
            self.workers.append(self.supervisor.start(ChildSpec(f"worker-{k}", "worker",
                                                                {**spec, "await_chief": True} if waits else spec,
                                                                None, env, log, stage=0, stdin=waits)))

    def _serve_workers(self, port: int) -> None:
        """The chief serves: each worker gets its address (and keeps it for a restart)."""
        self.address = f"127.0.0.1:{port}"
        if not self.workers:  # none started beside it (a search that looked finished): with the address
            self._start_workers(self.address)
        else:
            for worker in self.workers:
                spec = {k: v for k, v in worker.spec.spec.items() if k != "await_chief"}
                worker.spec.spec = {**spec, "chief": self.address}
                worker.send({"chief": self.address})  # one that died meanwhile restarts with it
        assert self.primary is not None  # the chief that serves them
        self.progress(WorkersStarted({"pid": self.primary.pid, "address": self.address},
                                     [{"worker": w.name, "pid": w.pid, "gpus": g, "threads": self.threads}
                                      for w, g in zip(self.workers, self.groups)]))

    def _on_done(self, child: Child) -> None:
        if child is self.primary:
            if self.address is None:  # it never served: its workers, still waiting, did nothing
                self.supervisor.stop()
                for worker in self.workers:
                    worker.signal(signal.SIGKILL)
                return
            finished = child.outcome is not None and child.outcome.status in ("finished", "already finished")
            if finished and any(not w.done for w in self.workers):
                # Each is told at its next ask. A daemon, cancelled when the launch ends: a
                # waiting timer thread kept `tune search` alive for 30 s after it finished.
                self._grace = threading.Timer(WORKER_GRACE, self.supervisor.stop)
                self._grace.daemon = True
                self._grace.start()
            else:
                self.supervisor.stop()
            return
        status = child.outcome.status if child.outcome else None
        if status == "finished" or (self.address is None and self.supervisor._stopping):
            return  # (a worker stopped before its chief served has nothing to say)
        if child.error is not None and child.error.error in _ERRORS:
            self.fatal = _ERRORS[child.error.error](child.error.message)
        elif status == "stopped":
            assert child.outcome is not None  # the status is the outcome's
            self.stopped = child.outcome.details.get("message")
        elif status in ("interrupted", "chief lost") and self.supervisor._stopping:
            return
        else:
            self.fatal = XtuneError(f"{child.name} stopped ({child.gave_up or child.last_line() or 'no output'}); "
                                    f"see {child.spec.log}")
        self.supervisor.stop()

    # -- the outcome -----------------------------------------------------------------------

    def _outcome(self) -> SearchOutcome:
        primary, project = self.primary, self.request.path
        if self.fatal is not None:
            raise self.fatal
        assert primary is not None  # run() started it
        if primary.error is not None:
            raise _ERRORS.get(primary.error.error, XtuneError)(primary.error.message)
        if primary.outcome is None:
            why = primary.gave_up or f"{primary.last_line() or 'no output'}"
            raise XtuneError(f"the {primary.name} process stopped unexpectedly ({why}); resume with: {self.resume()}")
        status, details = primary.outcome.status, primary.outcome.details
        if self.stopped is not None and status == "interrupted":
            status, details = "stopped", {**details, "message": self.stopped}
        try:
            plan = SearchSettings.from_dict(read_run(project)["settings"]).plan()
        except ProjectError:
            raise XtuneError(f"the search in {project} did not start") from None
        outcome = search_outcome(project, status, plan, details.get("resumed", False), details.get("notes"),
                                 details.get("message"))
        if self.request.mode != "single":
            outcome.resume = self.resume()
        return outcome

    def resume(self) -> str:
        command = f"tune search --project {_quote(self.request.project)}"
        if self.request.mode == "workers" and not self.request.auto:
            command += f" --workers {self.request.workers}"
            command += f" --gpus {','.join(self.request.gpus)}" if self.request.gpus else ""
        elif self.request.mode == "chief":
            command += " --chief"
        return command


def _quote(text) -> str:
    import shlex

    return shlex.quote(str(text))


def start_search(request: SearchRequest, progress: Callable[[Event], None] | None = None, *,
                 stop_event: threading.Event | None = None,
                 on_output: Callable[[Child, str, bool], None] | None = None) -> SearchOutcome:
    """Run the search of ``request`` in supervised child processes, in the mode it asks for.

    Args:
        request: What `tune search` was asked.
        progress: Receives every event of the search (``xtune._events``), whatever the mode.
        stop_event: Set it to stop as Ctrl-C would.
        on_output: Receives ``(child, line, is_stderr)`` of a child's own output
            (warnings, a crash's last words); children with a log file write there.

    Returns:
        A ``SearchOutcome``.

    Raises:
        UsageError, ProjectError, DataError: one-line user errors, from any process.
    """
    request.check()
    if request.workers is None and not request.serve:
        request = _with_auto_workers(request)
    elif request.workers == 1 and not request.gpus:
        request = dataclasses.replace(request, workers=None)  # one worker is one process: no chief needed
    return _Launch(request, progress, stop_event, on_output).run()


def _with_auto_workers(request: SearchRequest) -> SearchRequest:
    """The request with the workers this machine runs best (``auto_workers``); one means one process."""
    image_size = request.given.get("image_size")
    if image_size is None and (request.path / "run.json").exists() and not request.overwrite:
        try:
            image_size = read_run(request.path)["settings"].get("image_size")
        except (ProjectError, KeyError):
            image_size = None
    workers, why = auto_workers(image_size if image_size is not None else 180)
    if workers <= 1:
        return dataclasses.replace(request, workers=None)
    gpus = request.gpus
    if gpus is None and visible_gpus() > 1:  # one each
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [g.strip() for g in visible.split(",") if g.strip()] if visible else [str(i) for i in range(visible_gpus())]
        gpus = tuple(ids[:workers])
    return dataclasses.replace(request, workers=workers, gpus=gpus, auto=why)


def start_worker(request: WorkerRequest, progress: Callable[[Event], None] | None = None, *,
                 stop_event: threading.Event | None = None,
                 on_output: Callable[[Child, str, bool], None] | None = None) -> WorkerOutcome:
    """Run `tune worker` in a supervised child process (restarted after a crash or to release memory).

    Returns:
        A ``WorkerOutcome``.
    """
    from xtune.search._worker_request import WorkerOutcome, search_run

    search_run(request.project)  # no search there: one line now, not after a TensorFlow start
    result = {}

    def on_done(child):
        result["child"] = child

    supervisor = Supervisor(lambda child, event: progress(event) if progress else None, on_output, on_done,
                            stop_event)
    supervisor.start(ChildSpec("worker", "worker", request.to_dict(), None, {}, None, stage=1))
    supervisor.run()
    child = result["child"]
    if child.error is not None:
        raise _ERRORS.get(child.error.error, XtuneError)(child.error.message)
    if child.outcome is None:
        raise XtuneError(f"the worker process stopped unexpectedly ({child.gave_up or child.last_line() or 'no output'})")
    details = child.outcome.details
    return WorkerOutcome(details.get("worker_id") or request.worker_id or "?", child.outcome.status,
                         details.get("trials", 0), details.get("message"), details.get("trial_id"))


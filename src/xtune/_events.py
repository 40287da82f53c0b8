"""Typed events: what a search, its processes and an export report while they run.

The library emits these; the CLI renders them (``xtune.cli._render``); between
processes they travel as one JSON object per line (``to_dict``/``from_dict``) on a
pipe (``xtune._process``). Every field is JSON-ready.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class Event:
    """Base class: ``kind`` names the event on the wire."""

    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict:
        return {"event": self.kind, **dataclasses.asdict(self)}

    def replace(self, **changes) -> Event:
        return dataclasses.replace(self, **changes)


_KINDS: dict[str, type[Event]] = {}


def _event(cls):
    _KINDS[cls.kind] = cls
    return cls


def from_dict(data: dict) -> Event | None:
    """The event a ``to_dict`` made (None for an unknown kind: a newer sender)."""
    cls = _KINDS.get(data.get("event", ""))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


# -- a search --------------------------------------------------------------------------------------


@_event
@dataclass(frozen=True)
class SearchStarted(Event):
    """A search starts or resumes (``plan``: ``HyperbandPlan.to_dict()``)."""

    kind: ClassVar[str] = "search_start"
    project: str
    resumed: bool
    plan: dict
    settings: dict
    devices: dict | None = None
    notes: list = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    epochs_done: int = 0
    workers: list = field(default_factory=list)  # [{"worker", "gpus", "threads"}] with several


@_event
@dataclass(frozen=True)
class TrialStarted(Event):
    kind: ClassVar[str] = "trial_start"
    trial_id: str
    values: dict
    bracket: int | None
    round: int | None
    epochs: int | None
    initial_epoch: int = 0
    parent: str | None = None
    resumed_at: int | None = None  # the epoch a resumed trial continues from
    worker: str | None = None


@_event
@dataclass(frozen=True)
class BatchProgress(Event):
    """Inside an epoch (throttled): ``step`` of ``steps`` training batches done."""

    kind: ClassVar[str] = "batch"
    trial_id: str | None
    epoch: int
    epochs: int
    step: int
    steps: int
    worker: str | None = None


@_event
@dataclass(frozen=True)
class EpochEnded(Event):
    """An epoch of a trial (or of an export's training, ``trial_id`` None) ended."""

    kind: ClassVar[str] = "epoch_end"
    trial_id: str | None
    epoch: int
    epochs: int
    seconds: float | None
    logs: dict
    worker: str | None = None


@_event
@dataclass(frozen=True)
class TrialRetry(Event):
    kind: ClassVar[str] = "trial_retry"
    trial_id: str
    reason: str | None
    worker: str | None = None


@_event
@dataclass(frozen=True)
class TrialEnded(Event):
    kind: ClassVar[str] = "trial_end"
    trial_id: str
    status: str  # COMPLETED or FAILED
    score: float | None
    reason: str | None = None
    seconds: float | None = None
    best_epoch: int | None = None
    params: int | None = None
    worker: str | None = None


@_event
@dataclass(frozen=True)
class MemoryRecycled(Event):
    """A process ends between trials to release memory; a fresh one goes on."""

    kind: ClassVar[str] = "recycle"
    rss_mb: float
    grown_mb: float
    worker: str | None = None


# -- processes ----------------------------------------------------------------------------------------


@_event
@dataclass(frozen=True)
class Serving(Event):
    """A chief serves the search to workers."""

    kind: ClassVar[str] = "serving"
    host: str
    port: int
    address: str
    project: str


@_event
@dataclass(frozen=True)
class WorkersStarted(Event):
    kind: ClassVar[str] = "workers_started"
    chief: dict
    workers: list


@_event
@dataclass(frozen=True)
class ProcessRestarted(Event):
    """A child process died (a signal) or ended to release memory, and runs again."""

    kind: ClassVar[str] = "process_restart"
    name: str
    old_pid: int
    pid: int
    reason: str
    trial_id: str | None = None


@_event
@dataclass(frozen=True)
class WaitingForLock(Event):
    """The project is held by a process that is stopping (its parent died): waiting for it."""

    kind: ClassVar[str] = "waiting_for_lock"
    pid: int | None
    host: str | None
    seconds: float


@_event
@dataclass(frozen=True)
class WorkerStarted(Event):
    kind: ClassVar[str] = "worker_start"
    worker: str
    project: str
    chief: str


@_event
@dataclass(frozen=True)
class WaitingForChief(Event):
    kind: ClassVar[str] = "waiting_for_chief"
    chief: str
    worker: str | None = None


@_event
@dataclass(frozen=True)
class WorkerConnected(Event):
    kind: ClassVar[str] = "worker_ready"
    worker: str
    devices: dict
    replicas: int = 1


@_event
@dataclass(frozen=True)
class WorkerWaiting(Event):
    """The open brackets wait for other workers' trials."""

    kind: ClassVar[str] = "waiting"
    worker: str


@_event
@dataclass(frozen=True)
class ChildOutcome(Event):
    """How a child process's part ended (its last event)."""

    kind: ClassVar[str] = "outcome"
    status: str
    details: dict = field(default_factory=dict)


@_event
@dataclass(frozen=True)
class ChildError(Event):
    """A child process stopped on an error: a user error (``XtuneError`` subclass name) or a crash."""

    kind: ClassVar[str] = "error"
    error: str
    message: str


# -- an export -------------------------------------------------------------------------------------------


@_event
@dataclass(frozen=True)
class ExportStarted(Event):
    kind: ClassVar[str] = "export_start"
    name: str
    out: str
    retrain: bool
    epochs: int | None
    train_on: str
    trial_id: str | None
    config: dict
    sizes: dict


@_event
@dataclass(frozen=True)
class ExportPhase(Event):
    kind: ClassVar[str] = "phase"
    phase: str
    message: str


@_event
@dataclass(frozen=True)
class ExportEnded(Event):
    kind: ClassVar[str] = "export_end"
    out: str
    test: dict
    comparison: dict


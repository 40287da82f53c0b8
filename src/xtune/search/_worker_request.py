"""What a worker is asked and what it did: light, for the processes that only start workers.

``tune worker`` and a launcher with ``--workers`` build a ``WorkerRequest`` and read a
``WorkerOutcome``; the worker itself (``xtune.search._worker``) imports TensorFlow and
KerasTuner. Kept apart so that the launcher never does: it runs beside the chief and the
workers, and a fourth TensorFlow start on a 2-core machine cost every search about
4 s of CPU at the moment the others start theirs (docs/ARCHITECTURE.md, "The process model").
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from xtune.errors import ProjectError, UsageError

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


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


@dataclass(frozen=True)
class WorkerRequest:
    """What a worker process is asked to do (``tune worker`` or a local launcher)."""

    project: str
    chief: str | None = None
    worker_id: str | None = None
    data_dir: str | None = None
    mixed_precision: str = "auto"
    strategy: str = "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkerRequest:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class WorkerOutcome:
    """What a call of ``run_worker`` did.

    Attributes:
        worker_id: The worker's id (as given, or the one picked).
        status: "finished" (nothing left to run), "interrupted" (Ctrl-C / SIGTERM),
            "stopped" (too many failures in a row), "chief lost" or "recycle".
        trials: Trials this worker ended.
        message: Why it stopped (for "stopped" and "chief lost").
        trial_id: The trial it was running when it stopped, if any.
    """

    worker_id: str
    status: str
    trials: int = 0
    message: str | None = None
    trial_id: str | None = None


def search_run(project: str | Path) -> dict:
    """The run.json of the search a worker joins; a worker never starts a search.

    Raises:
        ProjectError: No search there (no run.json), in one line that says what to do.
    """
    from xtune.search._project import read_run

    try:
        return read_run(Path(project))
    except ProjectError as error:
        raise ProjectError(f"{error}: start the search's chief first (tune search --project DIR --chief)") from None

"""A search directory: its settings (run.json) and its lock. (Reading it: ``_state``.)

```
runs/NAME/
  run.json          settings, space, data, versions: written once, read on resume
  .xtune-search     the marker: xtune made this folder (see xtune._owned)
  .lock             held (flock) by the one process searching it
  oracle.json, tuner0.json, trial_NNNN/trial.json     KerasTuner's state (atomic)
  trial_NNNN/xtune.json                               our record of the trial
  trial_NNNN/checkpoint.weights.h5                    best epoch (KerasTuner's)
  trial_NNNN/backup/                                  per-epoch backup while running
  logs/NNNN/                                          TensorBoard
  finished.json     written when the plan is done
```
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import json
import os
import platform
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xtune import _atomic
from xtune.errors import ProjectError, UsageError
from xtune.search._plan import HyperbandPlan, hyperband_plan

if TYPE_CHECKING:
    from xtune._events import WaitingForLock
    from xtune.spaces._budget import Budget

RUN_FILE = "run.json"
FINISHED_FILE = "finished.json"
LOCK_FILE = ".lock"
RUN_FORMAT = 1


@dataclass(frozen=True)
class SearchSettings:
    """Everything that defines a search; stored in run.json and checked on resume.

    Args:
        data: The data source (``demo``, ``kaggle:dogs-vs-cats`` or a folder).
        image_size: Square input size (the book's 180).
        batch_size: Batch size (the book's 32).
        max_trials: Upper bound on trials, promotions included (see ``hyperband_plan``).
        max_epochs: Epochs of one full training.
        factor: Hyperband's reduction factor.
        objective: The metric to maximize (``val_accuracy``) or minimize (``val_loss``).
        seed: Seeds hyperparameter draws, weights, random layers and data order.
        max_consecutive_failures: Stop after this many failed trials in a row.
        validation_fraction, test_fraction, split_seed: How a folder of class
            sub-folders is split (see ``xtune.data.prepare_data``).
        kaggle_split: Images per class for train, validation, test of
            kaggle:dogs-vs-cats (the book's 1000, 500, 1000).
        max_image_bytes: Image files larger than this are skipped unread
            (``xtune.data.MAX_IMAGE_BYTES``).
        max_params, max_flops: The size budget of every configuration tried (per
            image, at ``image_size``); over it, a configuration is drawn again.
        brackets_per_iteration: Fixed by an extension (see ``hyperband_plan``).
    """

    data: str
    image_size: int = 180
    batch_size: int = 32
    max_trials: int = 50
    max_epochs: int = 100
    factor: int = 3
    objective: str = "val_accuracy"
    seed: int = 1337
    max_consecutive_failures: int = 10
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 1337
    kaggle_split: tuple[int, int, int] = (1000, 500, 1000)
    max_image_bytes: int = 64 << 20
    max_params: int | None = None
    max_flops: int | None = None
    brackets_per_iteration: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "kaggle_split", tuple(self.kaggle_split))

    def data_options(self) -> dict:
        """The keyword arguments of ``prepare_data`` that name the prepared copy."""
        return {"validation_fraction": self.validation_fraction, "test_fraction": self.test_fraction,
                "split_seed": self.split_seed, "kaggle_split": self.kaggle_split,
                "max_image_bytes": self.max_image_bytes}

    def plan(self) -> HyperbandPlan:
        return hyperband_plan(self.max_trials, self.max_epochs, self.factor, self.brackets_per_iteration)

    def budget(self) -> Budget:
        """The size budget (``xtune.spaces.Budget``)."""
        from xtune.spaces._budget import Budget

        return Budget(self.max_params, self.max_flops)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SearchSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def library_versions() -> dict:
    """Versions that a run.json records (read from package metadata, no imports)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("xtune", "keras", "keras-tuner", "tensorflow", "tensorflow-cpu", "jax"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    versions["keras_backend"] = os.environ.get("KERAS_BACKEND", "tensorflow")
    return versions


def write_run(project: Path, settings: SearchSettings, space: dict, data: dict | None, extra: dict | None = None) -> dict:
    """Write run.json (once, atomically; an extension adds to it) and return its content."""
    run = {
        "format": RUN_FORMAT,
        "search_id": uuid.uuid4().hex,  # who a chief serves (workers of another search are refused)
        "created": _now(),
        "settings": settings.to_dict(),
        "space": space,
        "data": data,
        "versions": library_versions(),
        **(extra or {}),
    }
    _atomic.write_json(Path(project) / RUN_FILE, run)
    return run


def read_run(project: Path) -> dict:
    """run.json of ``project``; ProjectError if it is missing or damaged."""
    path = Path(project) / RUN_FILE
    if not path.exists():
        raise ProjectError(f"{project} is not a tune search (no {RUN_FILE})")
    try:
        run = _atomic.read_json(path)
        SearchSettings.from_dict(run["settings"])
    except (ValueError, KeyError, TypeError) as error:
        raise ProjectError(f"{path} is damaged ({error}); restore it, or start over with --overwrite") from None
    return run


def settings_conflicts(stored: SearchSettings, given: dict) -> list[tuple[str, Any, Any]]:
    """(name, given, stored) for each explicitly given setting that differs from run.json."""
    out = []
    for name, value in given.items():
        if hasattr(stored, name) and getattr(stored, name) != value:
            out.append((name, value, getattr(stored, name)))
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


# -- lock ------------------------------------------------------------------------------

CLUSTER_DIR = "cluster"  # a distributed search's files: the token, the chief's address, worker slots


def _holder(path: Path) -> dict | None:
    """What the holder of the lock file ``path`` wrote of itself; None when nobody holds it."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # free (closing the descriptor lets go of it again)
    except OSError:
        try:
            return json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
    finally:
        os.close(fd)


class ProjectLock:
    """An exclusive lock on a search directory (``flock`` on ``.lock``).

    The kernel drops the lock when its process dies, so a lock left by a killed
    search never blocks. The file holds the owner (pid, its parent's pid, host,
    start) for messages. A holder whose parent is gone (a search process whose
    supervisor was killed: it stops at its next batch) is waited for, up to
    ``ORPHAN_WAIT`` seconds, so a job scheduler that restarts a killed search at
    once resumes it instead of being refused.

    Args:
        project: The search directory (created if missing).
        on_wait: Called once with a ``WaitingForLock`` event when it waits.
    """

    ORPHAN_WAIT = 180.0

    def __init__(self, project: Path, on_wait: Callable[[WaitingForLock], None] | None = None):
        self.project = Path(project)
        self.path = self.project / LOCK_FILE
        self.on_wait = on_wait or (lambda event: None)
        self._fd: int | None = None

    def acquire(self) -> ProjectLock:
        import time

        try:
            self.project.mkdir(parents=True, exist_ok=True)
            fd = self._try()
        except OSError as error:
            raise ProjectError(f"cannot write in {self.project} ({error.strerror or error}); "
                               "make it writable or choose another --project") from None
        deadline, told = None, False
        while fd is None:
            owner = lock_owner(self.project) or {}
            if not orphaned(owner):
                self._refuse(owner)
            if deadline is None:
                deadline = time.monotonic() + self.ORPHAN_WAIT
            if not told:
                from xtune._events import WaitingForLock

                self.on_wait(WaitingForLock(owner.get("pid"), owner.get("host"), self.ORPHAN_WAIT))
                told = True
            if time.monotonic() > deadline:
                self._refuse(owner)
            time.sleep(0.2)
            fd = self._try()
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "parent": supervisor_pid(), "host": socket.gethostname(),
                                 "since": _now()}).encode())
        os.fsync(fd)
        self._fd = fd
        self._wait_for_stopping_workers(told)
        return self

    def _wait_for_stopping_workers(self, told: bool) -> None:
        """Wait for the workers of a killed search that are still finishing their batch.

        Their chief let go of the project first (it does not train), but such a worker
        may still write its trial's backup and record: a trial handed out again before it
        stops would be trained twice at once, and its saved epochs lost (seen in the kill
        test). Live workers (their parent alive: a ``tune worker`` someone started) are
        not waited for; they join this search.
        """
        import time

        deadline = time.monotonic() + self.ORPHAN_WAIT
        for path in sorted((self.project / CLUSTER_DIR).glob("worker-*.lock")):
            while time.monotonic() < deadline:
                owner = _holder(path)
                if owner is None or not orphaned(owner):
                    break
                if not told:
                    from xtune._events import WaitingForLock

                    self.on_wait(WaitingForLock(owner.get("pid"), owner.get("host"), self.ORPHAN_WAIT))
                    told = True
                time.sleep(0.2)

    def _try(self) -> int | None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            return None
        return fd

    def _refuse(self, owner: dict):
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, since {owner.get('since', '?')}"
        raise ProjectError(f"{self.project} is being searched by another tune process ({who}); "
                           "wait for it to finish or stop it (Ctrl-C) first")

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


_SUPERVISOR: int | None = None


def set_supervisor(pid: int) -> None:
    """Record the pid of the process that started this one (a search child's supervisor)."""
    global _SUPERVISOR
    _SUPERVISOR = int(pid)


def supervisor_pid() -> int:
    """The process whose death means this one is stopping: the supervisor that started it.

    ``os.getppid()`` is not enough: a child whose supervisor was killed before it took
    a lock is already re-parented (to init), and a lock naming pid 1 as its parent would
    never be recognised as an orphan's.
    """
    return _SUPERVISOR if _SUPERVISOR is not None else os.getppid()


def orphaned(owner: dict) -> bool:
    """Whether a lock holder on this machine lost the process that started it (it is stopping)."""
    parent = owner.get("parent")
    if owner.get("host") != socket.gethostname() or not parent or parent == 1:
        return False
    try:
        os.kill(int(parent), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    try:  # alive, but maybe no longer the holder's parent (the holder was re-parented)
        with open(f"/proc/{int(owner['pid'])}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1]) != int(parent)
    except (OSError, ValueError, IndexError, KeyError):
        return False


def lock_owner(project: Path) -> dict | None:
    """The owner of a *held* lock on ``project``, or None if nobody holds it."""
    import fcntl

    path = Path(project) / LOCK_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            try:
                return json.loads(path.read_text() or "{}")
            except ValueError:
                return {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_image_size(image_size: int) -> None:
    from xtune.spaces import MIN_IMAGE_SIZE

    if image_size < MIN_IMAGE_SIZE:
        raise UsageError(f"--image-size must be at least {MIN_IMAGE_SIZE}; got {image_size}")

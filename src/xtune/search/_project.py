"""A search directory: its settings (run.json), its lock, and a read-only view of it.

```
runs/NAME/
  run.json          settings, space, data, versions: written once, read on resume
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
from dataclasses import dataclass, field
from pathlib import Path

from xtune import _atomic
from xtune.errors import ProjectError, UsageError
from xtune.search._plan import HyperbandPlan, hyperband_plan

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

    def __post_init__(self):
        object.__setattr__(self, "kaggle_split", tuple(self.kaggle_split))

    def data_options(self) -> dict:
        """The keyword arguments of ``prepare_data`` that name the prepared copy."""
        return {"validation_fraction": self.validation_fraction, "test_fraction": self.test_fraction,
                "split_seed": self.split_seed, "kaggle_split": self.kaggle_split}

    def plan(self) -> HyperbandPlan:
        return hyperband_plan(self.max_trials, self.max_epochs, self.factor)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SearchSettings":
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


def write_run(project: Path, settings: SearchSettings, space: dict, data: dict | None) -> dict:
    """Write run.json (once, atomically) and return its content."""
    run = {
        "format": RUN_FORMAT,
        "created": _now(),
        "settings": settings.to_dict(),
        "space": space,
        "data": data,
        "versions": library_versions(),
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


def settings_conflicts(stored: SearchSettings, given: dict) -> list[tuple[str, object, object]]:
    """(name, given, stored) for each explicitly given setting that differs from run.json."""
    out = []
    for name, value in given.items():
        if hasattr(stored, name) and getattr(stored, name) != value:
            out.append((name, value, getattr(stored, name)))
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


# -- lock ------------------------------------------------------------------------------


class ProjectLock:
    """An exclusive lock on a search directory (``flock`` on ``.lock``).

    The kernel drops the lock when its process dies, so a lock left by a killed
    search never blocks. The file holds the owner (pid, host, start) for messages.
    """

    def __init__(self, project: Path):
        self.project = Path(project)
        self.path = self.project / LOCK_FILE
        self._fd = None

    def acquire(self) -> "ProjectLock":
        import fcntl

        self.project.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            owner = lock_owner(self.project) or {}
            who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, since {owner.get('since', '?')}"
            raise ProjectError(
                f"{self.project} is being searched by another tune process ({who}); "
                "wait for it to finish or stop it (Ctrl-C) first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

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


# -- reading a search directory -----------------------------------------------------------


@dataclass
class TrialState:
    """One trial as stored on disk (KerasTuner's trial.json plus our record)."""

    trial_id: str
    status: str
    score: float | None
    values: dict
    bracket: int | None
    round: int | None
    epochs: int | None
    initial_epoch: int
    parent: str | None
    record: dict = field(default_factory=dict)
    backup: dict | None = None
    message: str | None = None


@dataclass
class ProjectState:
    """A read-only view of a search directory; reading it changes nothing."""

    path: Path
    run: dict
    settings: SearchSettings
    plan: HyperbandPlan
    trials: list[TrialState]
    oracle: dict | None
    finished: dict | None
    owner: dict | None
    problems: list[str]

    @property
    def running(self) -> bool:
        return self.owner is not None

    @property
    def ended(self) -> list[TrialState]:
        return [t for t in self.trials if t.status in ("COMPLETED", "FAILED")]

    @property
    def interrupted(self) -> list[TrialState]:
        """Trials that were running when the search stopped (resumed first)."""
        if self.running:
            return []
        return [t for t in self.trials if t.status in ("RUNNING", "INVALID")]


def load_project(project: Path) -> ProjectState:
    """Read a search directory without changing it (safe while a search runs).

    Damaged files do not raise: they are listed in ``problems`` (one line each).

    Raises:
        ProjectError: No such search, or its run.json is damaged.
    """
    project = Path(project)
    if not project.is_dir():
        raise ProjectError(f"no search at {project}")
    run = read_run(project)
    settings = SearchSettings.from_dict(run["settings"])
    problems = []
    oracle = None
    oracle_path = project / "oracle.json"
    if oracle_path.exists():
        try:
            oracle = _atomic.read_json(oracle_path)
        except ValueError as error:
            problems.append(str(error))
    recorded = set(oracle["start_order"]) if oracle else None
    trials = []
    for trial_dir in sorted(project.glob("trial_*")):
        trial_id = trial_dir.name[len("trial_"):]
        if recorded is not None and trial_id not in recorded:
            continue  # created but never recorded (a kill between two writes)
        record = {}
        if (trial_dir / "xtune.json").exists():
            try:
                record = _atomic.read_json(trial_dir / "xtune.json")
            except ValueError as error:
                problems.append(str(error))
        raw = None
        if (trial_dir / "trial.json").exists():
            try:
                raw = _atomic.read_json(trial_dir / "trial.json")
            except ValueError as error:
                problems.append(str(error))
        if raw is None and not record:
            continue
        trials.append(_trial_state(trial_id, raw, record, trial_dir))
    finished = None
    if (project / FINISHED_FILE).exists():
        try:
            finished = _atomic.read_json(project / FINISHED_FILE)
        except ValueError as error:
            problems.append(str(error))
    return ProjectState(project, run, settings, settings.plan(), trials, oracle, finished, lock_owner(project), problems)


def _trial_state(trial_id: str, raw: dict | None, record: dict, trial_dir: Path) -> TrialState:
    if raw is not None:
        values = raw["hyperparameters"]["values"]
        status, score, message = raw["status"], raw["score"], raw.get("message")
    else:  # trial.json damaged: our record still knows the essentials
        values = {**record.get("values", {}), "tuner/bracket": record.get("bracket"),
                  "tuner/round": record.get("round"), "tuner/epochs": record.get("epochs"),
                  "tuner/initial_epoch": record.get("initial_epoch", 0)}
        status, score, message = record.get("status", "RUNNING"), None, None
    backup = None
    state_file = trial_dir / "backup" / "state.json"
    if state_file.exists():
        try:
            backup = _atomic.read_json(state_file)
        except ValueError:
            backup = None
    return TrialState(
        trial_id=trial_id,
        status=status,
        score=score,
        values={k: v for k, v in values.items() if not k.startswith("tuner/")},
        bracket=values.get("tuner/bracket"),
        round=values.get("tuner/round"),
        epochs=values.get("tuner/epochs"),
        initial_epoch=values.get("tuner/initial_epoch", 0) or 0,
        parent=values.get("tuner/trial_id"),
        record=record,
        backup=backup,
        message=message,
    )


def search_status(project: Path) -> dict:
    """What `tune status` shows: state, progress against the plan, interrupted trials.

    Returns:
        ``{"project", "state": running|finished|interrupted|not started, "plan_trials",
        "trials_ended", "completed", "failed", "best": {trial_id, score} | None,
        "interrupted": [{trial_id, epochs_saved, initial_epoch, epochs}],
        "epochs_saved", "owner", "problems"}``.
    """
    state = load_project(project)
    completed = [t for t in state.trials if t.status == "COMPLETED"]
    failed = [t for t in state.trials if t.status == "FAILED"]
    interrupted = []
    for t in state.interrupted:
        done = (t.backup or {}).get("epochs_done", t.initial_epoch)
        interrupted.append({"trial_id": t.trial_id, "epochs_saved": done, "initial_epoch": t.initial_epoch,
                            "epochs": t.epochs})
    if state.running:
        label = "running"
    elif state.finished:
        label = "finished"
    elif state.trials:
        label = "interrupted"
    else:
        label = "not started"
    direction_max = not state.settings.objective.endswith("loss")
    best = None
    if completed:
        pick = max if direction_max else min
        b = pick(completed, key=lambda t: t.score)
        best = {"trial_id": b.trial_id, "score": b.score}
    return {
        "project": str(state.path),
        "state": label,
        "objective": state.settings.objective,
        "plan_trials": state.plan.total_trials,
        "trials_ended": len(completed) + len(failed),
        "completed": len(completed),
        "failed": len(failed),
        "best": best,
        "interrupted": interrupted,
        "epochs_saved": sum(i["epochs_saved"] - i["initial_epoch"] for i in interrupted),
        "owner": state.owner,
        "problems": state.problems,
    }


def check_image_size(image_size: int) -> None:
    from xtune.spaces import MIN_IMAGE_SIZE

    if image_size < MIN_IMAGE_SIZE:
        raise UsageError(f"--image-size must be at least {MIN_IMAGE_SIZE}; got {image_size}")

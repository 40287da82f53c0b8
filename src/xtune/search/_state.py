"""The one read model of a search directory, and the schema of our trial record.

Every reader (``tune status``, ``tune results``, export, the report, the supervisor,
resume) asks a ``ProjectState``: the objective and its direction, the trials ranked
(``rank_key``), the best one, the state label, the interrupted trials and the epochs
their backups saved. ``TrialRecord`` is the versioned schema of ``xtune.json``, the
record xtune keeps next to KerasTuner's ``trial.json``. Reading changes nothing and
is safe while a search runs; damaged files are listed in ``problems``, never raised.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from xtune import _atomic
from xtune.errors import ProjectError
from xtune.search._plan import HyperbandPlan
from xtune.search._project import FINISHED_FILE, SearchSettings, lock_owner, read_run

TRIAL_RECORD = "xtune.json"
RECORD_FORMAT = 1
ENDED = ("COMPLETED", "FAILED")


def space_values(values: dict) -> dict:
    """Hyperparameter values without bookkeeping keys (KerasTuner's ``tuner/*``, our ``xtune/*``)."""
    return {k: v for k, v in values.items() if "/" not in k}


def objective_is_max(objective: str) -> bool:
    """Whether a search maximizes ``objective`` (accuracy) rather than minimizing it (loss)."""
    return not objective.endswith("loss")


def rank_key(objective: str, maximize: bool, score: float | None, val_loss: float | None,
             val_accuracy: float | None, params: int | None, trial_id: str) -> tuple:
    """The order of trials, best first: the objective, then the tie-breakers.

    Ties on the objective (one validation image is a big step on a small set) go to
    the lower validation loss (or, when the objective is a loss, the higher
    validation accuracy), then to fewer parameters, then to the earlier trial.
    """
    def signed(value, larger_is_better: bool):
        if value is None or not math.isfinite(float(value)):
            return math.inf
        return -float(value) if larger_is_better else float(value)

    if objective.endswith("loss"):
        second = signed(val_accuracy, True)
    else:
        second = signed(val_loss, False)
    return (signed(score, maximize), second, math.inf if params is None else int(params), int(trial_id))


# -- our record of a trial -----------------------------------------------------------------------


@dataclass
class TrialRecord:
    """``trial_NNNN/xtune.json``: what xtune knows about a trial beyond KerasTuner's file.

    Written by the tuner at the start of every run of the trial and when it ends;
    read by every reader. Unknown keys are ignored and missing ones take their
    defaults, so older records load.
    """

    trial_id: str
    values: dict = field(default_factory=dict)
    bracket: int | None = None
    round: int | None = None
    epochs: int | None = None
    initial_epoch: int = 0
    parent: str | None = None
    seed: int | None = None  # its architecture's seed (``xtune/seed``)
    slot: int | None = None  # its first-round slot in the plan (``xtune/slot``)
    status: str | None = None  # COMPLETED or FAILED once the trial ended
    reason: str | None = None
    history: list = field(default_factory=list)
    best_epoch: int | None = None
    params: int | None = None
    flops: int | None = None
    seconds_before: float = 0.0
    seconds_run: float | None = None
    seconds: float | None = None
    runs: list = field(default_factory=list)  # [{"from_epoch", "ended"}], one per process that ran it
    resumed_at_epochs: list = field(default_factory=list)
    rss_mb_after: float | None = None
    format: int = RECORD_FORMAT

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrialRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def read(cls, path: Path) -> TrialRecord | None:
        """The record at ``path``; None if missing; ValueError (naming it) if damaged."""
        path = Path(path)
        if not path.exists():
            return None
        data = _atomic.read_json(path)
        if not isinstance(data, dict) or "trial_id" not in data:
            raise ValueError(f"{path} is damaged (not a trial record)")
        return cls.from_dict(data)

    def write(self, path: Path) -> None:
        _atomic.write_json(path, self.to_dict())

    def best(self) -> dict | None:
        """The history entry of the best epoch, if known."""
        for h in self.history:
            if h.get("epoch") == self.best_epoch:
                return h
        return None

    @property
    def total_seconds(self) -> float | None:
        if self.seconds is not None:
            return float(self.seconds)
        if self.seconds_run is not None:  # interrupted: the runs so far
            return float(self.seconds_before + self.seconds_run)
        return None


# -- a trial and a search, as read --------------------------------------------------------------


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
    record: TrialRecord
    backup: dict | None = None
    message: str | None = None
    seed: int | None = None

    @property
    def best_metrics(self) -> dict:
        """The metrics of the trial's best epoch (empty when unknown)."""
        return dict(self.record.best() or {})

    @property
    def params(self) -> int | None:
        return self.record.params

    @property
    def epochs_saved(self) -> int:
        """Epochs done so far: the backup's, else the starting epoch (a running trial)."""
        return int((self.backup or {}).get("epochs_done", self.initial_epoch))


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
    problems: list[str]  # damaged files and trials, one line each
    repairable: list[str] = field(default_factory=list)  # those of ``problems`` the next search repairs

    @property
    def objective(self) -> str:
        return self.settings.objective

    @property
    def maximize(self) -> bool:
        return objective_is_max(self.settings.objective)

    @property
    def running(self) -> bool:
        return self.owner is not None

    @property
    def label(self) -> str:
        """"running", "finished", "interrupted" or "not started"."""
        if self.running:
            return "running"
        if self.done:
            return "finished"
        return "interrupted" if self.trials else "not started"

    @property
    def done(self) -> bool:
        """Whether the plan is done: finished.json, or (it is written last, and may be damaged)
        every planned trial ended and none is left running."""
        if self.finished is not None:
            return True
        unfinished = [t for t in self.trials if t.status not in ENDED]
        return bool(self.trials) and len(self.ended) >= self.plan.total_trials and not unfinished

    @property
    def ended(self) -> list[TrialState]:
        return [t for t in self.trials if t.status in ENDED]

    @property
    def failed(self) -> list[TrialState]:
        return [t for t in self.trials if t.status == "FAILED"]

    @property
    def interrupted(self) -> list[TrialState]:
        """Trials that were running when the search stopped (resumed first)."""
        if self.running:
            return []
        return [t for t in self.trials if t.status in ("RUNNING", "INVALID")]

    @property
    def active(self) -> list[TrialState]:
        """Trials running now (a running search)."""
        if not self.running:
            return []
        return [t for t in self.trials if t.status in ("RUNNING", "INVALID")]

    def ranked(self) -> list[TrialState]:
        """Completed trials with a score, best first (``rank_key``)."""
        done = [t for t in self.trials if t.status == "COMPLETED" and t.score is not None]
        return sorted(done, key=self.rank_key)

    def rank_key(self, trial: TrialState) -> tuple:
        best = trial.best_metrics
        return rank_key(self.objective, self.maximize, trial.score, best.get("val_loss"),
                        best.get("val_accuracy"), trial.params, trial.trial_id)

    @property
    def best(self) -> TrialState | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def trial(self, trial_id: str) -> TrialState | None:
        wanted = str(trial_id).zfill(4) if str(trial_id).isdigit() else str(trial_id)
        return next((t for t in self.trials if t.trial_id == wanted), None)

    @property
    def epochs_done(self) -> int:
        """Epochs trained so far (ended trials, and what backups of others saved)."""
        total = 0
        for t in self.trials:
            if t.status in ENDED and t.epochs is not None:
                total += t.epochs - t.initial_epoch
            else:
                total += t.epochs_saved - t.initial_epoch
        return total

    @property
    def epochs_saved(self) -> int:
        """Epochs the interrupted trials' backups hold (what a resume does not redo)."""
        return sum(t.epochs_saved - t.initial_epoch for t in self.interrupted)


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
    problems: list[str] = []
    repairable: list[str] = []
    oracle = _read(project / "oracle.json", problems, repairable)
    if oracle is not None and (damage := oracle_damage(oracle)):
        problems.append(f"{project / 'oracle.json'} is damaged ({damage})")
        repairable.append(problems[-1])
        oracle = None
    recorded = set(oracle["start_order"]) if oracle is not None and "start_order" in oracle else None
    trials = []
    for trial_dir in sorted(project.glob("trial_*")):
        trial_id = trial_dir.name[len("trial_"):]
        if recorded is not None and trial_id not in recorded:
            continue  # created but never recorded (a kill between two writes)
        try:
            record = TrialRecord.read(trial_dir / TRIAL_RECORD)
        except ValueError as error:
            problems.append(str(error))
            record = None
        raw = _read(trial_dir / "trial.json", problems, repairable)
        if raw is not None and (damage := trial_damage(raw)):
            problems.append(f"{trial_dir / 'trial.json'} is damaged ({damage})")
            repairable.append(problems[-1])
            raw = None
        if raw is None and record is None:
            continue
        trials.append(_trial_state(trial_id, raw, record or TrialRecord(trial_id), trial_dir, settings, problems))
    finished = _read(project / FINISHED_FILE, problems, repairable)
    return ProjectState(project, run, settings, settings.plan(), trials, oracle, finished, lock_owner(project),
                        problems, repairable)


def oracle_damage(state) -> str | None:
    """Why a readable oracle.json cannot be used (the read model and the oracle rely on these), or None."""
    if not isinstance(state, dict):
        return "not an oracle's state"
    for key in ("start_order", "end_order"):
        order = state.get(key, [])
        if not isinstance(order, list) or not all(isinstance(t, str) for t in order):
            return f"its {key} is not a list of trial ids"
    if not isinstance(state.get("xtune", {}), dict):
        return "its xtune state is not an object"
    return None


def trial_damage(state) -> str | None:
    """Why a readable trial.json is not a KerasTuner trial the read model can use, or None."""
    hyperparameters = state.get("hyperparameters") if isinstance(state, dict) else None
    if not isinstance(hyperparameters, dict) or not isinstance(hyperparameters.get("values"), dict):
        return "not a KerasTuner trial"
    if not isinstance(state.get("status"), str):
        return "its status is not a string"
    score = state.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        return "its score is not a number"
    return None


def _read(path: Path, problems: list[str], repairable: list[str] | None = None):
    """The JSON at ``path``; None if missing or damaged (then listed in ``problems``, and in ``repairable``
    when given: a file the next search repairs)."""
    if not path.exists():
        return None
    try:
        return _atomic.read_json(path)
    except ValueError as error:
        problems.append(str(error))
        if repairable is not None:
            repairable.append(str(error))
        return None


def _trial_state(trial_id: str, raw: dict | None, record: TrialRecord, trial_dir: Path,
                 settings: SearchSettings, problems: list[str]) -> TrialState:
    if raw is not None:
        values = raw["hyperparameters"]["values"]
        status, score, message = raw["status"], raw.get("score"), raw.get("message")
    else:  # trial.json damaged: our record still knows the essentials
        values = {**record.values, "tuner/bracket": record.bracket, "tuner/round": record.round,
                  "tuner/epochs": record.epochs, "tuner/initial_epoch": record.initial_epoch}
        if record.parent is not None:
            values["tuner/trial_id"] = record.parent
        status, score, message = record.status or "RUNNING", None, None
    if status == "COMPLETED" and score is None:
        best = record.best()
        score = best.get(settings.objective) if best else None
        if score is None:
            problems.append(f"trial {trial_id} is completed but has no score; it is left out of the ranking")
    backup = _read(trial_dir / "backup" / "state.json", []) if (trial_dir / "backup").is_dir() else None
    return TrialState(
        trial_id=trial_id,
        status=status,
        score=None if score is None else float(score),
        values=space_values(values),
        bracket=values.get("tuner/bracket"),
        round=values.get("tuner/round"),
        epochs=values.get("tuner/epochs"),
        initial_epoch=values.get("tuner/initial_epoch", 0) or 0,
        parent=values.get("tuner/trial_id"),
        record=record,
        backup=backup if isinstance(backup, dict) else None,
        message=message,
        seed=values.get("xtune/seed", record.seed),
    )


def search_status(project: Path) -> dict:
    """What `tune status` shows: state, progress against the plan, interrupted trials.

    Returns:
        ``{"project", "state", "objective", "plan_trials", "trials_ended", "completed",
        "failed", "best": {trial_id, score} | None, "interrupted": [{trial_id,
        epochs_saved, initial_epoch, epochs}], "running": [...same...], "epochs_saved",
        "epochs_done", "plan_epochs", "eta" (seconds left, estimated), "owner", "problems", "repairable"
        (those of the problems that the next ``tune search`` repairs)}``.
    """
    state = load_project(project)
    best = state.best

    def where(t: TrialState) -> dict:
        return {"trial_id": t.trial_id, "epochs_saved": t.epochs_saved, "initial_epoch": t.initial_epoch,
                "epochs": t.epochs}

    return {
        "project": str(state.path),
        "state": state.label,
        "objective": state.objective,
        "plan_trials": state.plan.total_trials,
        "trials_ended": len(state.ended),
        "completed": len(state.ended) - len(state.failed),
        "failed": len(state.failed),
        "best": {"trial_id": best.trial_id, "score": best.score} if best else None,
        "interrupted": [where(t) for t in state.interrupted],
        "running": [where(t) for t in state.active],
        "epochs_saved": state.epochs_saved,
        "epochs_done": state.epochs_done,
        "plan_epochs": state.plan.total_epochs,
        "eta": _eta(state),
        "owner": state.owner,
        "problems": state.problems,
        "repairable": state.repairable,
    }


def _eta(state) -> float | None:
    if state.done:
        return None
    from xtune.search._progress import remaining_seconds

    return remaining_seconds(state)

"""Trial rows and the best configuration of a search directory (read-only, no Keras)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xtune.errors import ProjectError
from xtune.search._project import ProjectState, TrialState, load_project
from xtune.spaces import MiniXceptionConfig, SearchSpace, count_params

# The order of a trial's statuses in `tune results` after the ranked (completed) ones.
_UNRANKED_ORDER = {"RUNNING": 0, "INTERRUPTED": 1, "FAILED": 2}


@dataclass(frozen=True)
class SearchResults:
    """What `tune results` shows about a search directory.

    Attributes:
        project: The search directory.
        state: "running", "finished", "interrupted" or "not started".
        objective: The search's objective (``val_accuracy`` or ``val_loss``).
        rows: One record per trial (see ``trial_rows``), ranked first.
        best: The best trial's configuration (see ``best_config``), or None when no
            trial has completed.
        problems: Damaged files found while reading, one line each.
    """

    project: Path
    state: str
    objective: str
    rows: list
    best: dict | None
    problems: list

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"project": str(self.project), "state": self.state, "objective": self.objective,
                "trials": self.rows, "best": self.best, "problems": self.problems}


def search_results(project: Path, *, top: int | None = None) -> SearchResults:
    """Read a search directory (running, interrupted or finished) without changing it.

    Args:
        project: The search directory (``runs/NAME``).
        top: Keep only the ``top`` best completed trials (None keeps every trial,
            running and failed ones included).

    Returns:
        A ``SearchResults``.

    Raises:
        ProjectError: No search at ``project``, or its run.json is damaged.
    """
    state = load_project(project)
    rows = trial_rows(state)
    if top is not None:
        rows = [r for r in rows if r["rank"] is not None][:top]
    best = best_config(state) if completed_trials(state) else None
    return SearchResults(Path(project), _state_label(state), state.settings.objective, rows, best,
                         list(state.problems))


def objective_is_max(state: ProjectState) -> bool:
    """Whether the search maximizes its objective (accuracy) rather than minimizing it (loss)."""
    return not state.settings.objective.endswith("loss")


def completed_trials(state: ProjectState) -> list[TrialState]:
    """Completed trials with a score, best first (ties: the earlier trial first, as KerasTuner ranks)."""
    done = [t for t in state.trials if t.status == "COMPLETED" and t.score is not None]
    sign = -1.0 if objective_is_max(state) else 1.0
    return sorted(done, key=lambda t: (sign * float(t.score), int(t.trial_id)))


def best_trial(state: ProjectState) -> TrialState:
    """The best completed trial.

    Raises:
        ProjectError: No trial has completed yet.
    """
    ranked = completed_trials(state)
    if not ranked:
        ended = sum(1 for t in state.trials if t.status == "FAILED")
        detail = f" ({ended} failed)" if ended else ""
        raise ProjectError(f"the search in {state.path} has no completed trial yet{detail}; "
                           f"run or resume it with: tune search --project {state.path}")
    return ranked[0]


def trial_config(state: ProjectState, trial: TrialState) -> MiniXceptionConfig:
    """The configuration a trial trained, rebuilt from its stored hyperparameters.

    Hyperparameters that were inactive (``bn_momentum`` without batch norm) take the
    space's default, exactly as the search's sampling did.
    """
    values = trial.values or trial.record.get("values", {})
    return space_of(state).default_config().replace(**values)


def space_of(state: ProjectState) -> SearchSpace:
    """The search space stored in run.json."""
    return SearchSpace.from_dict(state.run["space"])


def class_names(state: ProjectState) -> list[str]:
    """The class names recorded in run.json (empty when the data record lacks them)."""
    return list((state.run.get("data") or {}).get("class_names") or [])


def trial_rows(state: ProjectState) -> list[dict]:
    """One record per trial: ranked completed trials first, then running, interrupted, failed.

    Args:
        state: A loaded search directory (``load_project``).

    Returns:
        Dicts with ``rank`` (1 = best; None unless completed), ``trial_id``,
        ``status`` (COMPLETED, RUNNING, INTERRUPTED or FAILED), ``bracket``,
        ``round``, ``initial_epoch`` and ``epochs`` (absolute: a promoted trial
        continues its parent's training from ``initial_epoch``), ``best_epoch``,
        ``score`` (the objective at the best epoch), ``objective``, ``params``,
        ``seconds``, ``reason`` (failed trials) and ``values`` (the architecture's
        hyperparameters, without ``tuner/*``).
    """
    ranked = completed_trials(state)
    rank_of = {t.trial_id: i for i, t in enumerate(ranked, start=1)}
    interrupted = {t.trial_id for t in state.interrupted}
    input_shape = (state.settings.image_size, state.settings.image_size, 3)
    num_classes = max(len(class_names(state)), 2)
    rows = []
    for t in state.trials:
        record = t.record
        status = t.status
        if status in ("RUNNING", "INVALID"):
            status = "INTERRUPTED" if t.trial_id in interrupted else "RUNNING"
        epochs = t.epochs
        if status in ("RUNNING", "INTERRUPTED"):
            epochs = (t.backup or {}).get("epochs_done", t.initial_epoch)
        params = record.get("params")
        if params is None:
            try:
                params = count_params(trial_config(state, t), input_shape, num_classes)
            except (ValueError, TypeError):
                params = None
        reason = record.get("reason") if status == "FAILED" else None
        if status == "FAILED" and not reason:
            reason = _last_line(t.message)
        rows.append({
            "rank": rank_of.get(t.trial_id),
            "trial_id": t.trial_id,
            "status": status,
            "bracket": t.bracket if t.bracket is not None else record.get("bracket"),
            "round": t.round if t.round is not None else record.get("round"),
            "initial_epoch": t.initial_epoch,
            "epochs": epochs,
            "best_epoch": record.get("best_epoch") if status == "COMPLETED" else None,
            "objective": state.settings.objective,
            "score": float(t.score) if status == "COMPLETED" and t.score is not None else None,
            "params": params,
            "seconds": _seconds(record),
            "reason": reason,
            "values": dict(t.values),
        })
    rows.sort(key=lambda r: (0, r["rank"]) if r["rank"] is not None
              else (1, _UNRANKED_ORDER.get(r["status"], 3), int(r["trial_id"])))
    return rows


def best_config(state: ProjectState) -> dict:
    """The best trial and its full configuration, ready to read or to rebuild.

    Returns:
        ``{"trial_id", "objective", "score", "best_epoch", "epochs", "params",
        "config": {field: value} (every field of ``MiniXceptionConfig``),
        "widths": [filters per stage], "input_shape", "num_classes",
        "class_names"}``.

    Raises:
        ProjectError: No trial has completed yet.
    """
    trial = best_trial(state)
    config = trial_config(state, trial)
    names = class_names(state)
    size = state.settings.image_size
    return {
        "trial_id": trial.trial_id,
        "objective": state.settings.objective,
        "score": float(trial.score),
        "best_epoch": trial.record.get("best_epoch"),
        "epochs": trial.epochs,
        "params": trial.record.get("params") or count_params(config, (size, size, 3), max(len(names), 2)),
        "config": config.to_dict(),
        "widths": list(config.widths),
        "input_shape": [size, size, 3],
        "num_classes": len(names) or None,
        "class_names": names,
    }


def _state_label(state: ProjectState) -> str:
    if state.running:
        return "running"
    if state.finished:
        return "finished"
    return "interrupted" if state.trials else "not started"


def _seconds(record: dict) -> float | None:
    if record.get("seconds") is not None:
        return float(record["seconds"])
    if record.get("seconds_run") is not None:  # interrupted: the runs so far
        return float(record.get("seconds_before", 0.0) + record["seconds_run"])
    return None


def _last_line(message: str | None) -> str | None:
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else None

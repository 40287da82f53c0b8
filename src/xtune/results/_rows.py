"""Trial rows and the best configuration of a search directory (read-only, no Keras).

Everything here asks the read model (``xtune.search.load_project``): the ranking,
the best trial, the state label are its, not recomputed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from xtune.errors import ProjectError
from xtune.search._state import ProjectState, TrialState, load_project
from xtune.spaces import MiniXceptionConfig, SearchSpace, count_flops, count_params

# The order of a trial's statuses in `tune results` after the ranked (completed) ones.
_UNRANKED_ORDER = {"RUNNING": 0, "INTERRUPTED": 1, "FAILED": 2}


@dataclass(frozen=True)
class SearchResults:
    """What `tune results` shows about a search directory.

    Attributes:
        project: The search directory.
        state: "running", "finished", "interrupted" or "not started".
        objective: The search's objective (``val_accuracy`` or ``val_loss``).
        tie_breaker: The metric that breaks ties on the objective (``val_loss``, or
            ``val_accuracy`` when the objective is a loss).
        rows: One record per trial (see ``trial_rows``), ranked first.
        best: The best trial's configuration (see ``best_config``), or None when no
            trial has completed.
        problems: Damaged files found while reading, one line each.
        warm_start: Where a warm-started search's first configurations came from
            (run.json's record), or None.
    """

    project: Path
    state: str
    objective: str
    tie_breaker: str
    rows: list
    best: dict | None
    problems: list
    warm_start: dict | None = None

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"project": str(self.project), "state": self.state, "objective": self.objective,
                "tie_breaker": self.tie_breaker, "trials": self.rows, "best": self.best, "problems": self.problems,
                "warm_start": self.warm_start}


def tie_breaker(objective: str) -> str:
    return "val_accuracy" if objective.endswith("loss") else "val_loss"


def search_results(project: Path, *, top: int | None = None, pareto: bool = False) -> SearchResults:
    """Read a search directory (running, interrupted or finished) without changing it.

    Args:
        project: The search directory (``runs/NAME``).
        top: Keep only the ``top`` best completed trials (None keeps every trial,
            running and failed ones included).
        pareto: Keep only the accuracy-vs-size front (``pareto_front``), smallest first.

    Returns:
        A ``SearchResults``.

    Raises:
        ProjectError: No search at ``project``, or its run.json is damaged.
    """
    state = load_project(project)
    rows = trial_rows(state)
    if pareto:
        front = {t.trial_id for t in pareto_front(state)}
        rows = sorted((r for r in rows if r["trial_id"] in front), key=lambda r: (r["params"], r["flops"]))
    if top is not None:
        rows = [r for r in rows if r["rank"] is not None][:top]
    best = best_config(state) if state.best is not None else None
    return SearchResults(Path(project), state.label, state.objective, tie_breaker(state.objective), rows, best,
                         list(state.problems), state.run.get("warm_start"))


def completed_trials(state: ProjectState) -> list[TrialState]:
    """Completed trials with a score, best first (the read model's ranking)."""
    return state.ranked()


def best_trial(state: ProjectState) -> TrialState:
    """The best completed trial.

    Raises:
        ProjectError: No trial has completed yet.
    """
    best = state.best
    if best is None:
        failed = len(state.failed)
        detail = f" ({failed} failed)" if failed else ""
        raise ProjectError(f"the search in {state.path} has no completed trial yet{detail}; "
                           f"run or resume it with: tune search --project {shlex.quote(str(state.path))}")
    return best


def trial_config(state: ProjectState, trial: TrialState) -> MiniXceptionConfig:
    """The configuration a trial trained, rebuilt from its stored hyperparameters.

    Hyperparameters that were inactive (``bn_momentum`` without batch norm) take the
    space's default, exactly as the search's sampling did.
    """
    values = trial.values or trial.record.values
    return space_of(state).default_config().replace(**values)


def space_of(state: ProjectState) -> SearchSpace:
    """The search space stored in run.json."""
    return SearchSpace.from_dict(state.run["space"])


def class_names(state: ProjectState) -> list[str]:
    """The class names recorded in run.json (empty when the data record lacks them)."""
    return list((state.run.get("data") or {}).get("class_names") or [])


def trial_params(state: ProjectState, trial: TrialState) -> int | None:
    """A trial's parameter count: recorded, else computed from its configuration."""
    if trial.params is not None:
        return trial.params
    size = state.settings.image_size
    try:
        return count_params(trial_config(state, trial), (size, size, 3), max(len(class_names(state)), 2))
    except (ValueError, TypeError):
        return None


def trial_flops(state: ProjectState, trial: TrialState) -> int | None:
    """FLOPs per image of a trial's model at the search's image size (``count_flops``)."""
    if trial.record.flops is not None:
        return trial.record.flops
    size = state.settings.image_size
    try:
        return count_flops(trial_config(state, trial), (size, size, 3), max(len(class_names(state)), 2))
    except (ValueError, TypeError):
        return None


def pareto_front(state: ProjectState) -> list[TrialState]:
    """The completed trials that no other completed trial beats on both the objective and size.

    A trial is dominated when another is at least as good on the objective, on
    parameters and on FLOPs, and strictly better on one of them.
    """
    ranked = state.ranked()
    sign = -1.0 if state.maximize else 1.0
    costs = {t.trial_id: (sign * cast(float, t.score),  # ranked() keeps the trials with a score only
                          trial_params(state, t) or 0, trial_flops(state, t) or 0) for t in ranked}

    def dominates(a, b):
        x, y = costs[a.trial_id], costs[b.trial_id]
        return all(p <= q for p, q in zip(x, y)) and any(p < q for p, q in zip(x, y))

    return [t for t in ranked if not any(dominates(o, t) for o in ranked if o is not t)]


def trial_rows(state: ProjectState) -> list[dict]:
    """One record per trial: ranked completed trials first, then running, interrupted, failed.

    Args:
        state: A loaded search directory (``load_project``).

    Returns:
        Dicts with ``rank`` (1 = best; None unless completed), ``trial_id``,
        ``status`` (COMPLETED, RUNNING, INTERRUPTED or FAILED), ``bracket``,
        ``round``, ``initial_epoch`` and ``epochs`` (absolute: a promoted trial
        continues its parent's training from ``initial_epoch``), ``best_epoch``,
        ``score`` (the objective at the best epoch), ``objective``,
        ``tie_breaker`` (the tie-breaking metric at the best epoch), ``params``, ``flops``,
        ``seconds``, ``parent``, ``reason`` (failed trials) and ``values`` (the
        architecture's hyperparameters).
    """
    ranked = state.ranked()
    rank_of = {t.trial_id: i for i, t in enumerate(ranked, start=1)}
    interrupted = {t.trial_id for t in state.interrupted}
    second = tie_breaker(state.objective)
    rows: list[dict] = []
    for t in state.trials:
        record = t.record
        status = t.status
        if status in ("RUNNING", "INVALID"):
            status = "INTERRUPTED" if t.trial_id in interrupted else "RUNNING"
        completed = status == "COMPLETED"
        reason = (record.reason or _last_line(t.message)) if status == "FAILED" else None
        rows.append({
            "rank": rank_of.get(t.trial_id),
            "trial_id": t.trial_id,
            "status": status,
            "bracket": t.bracket if t.bracket is not None else record.bracket,
            "round": t.round if t.round is not None else record.round,
            "initial_epoch": t.initial_epoch,
            "epochs": t.epochs_saved if status in ("RUNNING", "INTERRUPTED") else t.epochs,
            "best_epoch": record.best_epoch if completed else None,
            "objective": state.objective,
            "score": t.score if completed else None,
            "tie_breaker": t.best_metrics.get(second) if completed else None,
            "params": trial_params(state, t),
            "flops": trial_flops(state, t),
            "seconds": record.total_seconds,
            "parent": t.parent,
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
    assert trial.score is not None  # the best is ranked: it has a score
    config = trial_config(state, trial)
    names = class_names(state)
    size = state.settings.image_size
    return {
        "trial_id": trial.trial_id,
        "objective": state.objective,
        "score": float(trial.score),
        "best_epoch": trial.record.best_epoch,
        "epochs": trial.epochs,
        "params": trial_params(state, trial),
        "config": config.to_dict(),
        "widths": list(config.widths),
        "input_shape": [size, size, 3],
        "num_classes": len(names) or None,
        "class_names": names,
    }


def _last_line(message: str | None) -> str | None:
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else None

"""Repair a search directory damaged by something worse than a kill.

Every state write is atomic, so a kill never truncates a file. A crash of the machine
with an unflushed cache, a full disk outside our writes, or a hand edit still can.
``repair_project`` rebuilds what the trial files allow, keeps every damaged file
(renamed ``*.damaged``), deletes nothing, and returns one line per repair.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from xtune import _atomic
from xtune.search._plan import HyperbandPlan, round_size

_ENDED = ("COMPLETED", "FAILED")


def _load(path: Path):
    try:
        return _atomic.read_json(path), None
    except ValueError as error:
        return None, str(error)


def _keep_damaged(path: Path) -> Path:
    target = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    path.rename(target)
    return target


def repair_project(project: Path, plan: HyperbandPlan, seed: int) -> list[str]:
    """Make every state file of ``project`` loadable again; return what was repaired.

    Args:
        project: The search directory.
        plan: Its plan (for the bracket structure).
        seed: The search seed (the oracle's draws are rebuilt from it).
    """
    project = Path(project)
    notes = []
    space_config = _space_config(project)
    removed = _atomic.remove_stale_temporaries(project)
    if removed:
        notes.append(f"removed {removed} temporary file(s) left by an interrupted write")
    trials = {}
    for trial_dir in sorted(project.glob("trial_*")):
        trial_file = trial_dir / "trial.json"
        raw, error = _load(trial_file) if trial_file.exists() else (None, None)
        if raw is None and error:
            rebuilt = _trial_from_record(trial_dir, space_config)
            kept = _keep_damaged(trial_file)
            if rebuilt is not None:
                _atomic.write_json(trial_file, rebuilt, indent=None)
                notes.append(f"{error}; rebuilt it from {trial_dir.name}/xtune.json (damaged copy kept as {kept.name})")
                raw = rebuilt
            else:
                notes.append(f"{error}; nothing to rebuild it from, the trial is dropped (damaged copy kept as {kept.name})")
                continue
        if raw is not None:
            trials[raw["trial_id"]] = raw
    oracle_file = project / "oracle.json"
    if oracle_file.exists():
        _, error = _load(oracle_file)
        if error:
            kept = _keep_damaged(oracle_file)
            state = _oracle_from_trials(trials, plan, seed, space_config)
            _atomic.write_json(oracle_file, state, indent=None)
            notes.append(f"{error}; rebuilt the Hyperband state from {len(trials)} trial files "
                         f"(damaged copy kept as {kept.name})")
    tuner_file = project / "tuner0.json"
    if tuner_file.exists() and _load(tuner_file)[1]:
        kept = _keep_damaged(tuner_file)
        _atomic.write_json(tuner_file, {}, indent=None)
        notes.append(f"{project / 'tuner0.json'} was damaged; rewritten (it holds no state; copy kept as {kept.name})")
    return notes


def _space_config(project: Path) -> dict | None:
    """The registered space (``HyperParameters.get_config()``) from any intact file."""
    candidates = [project / "oracle.json"] + sorted(project.glob("trial_*/trial.json"))
    for path in candidates:
        if path.exists():
            data, _ = _load(path)
            if data and "hyperparameters" in data:
                return {**data["hyperparameters"], "values": {}}
    return None


def _trial_from_record(trial_dir: Path, space_config: dict | None) -> dict | None:
    """A trial.json rebuilt from our xtune.json record of the same trial."""
    record, _ = _load(trial_dir / "xtune.json") if (trial_dir / "xtune.json").exists() else (None, None)
    if not record or space_config is None:
        return None
    values = dict(record["values"])
    values.update({"tuner/epochs": record["epochs"], "tuner/initial_epoch": record.get("initial_epoch", 0),
                   "tuner/bracket": record["bracket"], "tuner/round": record["round"]})
    if record.get("parent"):
        values["tuner/trial_id"] = record["parent"]
    status = record.get("status") if record.get("status") in _ENDED else "RUNNING"
    metrics = {}
    score = best_step = None
    history = record.get("history") or []
    if status == "COMPLETED" and history:
        best = next(h for h in history if h["epoch"] == record.get("best_epoch", history[-1]["epoch"]))
        for name, value in best.items():
            if name == "epoch":
                continue
            direction = "min" if "loss" in name else "max"
            metrics[name] = {"direction": direction, "observations": [{"value": [value], "step": 0}]}
        score, best_step = best.get("val_accuracy", best.get("val_loss")), 0
    hyperparameters = json.loads(json.dumps(space_config))
    hyperparameters["values"] = values
    return {"trial_id": record["trial_id"], "hyperparameters": hyperparameters, "metrics": {"metrics": metrics},
            "score": score, "best_step": best_step or 0, "status": status, "message": record.get("reason")}


def _oracle_from_trials(trials: dict, plan: HyperbandPlan, seed: int, space_config: dict | None) -> dict:
    """The oracle state of a ``PlannedHyperbandOracle`` rebuilt from its trials.

    Trials run one after another in id order; a first-round trial opens a bracket when
    the previous one's first round is full, a promotion joins its parent's bracket.
    The draw counter is rebuilt from the draws made (one per active hyperparameter).
    """
    from keras_tuner.src.engine import hyperparameters as hp_module
    from keras_tuner.src.tuners.hyperband import HyperbandOracle

    ids = sorted(trials)
    brackets, started = [], 0
    seed_state = seed
    hasher = HyperbandOracle.__new__(HyperbandOracle)
    tried, id_to_hash = [], {}
    for trial_id in ids:
        values = trials[trial_id]["hyperparameters"]["values"]
        number, round_num = values.get("tuner/bracket"), values.get("tuner/round", 0)
        if round_num == 0:
            if trial_id != ids[0]:  # the first trial is the default configuration: no draws
                seed_state += len([k for k in values if not k.startswith("tuner/")])
            if (not brackets or brackets[-1]["bracket_num"] != number
                    or len(brackets[-1]["rounds"][0]) >= round_size(plan.max_epochs, plan.factor, number, 0)):
                brackets.append({"bracket_num": number, "rounds": [[] for _ in range(number + 1)]})
                started += 1
            brackets[-1]["rounds"][0].append({"past_id": None, "id": trial_id})
        else:
            parent = values.get("tuner/trial_id")
            for bracket in reversed(brackets):
                if any(info["id"] == parent for info in bracket["rounds"][round_num - 1]):
                    bracket["rounds"][round_num].append({"past_id": parent, "id": trial_id})
                    break
        digest = hasher._compute_values_hash(values)
        tried.append(digest)
        id_to_hash[trial_id] = digest
    running = [t for t in ids if trials[t]["status"] not in _ENDED]
    per_iteration = plan.num_brackets
    return {
        # Every running trial goes back to the queue (several, after a search with workers).
        "ongoing_trials": {},
        "hyperparameters": space_config or hp_module.HyperParameters().get_config(),
        "start_order": ids,
        "end_order": [t for t in ids if trials[t]["status"] in _ENDED],
        "run_times": {t: 1 for t in ids if trials[t]["status"] in _ENDED},
        "retry_queue": running,
        "seed": seed,
        "seed_state": seed_state,
        "tried_so_far": sorted(set(tried)),
        "id_to_hash": id_to_hash,
        "display": {"search_start": None, "trial_start": {}, "trial_number": {}},
        "hyperband_iterations": plan.iterations,
        "max_epochs": plan.max_epochs,
        "min_epochs": plan.min_epochs,
        "factor": plan.factor,
        "brackets": brackets,
        "current_bracket": brackets[-1]["bracket_num"] if brackets else per_iteration - 1,
        "current_iteration": max(started - 1, 0) // per_iteration,
        "planned_brackets": len(plan.brackets),
        "brackets_started": started,
    }

"""Repair a search directory damaged by something worse than a kill.

Every state write is atomic, so a kill never truncates a file. A crash of the machine
with an unflushed cache, a full disk outside our writes, or a hand edit still can.
``repair_project`` rebuilds what the trial files allow, keeps every damaged file
(renamed ``*.damaged-<time>``), deletes nothing, and returns one line per repair.

Rebuilt files are written by the objects that own them, not by hand: a trial by
KerasTuner's ``Trial`` (from our record of it), the oracle's state by our oracle
(from the trial files), so each file keeps its owner's schema. A search made by an
earlier xtune (whose oracle.json holds KerasTuner's Hyperband state) is converted
the same way.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from pathlib import Path

from xtune import _atomic
from xtune.search import _kt
from xtune.search._plan import HyperbandPlan
from xtune.search._state import ENDED, TRIAL_RECORD, TrialRecord, oracle_damage, trial_damage


def _load(path: Path):
    try:
        return _atomic.read_json(path), None
    except ValueError as error:
        return None, str(error)


def _keep_damaged(path: Path) -> Path:
    target = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    path.rename(target)
    return target


def repair_project(project: Path, plan: HyperbandPlan, make_oracle: Callable) -> list[str]:
    """Make every state file of ``project`` loadable again; return what was repaired.

    Args:
        project: The search directory.
        plan: Its plan (for the bracket structure).
        make_oracle: Returns a fresh ``PlannedHyperbandOracle`` of this search, to
            rebuild ``oracle.json`` from the trial files.
    """
    project = Path(project)
    notes = []
    removed = _atomic.remove_stale_temporaries(project)
    if removed:
        notes.append(f"removed {removed} temporary file(s) left by an interrupted write")
    space_config = _space_config(project)
    with _kt.patched():
        trials = _repair_trials(project, space_config, notes)
        oracle_file = project / "oracle.json"
        if oracle_file.exists():
            state, error = _load(oracle_file)
            if not error and (damage := oracle_damage(state)):
                error = f"{oracle_file} is damaged ({damage})"
            if error or "xtune" not in state:
                kept = _keep_damaged(oracle_file) if error else _keep_as(oracle_file, "kerastuner-hyperband")
                _rebuild_oracle(project, plan, make_oracle(), trials, space_config)
                what = f"{error}; rebuilt" if error else f"{oracle_file} was written by an earlier xtune; converted"
                notes.append(f"{what} the Hyperband state from {len(trials)} trial files (old copy kept as {kept.name})")
    tuner_file = project / "tuner0.json"
    if tuner_file.exists() and _load(tuner_file)[1]:
        kept = _keep_damaged(tuner_file)
        _atomic.write_json(tuner_file, {}, indent=None)
        notes.append(f"{tuner_file} was damaged; rewritten (it holds no state; copy kept as {kept.name})")
    return notes


def _keep_as(path: Path, label: str) -> Path:
    target = path.with_name(f"{path.name}.{label}-{int(time.time())}")
    path.rename(target)
    return target


def _space_config(project: Path) -> dict | None:
    """The registered space (``HyperParameters.get_config()``) from any intact file."""
    for path in [project / "oracle.json"] + sorted(project.glob("trial_*/trial.json")):
        if path.exists():
            data, _ = _load(path)
            if isinstance(data, dict) and isinstance(data.get("hyperparameters"), dict):
                return {**data["hyperparameters"], "values": {}}
    return None


def _repair_trials(project: Path, space_config: dict | None, notes: list[str]) -> dict:
    """trial id -> ``Trial`` for every trial file; damaged ones rebuilt from our record."""
    trials = {}
    for trial_dir in sorted(project.glob("trial_*")):
        trial_file = trial_dir / "trial.json"
        if not trial_file.exists():
            continue
        state, error = _load(trial_file)
        if not error and (damage := trial_damage(state)):
            error = f"{trial_file} is damaged ({damage})"
        if not error:
            try:
                trial = _kt.Trial.load(str(trial_file))
            except (KeyError, TypeError, ValueError, AttributeError) as failure:  # JSON, but not what KerasTuner wrote
                error = f"{trial_file} is damaged (KerasTuner cannot load it: {type(failure).__name__})"
        if error:
            kept = _keep_damaged(trial_file)
            rebuilt = _trial_from_record(trial_dir, space_config)
            if rebuilt is None:
                notes.append(f"{error}; nothing to rebuild it from, the trial is dropped (damaged copy kept as "
                             f"{kept.name})")
                continue
            rebuilt.save(str(trial_file))
            notes.append(f"{error}; rebuilt it from {trial_dir.name}/{TRIAL_RECORD} (damaged copy kept as {kept.name})")
            trial = _kt.Trial.load(str(trial_file))
        trials[trial.trial_id] = trial
    return trials


def _trial_from_record(trial_dir: Path, space_config: dict | None):
    """A KerasTuner ``Trial`` rebuilt from our record of the same trial."""
    import keras_tuner

    try:
        record = TrialRecord.read(trial_dir / TRIAL_RECORD)
    except ValueError:
        record = None
    if record is None or space_config is None:
        return None
    values = dict(record.values)
    values.update({"tuner/epochs": record.epochs, "tuner/initial_epoch": record.initial_epoch,
                   "tuner/bracket": record.bracket, "tuner/round": record.round})
    if record.parent:
        values["tuner/trial_id"] = record.parent
    if record.slot is not None:
        values["xtune/slot"] = record.slot
    if record.seed is not None:
        values["xtune/seed"] = record.seed
    hyperparameters = keras_tuner.HyperParameters.from_config(copy.deepcopy(space_config))  # it edits its argument
    hyperparameters.values = values
    status = record.status if record.status in ENDED else _kt.TrialStatus.RUNNING
    trial = _kt.Trial(hyperparameters, trial_id=record.trial_id, status=status)
    trial.message = record.reason
    best = record.best()
    if status == "COMPLETED" and best:
        for name, value in best.items():
            if name != "epoch":
                trial.metrics.register(name, direction="min" if "loss" in name else "max")
                trial.metrics.update(name, value, step=0)
        if record.params is not None:
            trial.metrics.register("params", direction="min")
            trial.metrics.update("params", float(record.params), step=0)
        trial.score = best.get("val_accuracy", best.get("val_loss"))
        trial.best_step = 0
    return trial


def _rebuild_oracle(project: Path, plan: HyperbandPlan, oracle, trials: dict, space_config: dict | None) -> None:
    """Write ``oracle.json`` from the trial files, by the oracle itself.

    Trials are placed in the plan's brackets: one that knows its slot (``xtune/slot``)
    in that slot's bracket; an older one, in id order, in the first open bracket of
    its number; a promotion joins its parent's bracket, one round later.
    """
    import keras_tuner

    from xtune.search._sampler import config_key
    from xtune.search._state import space_values

    _kt.attach(oracle, project)
    if space_config is not None:
        oracle.hyperparameters = keras_tuner.HyperParameters.from_config(copy.deepcopy(space_config))
    ids = sorted(trials)
    oracle.trials = dict(trials)
    oracle.start_order = list(ids)
    oracle.end_order = [t for t in ids if trials[t].status in ENDED]
    runs = _kt.run_times(oracle)
    for t in oracle.end_order:
        runs[t] = 1
    _kt.retry_queue(oracle).extend(t for t in ids if trials[t].status not in ENDED)
    placed: dict[str, int] = {}
    index: int | None  # the trial's bracket: None when its parent is gone
    for trial_id in ids:
        values = trials[trial_id].hyperparameters.values
        round_num = values.get("tuner/round", 0) or 0
        if round_num == 0:
            index = _bracket_for(oracle, plan, values)
            oracle.brackets[index][0].append({"id": trial_id, "parent": None})
            oracle.taken.add(config_key(space_values(values)))
        else:
            parent = values.get("tuner/trial_id")
            index = placed.get(parent)
            if index is None:
                continue  # its parent is gone: it stays a trial file, outside the brackets
            oracle.brackets[index][round_num].append({"id": trial_id, "parent": parent})
        placed[trial_id] = index
    oracle.save()


def _bracket_for(oracle, plan: HyperbandPlan, values: dict) -> int:
    slot = values.get("xtune/slot")
    if slot is not None:
        ends = list(itertools.accumulate(b.rounds[0].trials for b in plan.brackets))
        index = next((i for i, end in enumerate(ends) if slot < end), len(ends) - 1)
    else:
        number = values.get("tuner/bracket")
        index = next((i for i, rounds in enumerate(oracle.brackets)
                      if plan.brackets[i].number == number and len(rounds[0]) < plan.brackets[i].rounds[0].trials),
                     len(oracle.brackets))
    while len(oracle.brackets) <= index:
        oracle.brackets.append([[] for _ in plan.brackets[len(oracle.brackets)].rounds])
    return index

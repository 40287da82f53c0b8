"""Hand-made search directories for the read model's tests: the files a search writes, no training."""

import contextlib
import fcntl
import json
from pathlib import Path

from xtune.search._project import LOCK_FILE, SearchSettings, write_run
from xtune.spaces import load_space

VALUES = {"num_stages": 2, "base_width": 8}  # a small member of the family (the rest: the space's defaults)


def new_project(path: Path, *, class_names=("a", "b"), run_extra=None, **settings) -> Path:
    """run.json of a search over the "small" space (10 trials, 4 epochs: 10 planned trials unless changed)."""
    path.mkdir(parents=True, exist_ok=True)
    settings = {"max_trials": 10, "max_epochs": 4, "image_size": 32, **settings}
    write_run(path, SearchSettings(data="generated", **settings), load_space("small").to_dict(),
              {"class_names": list(class_names)}, run_extra)
    return path


def write_trial(project: Path, trial_id: str, status: str = "COMPLETED", score=None, *, bracket=0, round=0,
                epochs=2, initial_epoch=0, parent=None, seed=None, history=(), best_epoch=None, record=True,
                trial_json=True, message=None, backup_epochs=None, values=VALUES, record_seed=None, record_status=None,
                **fields) -> Path:
    """``trial_<id>/trial.json`` (KerasTuner's) and ``xtune.json`` (ours), as a search leaves them.

    ``record``: False leaves out xtune.json, "damaged" writes a broken one; ``trial_json``
    likewise; ``seed`` goes to trial.json (``xtune/seed``), ``record_seed`` and ``record_status``
    to the record; ``fields``: more of the record's fields (params, flops, reason, seconds, ...).
    """
    folder = project / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    hp = {**values, "tuner/bracket": bracket, "tuner/round": round, "tuner/epochs": epochs,
          "tuner/initial_epoch": initial_epoch}
    if parent is not None:
        hp["tuner/trial_id"] = parent
    if seed is not None:
        hp["xtune/seed"] = seed
    if trial_json == "damaged":
        (folder / "trial.json").write_text('{"trial_id": "00')
    elif trial_json:
        (folder / "trial.json").write_text(json.dumps({
            "trial_id": trial_id, "status": status, "score": score, "message": message,
            "hyperparameters": {"space": [], "values": hp}}))
    if record == "damaged":
        (folder / "xtune.json").write_text("[1, 2]")  # JSON, but not a record
    elif record:
        (folder / "xtune.json").write_text(json.dumps({
            "trial_id": trial_id, "values": dict(values), "bracket": bracket, "round": round, "epochs": epochs,
            "initial_epoch": initial_epoch, "parent": parent, "history": list(history), "best_epoch": best_epoch,
            "seed": record_seed, "status": record_status, **fields}))
    if backup_epochs is not None:
        (folder / "backup").mkdir()
        (folder / "backup" / "state.json").write_text(json.dumps({"epochs_done": backup_epochs}))
    return folder


def write_oracle(project: Path, start_order) -> None:
    (project / "oracle.json").write_text(json.dumps({"start_order": list(start_order)}))


@contextlib.contextmanager
def held_lock(project: Path, owner=None):
    """Hold the search's lock as a running search does (``lock_owner`` then names ``owner``)."""
    owner = owner or {"pid": 12345, "host": "here"}
    with open(Path(project) / LOCK_FILE, "w") as lock:
        lock.write(json.dumps(owner))
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield owner
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

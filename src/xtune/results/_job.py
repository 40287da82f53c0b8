"""What an export will do, decided before any data is loaded or anything trained.

``plan_export`` checks the options, picks the trial and the configuration, and
checks the export folder, so that every refusal comes before minutes of training.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from xtune import _atomic
from xtune._owned import EXPORT_ENTRIES, check_export_target, describe, entries, foreign, has_marker
from xtune.errors import ProjectError, UsageError
from xtune.results._candidates import lineage_best_epoch
from xtune.results._card import CARD_FILE
from xtune.results._rows import best_trial, completed_trials, trial_config
from xtune.search._state import ProjectState, TrialState, load_project
from xtune.spaces import PRESETS, MiniXceptionConfig

TRAIN_ON = ("train", "train+val")
RETRAIN = ("auto", "always", "never")


def default_export_dir(project: Path, preset: str | None = None) -> Path:
    """``runs/NAME/export`` for the searched model, ``runs/NAME/export-<preset>`` for a preset."""
    return Path(project) / ("export" if preset is None else f"export-{preset}")


@dataclass
class ExportJob:
    """What an export will do, decided before any data is loaded or anything trained."""

    state: ProjectState
    out: Path
    name: str  # "searched", or the preset's name
    preset: str | None
    trial: TrialState | None  # the trial exported (None for a preset trained with --epochs)
    config: MiniXceptionConfig
    retrain: str  # "auto", "always" or "never" (RETRAIN)
    train_on: str
    epochs: int | None
    best_epoch: int
    checkpoint: Path | None
    seed: int


def plan_export(project: Path, *, out, epochs, train_on, retrain, preset, trial_id, overwrite, data_dir) -> ExportJob:
    """Check the options and decide what to export where; refuse before anything is trained."""
    from xtune.search._tuner import CHECKPOINT, trial_seed

    state = load_project(project)
    settings = state.settings
    if train_on not in TRAIN_ON:
        raise UsageError(f"--train-on must be one of {', '.join(TRAIN_ON)}; got {train_on!r}")
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"no preset named {preset!r} (presets: {', '.join(PRESETS)})")
    retrain = {True: "auto", False: "never"}.get(retrain, retrain)
    if retrain not in RETRAIN:
        raise UsageError(f"--retrain must be one of {', '.join(RETRAIN)}; got {retrain!r}")
    if retrain == "never" and preset is not None:
        raise UsageError("--no-retrain exports a trial's checkpoint; a preset has none (drop one of them)")
    if retrain == "never" and epochs is not None:
        raise UsageError("--epochs sets the retraining; it has no effect with --no-retrain")
    if retrain == "never" and train_on != "train":
        raise UsageError("--train-on sets the retraining; it has no effect with --no-retrain")
    if retrain == "auto" and (preset is not None or train_on != "train"):
        retrain = "always"  # nothing to compare with: a preset has no checkpoint; train+val leaves no validation
    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs must be at least 1; got {epochs}")
    out = Path(out) if out is not None else default_export_dir(project, preset)
    check_export_folder(out, state, data_dir, overwrite)
    trial: TrialState | None = None
    if trial_id is not None:
        if preset is not None:
            raise UsageError("--trial picks the configuration to export; a preset is another one (drop one of them)")
        trial = _completed_trial(state, trial_id)
    elif preset is None or epochs is None:
        trial = best_trial(state)  # ProjectError when no trial has completed
    if preset is not None:
        config = PRESETS[preset]
    else:
        assert trial is not None  # without a preset, --trial or the best trial was picked above
        config = trial_config(state, trial)
    checkpoint = project / f"trial_{trial.trial_id}" / CHECKPOINT if trial is not None else None
    if retrain == "never" and (checkpoint is None or not checkpoint.is_file()):
        assert trial is not None  # --no-retrain refuses a preset above, so a trial was picked
        raise ProjectError(f"trial {trial.trial_id} has no checkpoint ({checkpoint}); export it with retraining")
    best_epoch = lineage_best_epoch(state, trial) if trial is not None else 1
    # The trial's own seed (as the tuner set it): a first-round trial retrained on
    # "train" repeats its search run exactly. A preset shares it, for a fair comparison.
    seed = settings.seed
    if trial is not None:
        seed = trial.seed if trial.seed is not None else trial_seed(settings.seed, trial.trial_id)
    return ExportJob(state, out, preset or "searched", preset, trial, config, retrain, train_on, epochs, best_epoch,
                     checkpoint, seed)


def check_export_folder(out: Path, state, data_dir, overwrite: bool) -> None:
    """Refuse an export folder that is not ours to write (before any training).

    ``out`` may not overlap the search or the data (``check_export_target``). An
    existing ``out`` is replaced only with ``overwrite`` and only when xtune wrote it
    (its marker, or an export card from before markers) and it holds nothing else.

    Raises:
        UsageError: ``out`` overlaps the search or the data, or holds files xtune did
            not write (named; nothing is deleted).
        ProjectError: ``out`` holds an earlier export and ``overwrite`` is off.
    """
    from xtune.data._store import resolve_data_dir

    source = Path(state.settings.data).expanduser()
    check_export_target(out, state.path, [resolve_data_dir(data_dir), source if source.is_dir() else None])
    present = entries(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; choose a folder")
    if present:
        ours = has_marker(out, "export") or (out / CARD_FILE).is_file()
        others = foreign(out, EXPORT_ENTRIES) if ours else present
        if others:
            raise UsageError(f"{out} holds files xtune did not write ({describe(others, out)}); "
                             "choose another --out")
        if not overwrite:
            raise ProjectError(f"{out} holds an earlier export; pass --overwrite to replace it, or choose another --out")
    _atomic.check_writable(out.parent, "--out")


def _completed_trial(state: ProjectState, trial_id: str) -> TrialState:
    wanted = str(trial_id).zfill(4) if str(trial_id).isdigit() else str(trial_id)
    for trial in completed_trials(state):
        if trial.trial_id == wanted:
            return trial
    known = {t.trial_id: t.status for t in state.trials}
    if wanted in known:
        raise ProjectError(f"trial {wanted} of {state.path} is {known[wanted]}, not completed; it has no result to export")
    raise ProjectError(f"{state.path} has no trial {trial_id!r} (see: tune results --project {shlex.quote(str(state.path))})")

"""`tune export`: rebuild the best configuration (or a preset), retrain it, test it, export it.

```
runs/NAME/export/            (or --out; runs/NAME/export-seed/ for --preset seed)
  model.keras                the inference model (no augmentation layers), compiled
  saved_model/               model.export(): a `serve` signature on images of the input size
  model.tflite               converted from saved_model/
  model_card.json, README.md what it is, what it was trained on, how well it tests
```

The folder is built as a hidden sibling (``.export.tmp-*``, ``xtune._atomic.atomic_directory``)
and renamed into place once every format has been reloaded and agrees with the
trained model; a failed or interrupted export leaves no model folder behind. It
carries xtune's marker (``.xtune-export``): ``--overwrite`` replaces only such a folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xtune import _atomic
from xtune._events import Event, ExportEnded, ExportPhase, ExportStarted
from xtune._owned import (
    EXPORT_ENTRIES,
    PARETO_DIR,
    check_export_target,
    describe,
    entries,
    foreign,
    has_marker,
    write_marker,
)
from xtune.errors import DataError, ProjectError, UsageError
from xtune.results._card import render_card_markdown
from xtune.results._metrics import classification_metrics
from xtune.results._rows import best_trial, completed_trials, trial_config
from xtune.results._rows import class_names as recorded_class_names
from xtune.search._state import ProjectState, TrialState, load_project
from xtune.spaces import PRESETS, MiniXceptionConfig

CARD_FILE = "model_card.json"
CARD_FORMAT = 1
TRAIN_ON = ("train", "train+val")
RETRAIN = ("auto", "always", "never")
# Every reloaded format must give the trained model's probabilities within this
# (max absolute difference over CHECK_IMAGES test images), or the export fails.
TOLERANCE = 1e-4
CHECK_IMAGES = 32


@dataclass(frozen=True)
class ExportReport:
    """What ``export_model`` wrote.

    Attributes:
        out: The export folder.
        card: The model card (``model_card.json``) as a dict.
    """

    out: Path
    card: dict

    @property
    def test(self) -> dict:
        """The test metrics of the exported model."""
        return self.card["test"]

    @property
    def comparison(self) -> dict:
        """Test metrics of the other exports of the same search, by name (may be empty)."""
        return self.card.get("comparison", {})


def default_export_dir(project: Path, preset: str | None = None) -> Path:
    """``runs/NAME/export`` for the searched model, ``runs/NAME/export-<preset>`` for a preset."""
    return Path(project) / ("export" if preset is None else f"export-{preset}")


def default_epochs(best_epoch: int, train_size: int, trained_size: int) -> int:
    """Epochs of a retraining: the best trial's peak epoch, scaled to the data it now trains on.

    Training on more data (train+val) runs proportionally longer, as Chollet does
    when he retrains the tuned model on the full training data (*Deep Learning with
    Python*, 2nd ed., 13.1.1: ``epochs=int(best_epoch * 1.2)``).

    Args:
        best_epoch: The absolute epoch (1-based) at which the best trial peaked.
        train_size: Images in the training split (what the search trained on).
        trained_size: Images the retraining trains on.
    """
    return max(1, int(best_epoch * trained_size / max(train_size, 1) + 0.5))


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


def export_model(
    project: Path,
    *,
    out: Path | None = None,
    epochs: int | None = None,
    train_on: str = "train",
    retrain: str | bool = "auto",
    preset: str | None = None,
    trial_id: str | None = None,
    overwrite: bool = False,
    data_dir: Path | None = None,
    progress: Callable[[Event], None] | None = None,
    splits: Any = None,
    latency: bool = False,
) -> ExportReport:
    """Retrain the best configuration of a search (or a preset), test it and export it.

    The steps, each a function below: ``plan_export`` (what, where; every refusal
    happens here, before any training), ``load_export_data``, ``train_or_load``
    (rebuilt from the stored hyperparameters and trained from scratch with the
    trial's seed, reseeded each epoch as in the search, its batch size,
    augmentation and data order: a first-round trial retrained on "train" repeats
    its search run exactly), ``refresh_batch_norm`` (see ``reestimate_batch_norm``;
    the card keeps the test metrics before and after), ``evaluate_export`` (the
    test split), ``write_export`` (``model.keras``, ``saved_model/`` and
    ``model.tflite``, each reloaded and checked against the model, ``TOLERANCE``).

    Args:
        project: The search directory.
        out: The export folder (default ``default_export_dir(project, preset)``).
        epochs: Training epochs (default: the epoch that validated best across the
            trial's lineage, its promotions included, see ``lineage_best_epoch`` and
            ``default_epochs``).
        train_on: "train" or "train+val" (the validation split joins the training
            data; the test split is never trained on).
        retrain: "auto" (the default): retrain, then ship whichever of the retrained
            model and the search's own checkpoint of the trial validates better;
            "always": ship the retrained model; "never": ship the checkpoint (True and
            False mean "auto" and "never").
        preset: Train this ``PRESETS`` configuration (e.g. "seed", the book's model)
            instead of the searched best, with the same data and settings.
        trial_id: Export this completed trial instead of the best one.
        overwrite: Replace ``out`` if xtune wrote it (an earlier export).
        data_dir: Where prepared data is cached (as for ``tune search``).
        progress: Called with events (``ExportStarted``, ``ExportPhase``,
            ``EpochEnded``, ``ExportEnded``).
        splits: Pre-built data splits (as ``run_search`` accepts); by default the
            search's data is prepared and split again, and must be unchanged.
        latency: Measure the exported TFLite model's latency on this machine (one
            thread, one image, median of repeated runs; ``tflite_latency``).

    Returns:
        An ``ExportReport``.

    Raises:
        UsageError: Contradictory options, or an ``out`` that is not ours to write.
        ProjectError: No such search, no completed trial, ``out`` holds an earlier
            export (without ``overwrite``), a format that does not reload or does not
            agree with the trained model.
        DataError: The search's data cannot be loaded or has changed.
    """
    emit = progress or (lambda event: None)
    job = plan_export(Path(project), out=out, epochs=epochs, train_on=train_on, retrain=retrain, preset=preset,
                      trial_id=trial_id, overwrite=overwrite, data_dir=data_dir)
    emit(ExportPhase("data", f"loading the data of {job.state.settings.data}"))
    splits, data_info = load_export_data(job, data_dir, splits)
    from xtune._runtime import configure_devices

    configure_devices("off")  # float32: what TFLite and SavedModel get, checked as trained
    emit(ExportStarted(job.name, str(job.out), job.retrain != "never", job.epochs, job.train_on,
                       job.trial.trial_id if job.trial else None, job.config.to_dict(), dict(splits.sizes)))
    candidates = []
    if job.retrain != "never":
        candidates.append(train_candidate(job, splits, emit))
    if job.retrain != "always" and job.checkpoint is not None and job.checkpoint.is_file():
        candidates.append(checkpoint_candidate(job, splits, emit))
    for candidate in candidates:
        candidate.bn = refresh_batch_norm(job, candidate.model, splits, candidate.stream, emit)
    chosen, selection = choose_candidate(job, candidates, splits, emit)
    emit(ExportPhase("evaluate", "evaluating on the test split"))
    inference = inference_model(chosen.model, job.config, splits)
    test, check_images = _evaluate(inference, splits.test, list(splits.class_names))
    if chosen.bn is not None:
        chosen.bn["test_after"] = {k: test[k] for k in ("accuracy", "loss")}
    card = model_card(job, inference, splits, data_info, chosen, selection, test)
    write_export(job, inference, card, check_images, emit, latency=latency)
    emit(ExportEnded(str(job.out), test, card["comparison"]))
    return ExportReport(job.out, card)


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


def load_export_data(job: ExportJob, data_dir, splits):
    """The splits to train and test on (unchanged since the search), and the data record for the card."""
    splits, data_info = _splits_for(job.state, data_dir, splits)
    names = list(splits.class_names)
    recorded = recorded_class_names(job.state)
    if recorded and recorded != names:
        raise DataError(f"the classes of {job.state.settings.data!r} are {names}, but the search trained on {recorded}")
    if job.retrain != "never" and job.epochs is None:
        sizes = dict(splits.sizes)
        trained = int(sizes["train"]) + (int(sizes["validation"]) if job.train_on == "train+val" else 0)
        job.epochs = default_epochs(job.best_epoch, int(sizes["train"]), trained)
    return splits, data_info


@dataclass
class Candidate:
    """A model that may ship: the retrained one, or the search's own checkpoint of the trial."""

    name: str  # "retrained" or "checkpoint"
    model: object
    history: list
    seconds: float
    stream: tuple  # (training batches, steps per epoch): for the batch-norm re-estimation
    bn: dict | None = None
    validation: dict | None = None


def lineage_best_epoch(state, trial) -> int:
    """The epoch that validated best across a trial's lineage (it and its Hyperband promotions).

    A promotion continues its parent, so a lineage is one training run in pieces; its
    epochs are ranked as trials are (the objective, then validation loss).
    """
    from xtune.search._state import rank_key

    family = _lineage(state, trial)
    epochs = [h for t in family for h in t.record.history if h.get("epoch")]
    if not epochs:
        return int(trial.record.best_epoch or trial.epochs or 1)
    objective, maximize = state.objective, state.maximize
    best = min(epochs, key=lambda h: rank_key(objective, maximize, h.get(objective), h.get("val_loss"),
                                               h.get("val_accuracy"), None, str(h["epoch"])))
    return int(best["epoch"])


def _lineage(state, trial) -> list:
    """The trials of one training run: the root of ``trial``'s promotions and every promotion from it."""
    by_id = {t.trial_id: t for t in state.trials}
    root = trial
    while root.parent is not None and root.parent in by_id:
        root = by_id[root.parent]
    family, frontier = [root], [root.trial_id]
    while frontier:
        children = [t for t in state.trials if t.parent in frontier and t.status == "COMPLETED"]
        family += children
        frontier = [t.trial_id for t in children]
    return [t for t in family if t.status == "COMPLETED"]


def _fresh_model(job: ExportJob, splits):
    import keras

    from xtune.spaces import build_model, compile_model

    keras.utils.set_random_seed(job.seed)
    input_shape = (job.state.settings.image_size, job.state.settings.image_size, 3)
    # Built as the search built it (its checkpoints load by layer name); exported as the book writes it.
    return compile_model(build_model(job.config, input_shape, len(splits.class_names), strided_projection=False),
                         job.config)


def train_candidate(job: ExportJob, splits, emit) -> Candidate:
    """Train the configuration from scratch with the trial's seed, for the lineage's best epoch."""
    import keras

    keras.backend.clear_session()
    model = _fresh_model(job, splits)
    started = time.monotonic()
    train_data, steps = _training_stream(splits, job.train_on, job.state.settings)
    trained = int(splits.sizes["train"]) + (int(splits.sizes["validation"]) if job.train_on == "train+val" else 0)
    emit(ExportPhase("train", f"training {job.epochs} epoch(s) on {job.train_on} ({trained} images, "
                              f"{steps} steps/epoch)"))
    assert job.epochs is not None  # load_export_data decides it before any training
    history = _fit(model, train_data, steps, job.epochs, None if job.train_on == "train+val" else splits.validation,
                   job.seed, emit)
    return Candidate("retrained", model, history, time.monotonic() - started, (train_data, steps))


def checkpoint_candidate(job: ExportJob, splits, emit) -> Candidate:
    """The search's own checkpoint of the trial (its best epoch), loaded."""
    assert job.trial is not None and job.checkpoint is not None  # only a trial's checkpoint is a candidate
    emit(ExportPhase("load", f"loading the best epoch of trial {job.trial.trial_id}"))
    started = time.monotonic()
    model = _fresh_model(job, splits)
    model.optimizer.build(model.trainable_variables)  # else Keras skips the optimizer state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_weights(os.fspath(job.checkpoint))
    best = job.trial.record.best_epoch or job.trial.epochs
    history = [h for t in _lineage(job.state, job.trial) for h in t.record.history if h.get("epoch", 0) <= best]
    history = sorted({h["epoch"]: h for h in history}.values(), key=lambda h: h["epoch"])
    return Candidate("checkpoint", model, history, time.monotonic() - started,
                     (splits.train(), splits.steps_per_epoch))


def choose_candidate(job: ExportJob, candidates: list, splits, emit):
    """The candidate that validates better (the objective, then validation loss) ships.

    Returns:
        ``(chosen, selection)``: ``selection`` is what the card says about the choice.
    """
    from xtune.search._state import rank_key

    names = list(splits.class_names)
    if len(candidates) > 1:
        emit(ExportPhase("choose", "validating the retrained model and the search's checkpoint"))
        for c in candidates:
            metrics = _evaluate(inference_model(c.model, job.config, splits), splits.validation, names)[0]
            c.validation = {"val_accuracy": metrics["accuracy"], "val_loss": metrics["loss"]}
    state = job.state

    def key(c):
        v = c.validation or {}
        return rank_key(state.objective, state.maximize, v.get(state.objective), v.get("val_loss"),
                        v.get("val_accuracy"), None, "0" if c.name == "retrained" else "1")

    chosen = min(candidates, key=key)
    selection = {"mode": job.retrain, "shipped": chosen.name,
                 "validation": {c.name: c.validation for c in candidates if c.validation is not None},
                 "rule": ("the better on validation (the objective, then validation loss; a tie goes to the "
                          "retrained model)" if len(candidates) > 1 else f"--retrain {job.retrain}")}
    if len(candidates) > 1:
        other = next(c for c in candidates if c is not chosen)
        emit(ExportPhase("choose", f"shipping the {chosen.name} model: {state.objective} "
                                   f"{chosen.validation[state.objective]:.4f} against {other.validation[state.objective]:.4f} "
                                   f"({other.name})"))
    return chosen, selection


def refresh_batch_norm(job: ExportJob, model, splits, train_stream, emit) -> dict | None:
    """Re-estimate batch-norm statistics of the final weights; None when the model has none."""
    import keras

    from xtune.spaces._batchnorm import batch_norm_layers, reestimate_batch_norm, reestimation_steps

    if not batch_norm_layers(model):
        return None
    before = _evaluate(inference_model(model, job.config, splits), splits.test, list(splits.class_names))[0]
    train_data, steps = train_stream
    count = reestimation_steps(steps)
    emit(ExportPhase("batch_norm", f"re-estimating batch-norm statistics over {count} training batches"))
    keras.utils.set_random_seed(job.seed)
    used = reestimate_batch_norm(model, iter(train_data), steps=count)
    return {"batches": used, "augmentation": job.config.augmentation,
            "test_before": {k: before[k] for k in ("accuracy", "loss")}}


def inference_model(model, config: MiniXceptionConfig, splits):
    """The trained model's weights in the model that is exported (no augmentation layers)."""
    size = int(splits.image_size)
    return _inference_model(model, config, (size, size, 3), len(splits.class_names))


def model_card(job: ExportJob, inference, splits, data_info, chosen: Candidate, selection: dict, test) -> dict:
    """What the exported model is, how it was trained, how it tests (``model_card.json``)."""
    names = list(splits.class_names)
    settings, trial = job.state.settings, job.trial
    trial_id = trial.trial_id if trial is not None else None  # a searched export always has its trial
    input_shape = (settings.image_size, settings.image_size, 3)
    sizes = {k: int(v) for k, v in dict(splits.sizes).items()}
    return {
        "format": CARD_FORMAT,
        "created": _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds"),
        "name": job.name,
        "model": {
            "source": (f"preset {job.preset!r} (xtune.spaces.PRESETS)" if job.preset is not None
                       else f"trial {trial_id} of the search in {job.state.path}"),
            "trial_id": trial_id if job.preset is None else None,
            "config": job.config.to_dict(),
            "widths": list(job.config.widths),
            "params": int(inference.count_params()),
            "input_shape": list(input_shape),
            "input": (f"RGB images resized (bilinear) to {input_shape[0]}x{input_shape[1]}, float32 pixel values "
                      "in [0, 255], batched: (batch, height, width, 3)"),
            "output": (f"(batch, 1): sigmoid probability of {names[1]!r}" if len(names) == 2
                       else f"(batch, {len(names)}): softmax probabilities in class_names order"),
        },
        "class_names": names,
        "data": {
            "source": settings.data,
            "fingerprint": (data_info or {}).get("fingerprint"),
            "splits": sizes,
            "trained_on": job.train_on,
            "training_images": sizes["train"] + (sizes["validation"] if job.train_on == "train+val" else 0),
        },
        "training": {
            "retrained": chosen.name == "retrained",
            "selection": selection,
            "epochs": job.epochs if chosen.name == "retrained" else job.best_epoch,
            "epochs_rule": _epochs_rule(chosen.name == "retrained", job.epochs, job.best_epoch, job.train_on, trial),
            "batch_size": settings.batch_size,
            "seed": job.seed,
            "augmentation": {"flip": job.config.flip, "rotation": job.config.rotation, "zoom": job.config.zoom},
            "optimizer": job.config.optimizer,
            "learning_rate": job.config.learning_rate,
            "seconds": round(chosen.seconds, 1),
            "history": chosen.history,
            "batch_norm_reestimation": chosen.bn,
        },
        "test": test,
        "search": _search_summary(job.state, trial),
        "formats": {},
        "comparison": {},
        "versions": _versions(),
    }


def write_export(job: ExportJob, inference, card: dict, check_images, emit, latency: bool = False) -> None:
    """Write every format into a hidden sibling, reload and compare, then install it as ``job.out``."""
    reference = np.asarray(inference(check_images, training=False))
    _atomic.remove_leftovers(job.out.parent, job.out.name)  # of an export that was killed
    with _atomic.atomic_directory(job.out) as tmp:
        emit(ExportPhase("write", "writing model.keras, saved_model/, model.tflite"))
        _write_formats(inference, tmp)
        emit(ExportPhase("verify", f"reloading every format and comparing predictions on {len(check_images)} test "
                                   f"images (tolerance {TOLERANCE:g})"))
        card["formats"] = verify_formats(tmp, check_images, reference)
        if latency:
            emit(ExportPhase("latency", "timing model.tflite on this machine (1 thread)"))
            card["latency"] = tflite_latency(tmp / "model.tflite", check_images[:1])
        card["comparison"] = _comparison(job.state.path, job.preset, card)
        _atomic.write_json(tmp / CARD_FILE, card)
        _atomic.write_text(tmp / "README.md", render_card_markdown(card))
        write_marker(tmp, "export")


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
    _check_writable(out.parent)


def _check_writable(folder: Path) -> None:
    """Refuse a folder this process cannot write in, before anything is trained."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    probe = existing / f".write-check{_atomic.TMP_MARK}{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ProjectError(f"cannot write in {existing} ({error.strerror or error}); "
                           "make it writable or choose another --out") from None


def _completed_trial(state: ProjectState, trial_id: str) -> TrialState:
    wanted = str(trial_id).zfill(4) if str(trial_id).isdigit() else str(trial_id)
    for trial in completed_trials(state):
        if trial.trial_id == wanted:
            return trial
    known = {t.trial_id: t.status for t in state.trials}
    if wanted in known:
        raise ProjectError(f"trial {wanted} of {state.path} is {known[wanted]}, not completed; it has no result to export")
    raise ProjectError(f"{state.path} has no trial {trial_id!r} (see: tune results --project {state.path})")


# -- data ---------------------------------------------------------------------------------


def _splits_for(state, data_dir, splits):
    """The splits to train and test on, and the data record for the card."""
    settings = state.settings
    recorded = state.run.get("data") or {}
    if splits is not None:
        return splits, recorded
    from xtune.data import load_splits, prepare_data

    prepared = prepare_data(settings.data, data_dir=data_dir, **settings.data_options())
    info = prepared.to_dict()
    if recorded.get("fingerprint") not in (None, info.get("fingerprint")):
        raise DataError(f"the data of {settings.data!r} changed since the search in {state.path} ran; "
                        "its test split would not be the one the search kept apart")
    return load_splits(prepared, image_size=settings.image_size, batch_size=settings.batch_size,
                       seed=settings.seed), info


def _training_stream(splits, train_on: str, settings):
    """(infinite batched dataset, steps per epoch) for "train" or "train+val"."""
    if train_on == "train":
        return splits.train(), splits.steps_per_epoch
    own = getattr(splits, "train_and_validation", None)
    if own is not None:
        return own()
    return train_and_validation(splits, settings.batch_size, settings.seed)


def train_and_validation(splits, batch_size: int, seed: int):
    """An infinite, shuffled, batched stream over the training and validation images.

    Draws from ``splits.train()`` (unbatched) and the validation images (repeated)
    at random, in proportion to the split sizes, with ``seed``. One epoch is
    ``ceil((train + validation) / batch_size)`` batches.

    Returns:
        ``(dataset, steps_per_epoch)``.
    """
    import tensorflow as tf

    n_train, n_val = int(splits.sizes["train"]), int(splits.sizes["validation"])
    train = splits.train().unbatch()
    val = splits.validation.unbatch().repeat().shuffle(min(max(n_val, 1), 256), seed=seed)
    total = n_train + n_val
    mixed = tf.data.Dataset.sample_from_datasets([train, val], weights=[n_train / total, n_val / total], seed=seed)
    return mixed.batch(batch_size).prefetch(tf.data.AUTOTUNE), math.ceil(total / batch_size)


# -- training and evaluation -----------------------------------------------------------------


def _fit(model, train_data, steps: int, epochs: int, validation, seed: int, emit) -> list[dict]:
    import keras

    from xtune.search._callbacks import EpochEvents, ReseedEachEpoch

    class History(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history = []

        def on_epoch_end(self, epoch, logs=None):
            self.history.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})

    history = History()
    model.fit(train_data, steps_per_epoch=steps, epochs=epochs, validation_data=validation,
              callbacks=[EpochEvents(emit, None, epochs), ReseedEachEpoch(seed), history], verbose=0, shuffle=False)
    return history.history


def _inference_model(model, config: MiniXceptionConfig, input_shape, num_classes: int):
    """``build_model(..., augmentation=False)`` with ``model``'s weights, copied by layer name."""
    from xtune.spaces import build_model, compile_model

    inference = build_model(config, input_shape, num_classes, augmentation=False)
    trained = {layer.name: layer for layer in model.layers}
    for layer in inference.layers:
        if layer.weights:
            layer.set_weights(trained[layer.name].get_weights())
    missing = [l.name for l in model.layers if l.weights and not l.name.startswith("augment_")
               and l.name not in {i.name for i in inference.layers}]
    if missing:  # pragma: no cover - the builder's names are systematic
        raise ProjectError(f"the inference model lacks the trained layers {missing}")
    return compile_model(inference, config)


def _evaluate(model, dataset, class_names: list[str]):
    """(test metrics, the first CHECK_IMAGES test images) of ``model`` on a finite dataset."""
    probabilities, labels, check = [], [], []
    kept = 0
    for images, batch_labels in dataset:
        images = np.asarray(images)
        probabilities.append(np.asarray(model(images, training=False)))  # eager: no retracing per batch size
        labels.append(np.asarray(batch_labels).reshape(-1))
        if kept < CHECK_IMAGES:
            check.append(images[: CHECK_IMAGES - kept])
            kept += len(check[-1])
    if not labels:
        raise DataError("the test split is empty; the export has nothing to test on")
    metrics = classification_metrics(np.concatenate(probabilities), np.concatenate(labels), class_names)
    return metrics, np.concatenate(check)


# -- formats ---------------------------------------------------------------------------------


def _write_formats(model, folder: Path) -> None:
    import tensorflow as tf

    model.optimizer.build(model.trainable_variables)  # saved with its variables: reloads without warnings
    model.save(folder / "model.keras")
    with contextlib.redirect_stdout(io.StringIO()):  # model.export prints its signature
        model.export(os.fspath(folder / "saved_model"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(os.fspath(folder / "saved_model"))
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # the converter raises its own ConverterError and others
        raise ProjectError(f"TFLite conversion failed: {_first_line(error)}") from None
    _atomic.write_bytes(folder / "model.tflite", flatbuffer)


def verify_formats(folder: Path, images: np.ndarray, reference: np.ndarray, tolerance: float = TOLERANCE) -> dict:
    """Reload every exported format and compare its predictions with ``reference``.

    Args:
        folder: An export folder (``model.keras``, ``saved_model/``, ``model.tflite``).
        images: A batch of images, ``(n, height, width, 3)`` float32 in [0, 255].
        reference: The trained model's outputs on ``images``.
        tolerance: The largest allowed absolute difference of any output.

    Returns:
        ``{"tolerance", "images", "model.keras": {"max_abs_diff"}, "saved_model":
        {...}, "model.tflite": {...}}``.

    Raises:
        ProjectError: A format does not reload, or differs by more than ``tolerance``.
    """
    folder = Path(folder)
    images = np.asarray(images, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    loaders = {"model.keras": _predict_keras, "saved_model": _predict_saved_model, "model.tflite": _predict_tflite}
    report: dict[str, Any] = {"tolerance": tolerance, "images": len(images)}
    for fmt, predict in loaders.items():
        try:
            outputs = np.asarray(predict(folder, images), dtype=np.float32)
        except Exception as error:
            raise ProjectError(f"export failed: {fmt} does not reload ({_first_line(error)}); nothing was written") from None
        if outputs.shape != reference.shape:
            raise ProjectError(f"export failed: {fmt} gives outputs of shape {outputs.shape}, the trained model "
                               f"{reference.shape}; nothing was written")
        diff = float(np.max(np.abs(outputs - reference))) if reference.size else 0.0
        if not diff <= tolerance:
            raise ProjectError(f"export failed: {fmt} predicts up to {diff:.2g} away from the trained model "
                               f"(tolerance {tolerance:g}); nothing was written")
        report[fmt] = {"max_abs_diff": diff}
    return report


def _predict_keras(folder: Path, images):
    import keras

    model = keras.models.load_model(folder / "model.keras")
    return model(images, training=False)


def _predict_saved_model(folder: Path, images):
    import tensorflow as tf

    loaded = tf.saved_model.load(os.fspath(folder / "saved_model"))
    return loaded.serve(tf.constant(images)).numpy()


def _predict_tflite(folder: Path, images):
    interpreter = tflite_interpreter(folder / "model.tflite")
    return run_tflite(interpreter, images)


def tflite_latency(path: Path, image: np.ndarray, repeats: int = 50, warmup: int = 5) -> dict:
    """Median seconds of one TFLite inference of one image on one CPU thread, over ``repeats`` runs."""
    import platform
    import statistics

    interpreter = tflite_interpreter(path, threads=1)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(image.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], np.asarray(image, dtype=inp["dtype"]))
    times = []
    for k in range(warmup + repeats):
        start = time.perf_counter()
        interpreter.invoke()
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return {"median_ms": round(statistics.median(times) * 1000, 3), "threads": 1, "repeats": repeats,
            "batch": int(image.shape[0]), "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "what": "TFLite interpreter, one thread, one image, median of repeated runs after warm-up"}


def export_pareto(project: Path, *, data_dir: Path | None = None, overwrite: bool = False,
                  progress: Callable[[Event], None] | None = None, latency: bool = True,
                  retrain: str | bool = "auto") -> list[ExportReport]:
    """Export every member of the accuracy-vs-size front into its own folder, side by side.

    Each goes to ``runs/NAME/export-pareto/trial_NNNN/`` (an ordinary export, with its
    card); ``export-pareto/front.json`` holds the side-by-side table.

    Returns:
        One ``ExportReport`` per member, smallest first.
    """
    from xtune.results._rows import pareto_front, trial_flops, trial_params

    state = load_project(project)
    front = sorted(pareto_front(state), key=lambda t: (trial_params(state, t) or 0, t.trial_id))
    if not front:
        best_trial(state)  # the ProjectError that says no trial has completed
    folder = Path(project) / PARETO_DIR

    def exported(r: ExportReport) -> TrialState:
        trial = state.trial(r.card["model"]["trial_id"])
        assert trial is not None  # exported just now from this state's front
        return trial

    reports = [export_model(project, out=folder / f"trial_{trial.trial_id}", trial_id=trial.trial_id,
                            overwrite=overwrite, data_dir=data_dir, progress=progress, latency=latency,
                            retrain=retrain) for trial in front]
    table = [{"trial_id": r.card["model"]["trial_id"], "score": exported(r).score,
              "test_accuracy": r.test["accuracy"], "params": r.card["model"]["params"],
              "flops": trial_flops(state, exported(r)),
              "latency_ms": (r.card.get("latency") or {}).get("median_ms"), "folder": str(r.out)} for r in reports]
    _atomic.write_json(folder / "front.json", {"objective": state.objective, "front": table})
    return reports


def tflite_interpreter(path: Path, threads: int | None = None):
    """A TFLite interpreter for ``path`` (TensorFlow's; its deprecation notice silenced)."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_path=os.fspath(path), num_threads=threads)


def run_tflite(interpreter, images: np.ndarray) -> np.ndarray:
    """Run a TFLite interpreter on a batch (resizing its batch dimension to fit)."""
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], np.asarray(images, dtype=inp["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


# -- the card ---------------------------------------------------------------------------------


def _epochs_rule(retrain, epochs, best_epoch, train_on, trial) -> str:
    if not retrain:
        return f"the search's checkpoint of trial {trial.trial_id}: its best epoch ({best_epoch}), not retrained"
    if trial is None:
        return "--epochs"
    lineage = f"the epoch that validated best across trial {trial.trial_id}'s lineage ({best_epoch})"
    if train_on == "train":
        return lineage
    return f"{lineage} x (train+val images / train images)"


def _search_summary(state, trial) -> dict:
    completed = completed_trials(state)
    best = completed[0] if completed else None
    return {
        "project": str(state.path),
        "objective": state.settings.objective,
        "image_size": state.settings.image_size,
        "max_epochs": state.settings.max_epochs,
        "trials_completed": len(completed),
        "trials_failed": sum(1 for t in state.trials if t.status == "FAILED"),
        "finished": state.finished is not None,
        "best_trial": best.trial_id if best else None,
        "best_score": float(best.score) if best and best.score is not None else None,
        "exported_trial": trial.trial_id if trial else None,
        "exported_trial_score": float(trial.score) if trial and trial.score is not None else None,
        "exported_trial_best_epoch": trial.record.best_epoch if trial else None,
    }


def _comparison(project: Path, preset: str | None, card: dict) -> dict:
    """Test metrics of the search's other default exports made on the same test split."""
    names = ["searched"] + list(PRESETS)
    found = {}
    for other in names:
        if other == card["name"]:
            continue
        path = default_export_dir(project, None if other == "searched" else other) / CARD_FILE
        if not path.is_file():
            continue
        try:
            theirs = _atomic.read_json(path)
        except ValueError:
            continue
        same = (theirs.get("class_names") == card["class_names"]
                and theirs.get("data", {}).get("fingerprint") == card["data"]["fingerprint"]
                and theirs.get("data", {}).get("splits", {}).get("test") == card["data"]["splits"].get("test"))
        if not same:
            continue
        found[other] = {
            "folder": str(path.parent),
            "accuracy": theirs["test"].get("accuracy"),
            "loss": theirs["test"].get("loss"),
            "per_class": theirs["test"].get("per_class"),
            "params": theirs.get("model", {}).get("params"),
            "epochs": theirs.get("training", {}).get("epochs"),
            "trained_on": theirs.get("data", {}).get("trained_on"),
        }
    return found


def _versions() -> dict:
    from xtune.search._project import library_versions

    return library_versions()


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]

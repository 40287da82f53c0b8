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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xtune import _atomic
from xtune._events import Event, ExportEnded, ExportPhase, ExportStarted
from xtune._owned import PARETO_DIR, write_marker
from xtune._runtime import configure_devices
from xtune.errors import DataError
from xtune.results._candidates import (
    Candidate,
    choose_candidate,
    evaluate,
    inference_model,
    refresh_batch_norm,
    train_or_load,
)
from xtune.results._card import CARD_FILE, model_card, render_card_markdown
from xtune.results._formats import TOLERANCE, tflite_latency, verify_formats, write_formats
from xtune.results._job import ExportJob, default_export_dir, plan_export
from xtune.results._rows import best_trial
from xtune.results._rows import class_names as recorded_class_names
from xtune.search._state import TrialState, load_project
from xtune.spaces import PRESETS


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

    The steps, each a function: ``plan_export`` (what, where; every refusal happens
    there, before any training), ``load_export_data``, ``train_or_load`` (the
    retrained model and/or the search's checkpoint of the trial; a first-round trial
    retrained on "train" repeats its search run exactly), ``refresh_batch_norm``
    (see ``reestimate_batch_norm``; the card keeps the test metrics before and
    after), ``choose_candidate``, ``evaluate_export`` (the test split),
    ``write_export`` (``model.keras``, ``saved_model/`` and ``model.tflite``, each
    reloaded and checked against the model, ``TOLERANCE``).

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
    configure_devices("off")  # float32: what TFLite and SavedModel get, checked as trained
    emit(ExportStarted(job.name, str(job.out), job.retrain != "never", job.epochs, job.train_on,
                       job.trial.trial_id if job.trial else None, job.config.to_dict(), dict(splits.sizes)))
    candidates = train_or_load(job, splits, emit)
    for candidate in candidates:
        candidate.bn = refresh_batch_norm(job, candidate.model, splits, candidate.stream, emit)
    chosen, selection = choose_candidate(job, candidates, splits, emit)
    inference, test, check_images = evaluate_export(job, chosen, splits, emit)
    card = model_card(job, inference, splits, data_info, chosen, selection, test)
    write_export(job, inference, card, check_images, emit, latency=latency)
    emit(ExportEnded(str(job.out), test, card["comparison"]))
    return ExportReport(job.out, card)


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


def evaluate_export(job: ExportJob, chosen: Candidate, splits, emit):
    """Test the model that ships, as it is exported (no augmentation layers).

    Returns:
        ``(inference model, test metrics, the first test images)``: the images are
        what every written format is checked on.
    """
    emit(ExportPhase("evaluate", "evaluating on the test split"))
    inference = inference_model(chosen.model, job.config, splits)
    test, check_images = evaluate(inference, splits.test, list(splits.class_names))
    if chosen.bn is not None:
        chosen.bn["test_after"] = {k: test[k] for k in ("accuracy", "loss")}
    return inference, test, check_images


def write_export(job: ExportJob, inference, card: dict, check_images, emit, latency: bool = False) -> None:
    """Write every format into a hidden sibling, reload and compare, then install it as ``job.out``."""
    reference = np.asarray(inference(check_images, training=False))
    _atomic.remove_leftovers(job.out.parent, job.out.name)  # of an export that was killed
    with _atomic.atomic_directory(job.out) as tmp:
        emit(ExportPhase("write", "writing model.keras, saved_model/, model.tflite"))
        write_formats(inference, tmp)
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

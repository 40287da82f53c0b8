"""The models an export may ship: the retrained one and the search's own checkpoint of the trial.

``train_or_load`` makes them (``job.retrain`` says which), ``refresh_batch_norm``
re-estimates each one's batch-norm statistics, ``choose_candidate`` keeps the one
that validates better. The epochs of a retraining come from the trial's lineage
(``lineage_best_epoch``): a Hyperband promotion continues its parent's training.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from xtune._events import ExportPhase
from xtune.errors import DataError, ProjectError
from xtune.results._formats import CHECK_IMAGES
from xtune.results._metrics import classification_metrics
from xtune.spaces import MiniXceptionConfig

if TYPE_CHECKING:
    from xtune.results._job import ExportJob


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


def train_or_load(job: ExportJob, splits, emit) -> list[Candidate]:
    """The candidates ``job.retrain`` asks for: the retrained model, the search's checkpoint, or both.

    The retrained model is rebuilt from the stored hyperparameters and trained from
    scratch with the trial's seed, reseeded each epoch as in the search, its batch
    size, augmentation and data order: a first-round trial retrained on "train"
    repeats its search run exactly.
    """
    candidates = []
    if job.retrain != "never":
        candidates.append(train_candidate(job, splits, emit))
    if job.retrain != "always" and job.checkpoint is not None and job.checkpoint.is_file():
        candidates.append(checkpoint_candidate(job, splits, emit))
    return candidates


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


def _fresh_model(job: ExportJob, splits):
    import keras

    from xtune.spaces import build_model, compile_model

    keras.utils.set_random_seed(job.seed)
    input_shape = (job.state.settings.image_size, job.state.settings.image_size, 3)
    # Built as the search built it (its checkpoints load by layer name); exported as the book writes it.
    return compile_model(build_model(job.config, input_shape, len(splits.class_names), strided_projection=False),
                         job.config)


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


def refresh_batch_norm(job: ExportJob, model, splits, train_stream, emit) -> dict | None:
    """Re-estimate batch-norm statistics of the final weights; None when the model has none."""
    import keras

    from xtune.spaces._batchnorm import batch_norm_layers, reestimate_batch_norm, reestimation_steps

    if not batch_norm_layers(model):
        return None
    before = evaluate(inference_model(model, job.config, splits), splits.test, list(splits.class_names))[0]
    train_data, steps = train_stream
    count = reestimation_steps(steps)
    emit(ExportPhase("batch_norm", f"re-estimating batch-norm statistics over {count} training batches"))
    keras.utils.set_random_seed(job.seed)
    used = reestimate_batch_norm(model, iter(train_data), steps=count)
    return {"batches": used, "augmentation": job.config.augmentation,
            "test_before": {k: before[k] for k in ("accuracy", "loss")}}


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
            metrics = evaluate(inference_model(c.model, job.config, splits), splits.validation, names)[0]
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


def inference_model(model, config: MiniXceptionConfig, splits):
    """The trained model's weights in the model that is exported (no augmentation layers)."""
    size = int(splits.image_size)
    return _inference_model(model, config, (size, size, 3), len(splits.class_names))


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


def evaluate(model, dataset, class_names: list[str]):
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

"""Keras callbacks of a trial: backups, best-epoch checkpoint, RNG, stop, NaN, progress."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import keras
import numpy as np
from keras_tuner.src import errors as kt_errors
from keras_tuner.src.engine import tuner_utils

from xtune import _atomic


class SearchInterrupted(kt_errors.FatalError):
    """Ctrl-C or SIGTERM: stop the search, leave the current trial resumable."""


class TooManyFailures(kt_errors.FatalError):
    """Too many trials failed in a row: stop the search (state saved)."""


class DiskFull(kt_errors.FatalError):
    """A checkpoint, backup or log could not be written for lack of space."""


class ChiefLost(kt_errors.FatalError):
    """A worker lost its chief (stopped or unreachable): stop, leave the trial resumable."""



def save_weights_atomic(model, path: Path) -> None:
    """``model.save_weights`` (weights and optimizer state), atomically."""
    with _atomic.atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)


class AtomicSaveBestEpoch(tuner_utils.SaveBestEpoch):
    """KerasTuner's best-epoch checkpoint, written atomically, resumable mid-trial.

    Args:
        objective: The tuner's objective.
        filepath: The checkpoint (``.weights.h5``).
        best_value: The best objective value of the epochs already trained (resume).
    """

    def __init__(self, objective, filepath, best_value=None):
        super().__init__(objective=objective, filepath=filepath)
        if best_value is not None:
            self.best_value = best_value

    def _save_model(self):
        save_weights_atomic(self.model, Path(self.filepath))


class EpochBackup(keras.callbacks.Callback):
    """After every epoch, save what resuming this trial needs, atomically.

    ``epoch-NNNN.weights.h5`` holds the weights and the optimizer state after epoch
    NNNN; ``state.json`` (written after it) names it and holds the epoch counter, the
    per-epoch history and the best objective value so far. A kill between the two
    writes leaves the previous, consistent pair. Older weight files are removed.

    Args:
        folder: The trial's backup folder.
        history_before: Epoch records of the runs before this one (resume).
        best_tracker: The ``AtomicSaveBestEpoch`` whose best value is saved with it.
    """

    def __init__(self, folder: Path, history_before: list[dict], best_tracker: AtomicSaveBestEpoch):
        super().__init__()
        self.folder = Path(folder)
        self.history = list(history_before)
        self.best_tracker = best_tracker

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        self.history.append(record)
        weights = self.folder / f"epoch-{epoch + 1:04d}.weights.h5"
        save_weights_atomic(self.model, weights)
        best = self.best_tracker.best_value
        _atomic.write_json(
            self.folder / "state.json",
            {"epochs_done": epoch + 1, "weights": weights.name, "history": self.history,
             "best_value": best if math.isfinite(best) else None},
        )
        for old in self.folder.glob("epoch-*.weights.h5"):
            if old != weights:
                old.unlink(missing_ok=True)


def load_backup(folder: Path) -> dict | None:
    """The backup of an interrupted trial (``state.json`` + its weights), or None."""
    state_file = Path(folder) / "state.json"
    if not state_file.exists():
        return None
    try:
        state = _atomic.read_json(state_file)
    except ValueError:
        return None  # a damaged backup only costs the epochs it held
    weights = Path(folder) / state.get("weights", "")
    if not weights.is_file():
        return None
    state["weights_path"] = weights
    return state


class ReseedEachEpoch(keras.callbacks.Callback):
    """Set every random layer's generator from (trial seed, epoch) at each epoch start.

    Augmentation and dropout draws of epoch ``e`` then depend only on the trial's seed
    and ``e``, so a trial resumed at epoch ``e`` draws what it would have drawn.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        states = [v for v in self.model.variables if v.name == "seed_generator_state"]
        for i, variable in enumerate(states):
            value = (self.seed * 1_000_003 + epoch * 7_919 + i) % (2**31 - 1)
            variable.assign(np.array([value, 0], dtype=variable.dtype))


class StopOnRequest(keras.callbacks.Callback):
    """Raise ``SearchInterrupted`` at the next batch once ``event`` is set."""

    def __init__(self, event: threading.Event):
        super().__init__()
        self.event = event

    def on_train_batch_begin(self, batch, logs=None):
        if self.event.is_set():
            raise SearchInterrupted("interrupted")

    on_test_batch_begin = on_train_batch_begin


class FailOnNaN(keras.callbacks.Callback):
    """Fail the trial (with its reason) when the training loss is not finite."""

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise kt_errors.FailedTrialError(f"loss became {loss} in epoch {epoch + 1}")


class EpochEvents(keras.callbacks.Callback):
    """Report each epoch to the search's progress function."""

    def __init__(self, emit, trial_id: str, total_epochs: int):
        super().__init__()
        self.emit = emit
        self.trial_id = trial_id
        self.total_epochs = total_epochs
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.emit({
            "event": "epoch_end", "trial_id": self.trial_id, "epoch": epoch + 1,
            "epochs": self.total_epochs, "seconds": time.monotonic() - self._start,
            "logs": {k: float(v) for k, v in (logs or {}).items()},
        })

"""Keras callbacks of a trial: backups, best-epoch checkpoint, RNG, stop, NaN, progress."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import keras
import numpy as np
from keras_tuner.errors import FailedTrialError, FatalError

from xtune import _atomic
from xtune._events import BatchProgress, EpochEnded


class SearchInterrupted(FatalError):
    """Ctrl-C or SIGTERM: stop the search, leave the current trial resumable."""


class RecycleProcess(FatalError):
    """Between trials, the process's memory has grown past its budget: end it, so that the
    supervisor resumes the search in a fresh process (state is saved; nothing is lost)."""

    def __init__(self, rss_mb: float, grown_mb: float):
        super().__init__(f"memory grew by {grown_mb:.0f} MB since the first trial of this process")
        self.rss_mb, self.grown_mb = rss_mb, grown_mb


class TooManyFailures(FatalError):
    """Too many trials failed in a row: stop the search (state saved)."""


class DiskFull(FatalError):
    """A checkpoint, backup or log could not be written for lack of space."""


class ChiefLost(FatalError):
    """A worker lost its chief (stopped or unreachable): stop, leave the trial resumable."""


def save_weights_atomic(model, path: Path) -> None:
    """``model.save_weights`` (weights and optimizer state), atomically."""
    with _atomic.atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)


def snapshot(model) -> list:
    """Every variable of the model and its optimizer, as numpy arrays (a consistent copy)."""
    return [v.numpy() for v in model.variables] + [v.numpy() for v in model.optimizer.variables]


def restore_snapshot(model, arrays: list) -> None:
    """Put a ``snapshot`` back (the optimizer is built first if it is not)."""
    model.optimizer.build(model.trainable_variables)
    variables = list(model.variables) + list(model.optimizer.variables)
    if len(variables) != len(arrays) or any(tuple(v.shape) != a.shape for v, a in zip(variables, arrays)):
        raise ValueError("the backup does not match this model")
    for variable, value in zip(variables, arrays):
        variable.assign(value)


class EpochState(keras.callbacks.Callback):
    """Per epoch: the history, the best epoch so far, and (optionally) a backup.

    Each epoch end takes one numpy snapshot of the weights and optimizer state (cheap;
    a Keras ``.weights.h5`` save costs ~75 ms even for a tiny model). The best
    epoch's snapshot is kept in memory; the trial's KerasTuner checkpoint is written
    from it once, when the trial ends (``best_arrays``).

    With ``folder``, every epoch also writes ``epoch-NNNN.npz`` (the current and, if
    different, the best snapshot) and then ``state.json`` naming it, both atomically:
    a kill between the two leaves the previous consistent pair. Older files are
    removed.

    Args:
        objective: The tuner's objective.
        folder: The trial's backup folder, or None for no backups.
        resume: A ``load_backup`` result to continue from, or None.
        last_epoch: The trial's last epoch (not backed up), or None.
    """

    def __init__(self, objective, folder: Path | None, resume: dict | None = None, last_epoch: int | None = None):
        super().__init__()
        self.objective = objective
        self.folder = Path(folder) if folder is not None else None
        self.last_epoch = last_epoch
        resume = resume or {}
        self.history = list(resume.get("history", []))
        self.best_value = resume.get("best_value")
        self.best_epoch = resume.get("best_epoch")
        self.best_arrays = resume.get("best_arrays")

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.history.append({"epoch": epoch + 1, **logs})
        current = snapshot(self.model)
        value = self.objective.get_value(logs) if self.objective.has_value(logs) else None
        improved = value is not None and math.isfinite(value) and (
            self.best_value is None or self.objective.better_than(value, self.best_value))
        if improved or self.best_arrays is None:
            self.best_arrays, self.best_epoch = current, epoch + 1
            if improved:
                self.best_value = value
        # The last epoch needs no backup: the trial's checkpoint is written next and the
        # backup removed (a kill in between redoes one epoch; nothing is lost).
        if self.folder is not None and epoch + 1 != self.last_epoch:
            self._write(epoch + 1, current)

    def _write(self, epochs_done: int, current: list) -> None:
        import io

        assert self.folder is not None and self.best_arrays is not None  # on_epoch_end: backups on, a best kept
        arrays = {f"c{i}": a for i, a in enumerate(current)}
        if self.best_arrays is not current:
            arrays.update({f"b{i}": a for i, a in enumerate(self.best_arrays)})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        name = f"epoch-{epochs_done:04d}.npz"
        _atomic.write_bytes(self.folder / name, buffer.getvalue())
        _atomic.write_json(self.folder / "state.json", {
            "epochs_done": epochs_done, "file": name, "history": self.history,
            "best_value": self.best_value, "best_epoch": self.best_epoch,
        })
        for old in self.folder.glob("epoch-*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)


def load_backup(folder: Path) -> dict | None:
    """The backup of an interrupted trial, or None (a damaged one only costs its epochs)."""
    state_file = Path(folder) / "state.json"
    if not state_file.exists():
        return None
    try:
        state = _atomic.read_json(state_file)
        with np.load(Path(folder) / state["file"]) as data:
            n = sum(1 for k in data.files if k.startswith("c"))
            state["arrays"] = [data[f"c{i}"] for i in range(n)]
            has_best = "b0" in data.files
            state["best_arrays"] = [data[f"b{i}"] for i in range(n)] if has_best else state["arrays"]
    except (ValueError, KeyError, OSError):
        return None
    return state


class ValidateEachEpoch(keras.callbacks.Callback):
    """Validation at each epoch end, judged as export ships the model.

    With few steps per epoch, batch-norm moving statistics lag the weights and an
    inference-mode validation scores the model at chance whatever it learned
    (docs/ENGINE.md, "Batch norm on small datasets"); Hyperband would then drop the
    architecture on a score that says nothing about it. So, before validating, a model
    with batch norm gets its statistics re-estimated over this epoch's own training
    batches (at most ``max_batches``), as `tune export` does before testing. The
    weights are untouched (training uses batch statistics, not the moving ones). The
    ``val_*`` results join the epoch's logs, for the callbacks after this one.

    Args:
        validation: The validation dataset.
        batches: ``epoch -> iterable of training batches`` (that epoch's, 0-based).
        steps: Training batches per epoch.
        refresh: Re-estimate the statistics (off only to measure what it changes).
        max_batches: The most batches the re-estimation uses.
    """

    def __init__(self, validation, batches, steps: int, refresh: bool = True, max_batches: int = 32):
        super().__init__()
        self.validation = validation
        self.batches = batches
        self.count = max(1, min(int(steps), max_batches))
        self.refresh = refresh
        self._layers: list | None = None

    def on_train_begin(self, logs=None):
        from xtune.spaces._batchnorm import batch_norm_layers

        # Measured on the demo (40 steps per epoch): even momentum 0.9 (a window of ten
        # batches) left statistics that validated at 0.78 where refreshed ones gave 0.83,
        # as early epochs move the weights fast; so every batch-norm model is refreshed.
        self._layers = batch_norm_layers(self.model) if self.refresh else []
        self._forward = None

    def on_epoch_end(self, epoch, logs=None):
        from xtune._runtime import training_forward
        from xtune.spaces._batchnorm import reestimate_batch_norm

        if self._layers:
            self._forward = self._forward or training_forward(self.model)
            reestimate_batch_norm(self.model, iter(self.batches(epoch)), steps=self.count, forward=self._forward)
        results = self.model.evaluate(self.validation, verbose=0, return_dict=True)
        if logs is not None:
            logs.update({f"val_{k}": float(v) for k, v in results.items()})


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
            raise FailedTrialError(f"loss became {loss} in epoch {epoch + 1}")


class EpochEvents(keras.callbacks.Callback):
    """Report each epoch (``EpochEnded``) to the search's progress function."""

    def __init__(self, emit, trial_id: str | None, total_epochs: int, worker: str | None = None):
        super().__init__()
        self.emit = emit
        self.trial_id = trial_id
        self.total_epochs = total_epochs
        self.worker = worker
        self._start: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        assert self._start is not None  # Keras begins each epoch before ending it
        self.emit(EpochEnded(self.trial_id, epoch + 1, self.total_epochs, time.monotonic() - self._start,
                             {k: float(v) for k, v in (logs or {}).items()}, worker=self.worker))


class BatchEvents(keras.callbacks.Callback):
    """Report progress inside an epoch (``BatchProgress``), at most every ``every`` seconds."""

    def __init__(self, emit, trial_id: str | None, total_epochs: int, steps: int, worker: str | None = None,
                 every: float = 1.0):
        super().__init__()
        self.emit, self.trial_id, self.total_epochs, self.steps, self.worker = emit, trial_id, total_epochs, steps, worker
        self.every = every
        self._epoch = 0
        self._last = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1
        self._last = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.emit(BatchProgress(self.trial_id, self._epoch, self.total_epochs, batch + 1, self.steps,
                                    worker=self.worker))


class AbortAt(keras.callbacks.Callback):
    """Test hook (``XTUNE_FAULT_ABORT=<trial_id>:<epoch>``): kill the process with SIGABRT
    when that trial starts that epoch (1-based), as a crash inside TensorFlow would."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            os.abort()

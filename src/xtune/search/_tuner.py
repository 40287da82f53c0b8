"""The tuner: KerasTuner's Tuner running our trials, resumable to the epoch."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import threading
import time
from pathlib import Path

import keras
import keras_tuner

from xtune._events import MemoryRecycled, TrialEnded, TrialRetry, TrialStarted
from xtune._runtime import rss_mb
from xtune.search import _kt
from xtune.search._callbacks import (
    AbortAt,
    BatchEvents,
    DiskFull,
    EpochEvents,
    EpochState,
    FailOnNaN,
    RecycleProcess,
    ReseedEachEpoch,
    SearchInterrupted,
    StopOnRequest,
    TooManyFailures,
    ValidateEachEpoch,
    load_backup,
    restore_snapshot,
    save_weights_atomic,
)
from xtune.search._oracle import SEED_KEY
from xtune.search._state import TRIAL_RECORD, TrialRecord, space_values

CHECKPOINT = "checkpoint.weights.h5"
CRASHES_PER_TRIAL = 2
# TensorFlow 2.21's oneDNN CPU kernels have corrupted the heap here (SIGSEGV, "corrupted
# size vs. prev_size"). The one found, the filter gradient of a strided 1x1 conv on odd
# batches, is avoided by the builder (strided_projection=False); for any other, turning
# oneDNN off is the user's way out, at 1.5-3x slower CPU training, so it is only a hint.
_CRASH_HINT = "; on a CPU, TF_ENABLE_ONEDNN_OPTS=0 rules out a crash inside TensorFlow's oneDNN kernels"
# Errors that would happen again: the trial fails at once. Anything else (TensorFlow
# runtime errors, device errors, out of memory) gets one more run, from its backup.
_DETERMINISTIC = (_kt.FailedTrialError, ValueError, TypeError, KeyError, NotImplementedError, AttributeError)
_TS = _kt.TrialStatus


def trial_seed(seed: int, trial_id: str) -> int:
    """The seed of a trial made before seeds were stored with it (``xtune/seed``)."""
    return (int(seed) * 10_007 + int(trial_id)) % (2**31 - 1)


def seed_of(values: dict, search_seed: int, trial_id: str) -> int:
    """The seed a trial trains with: its architecture's (stored), else the legacy rule."""
    stored = values.get(SEED_KEY)
    return int(stored) if stored is not None else trial_seed(search_seed, trial_id)


def scope(strategy):
    """The distribution strategy's scope, or nothing."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


class SearchTuner(keras_tuner.Tuner):
    """Runs trials on a ``Splits``-like dataset, with per-epoch backups.

    Not constructed directly: ``make_tuner`` says what happens to the directory.

    Args:
        oracle: A ``PlannedHyperbandOracle`` (or a worker's ``RemoteOracle``).
        hypermodel: The ``MiniXceptionHyperModel``.
        project_dir: The search directory (KerasTuner's ``directory/project_name``).
        splits: Has ``train(start_epoch)``, ``steps_per_epoch`` and ``validation``.
        seed: The search seed (weights of old trials, data order).
        emit: Receives progress events (``xtune._events``).
        stop_event: Set to stop at the next batch, leaving the trial resumable.
        epoch_backups: Back up every epoch (mid-trial resume). Off only to measure
            what it costs.
        tensorboard: Log each trial to ``logs/<trial_id>`` with its hyperparameters.
        max_consecutive_failures: Stop after this many failed trials in a row.
        recycle_mb: End the process (``RecycleProcess``) between trials once its RSS
            is this many MB above what it was after its first trial, and trials
            remain. TensorFlow keeps memory of every model built and trained in a
            process (``clear_session`` and ``gc`` do not return it), so a supervised
            search restarts itself instead of growing without bound. ``None``: never.
        tuner_id: KerasTuner's id of this tuner ("tuner0"; a worker's own).
        distribution_strategy: ``tf.distribute`` strategy for each trial, or None.
        refresh_batch_norm: Re-estimate batch-norm statistics before each validation
            (``ValidateEachEpoch``); off only to measure what it changes.
        plan: The search's plan (for TensorBoard's columns).
    """

    def __init__(self, oracle, hypermodel, project_dir: Path, splits, *, seed: int, emit=None,
                 stop_event: threading.Event | None = None, epoch_backups: bool = True,
                 tensorboard: bool = True, max_consecutive_failures: int = 10, recycle_mb: float | None = None,
                 tuner_id: str = "tuner0", distribution_strategy=None, refresh_batch_norm: bool = True, plan=None):
        self.splits = splits
        self.plan = plan
        self.refresh_batch_norm = refresh_batch_norm
        self.seed = seed
        self.emit = emit or (lambda event: None)
        self.stop_event = stop_event or threading.Event()
        self.epoch_backups = epoch_backups
        self.tensorboard = tensorboard and keras.backend.backend() == "tensorflow"
        self.max_consecutive_failures = max_consecutive_failures
        self._consecutive_failures = 0
        self.recycle_mb = recycle_mb
        self._rss_base: float | None = None
        self.worker = None if tuner_id == "tuner0" else tuner_id
        project_dir = Path(project_dir)
        self.reloaded = (project_dir / f"{tuner_id}.json").exists()
        # KerasTuner prints "Reloading Tuner from ..."; the CLI reports resumes itself.
        with contextlib.redirect_stdout(io.StringIO()):
            super().__init__(oracle=oracle, hypermodel=hypermodel, directory=str(project_dir.parent),
                             project_name=project_dir.name, overwrite=False, tuner_id=tuner_id,
                             distribution_strategy=distribution_strategy)

    def _populate_initial_space(self):
        # A private hook of BaseTuner (listed in the seam, _kt.OVERRIDDEN). Register the
        # space without building models (KerasTuner builds one per conditional scope
        # here): sampling registers every hyperparameter.
        from xtune.spaces import sample_config

        hp = self.oracle.get_space()
        sample_config(hp, self.hypermodel.space)
        self.oracle.update_space(hp)

    # -- paths -----------------------------------------------------------------------

    @property
    def logs_dir(self) -> Path:
        return Path(self.project_dir) / "logs"

    def backup_dir(self, trial_id: str) -> Path:
        return Path(self.get_trial_dir(trial_id)) / "backup"

    def record_path(self, trial_id: str) -> Path:
        return Path(self.get_trial_dir(trial_id)) / TRIAL_RECORD

    def checkpoint_path(self, trial_id: str) -> Path:
        """The trial's best epoch (weights and optimizer state)."""
        return Path(self.get_trial_dir(trial_id)) / CHECKPOINT

    # -- trial lifecycle -------------------------------------------------------------

    def on_search_begin(self):
        if self.tensorboard and not list(self.logs_dir.glob("events.out.tfevents.*")):
            from xtune.search._board import write_experiment

            write_experiment(self.logs_dir, self.hypermodel.space, self.plan, self.oracle.objective.name)

    def on_trial_begin(self, trial):
        if self.stop_event.is_set():
            raise SearchInterrupted("interrupted")
        hp = trial.hyperparameters.values
        backup = load_backup(self.backup_dir(trial.trial_id)) if self.epoch_backups else None
        self.emit(TrialStarted(
            trial.trial_id, space_values(hp), hp.get("tuner/bracket"), hp.get("tuner/round"), hp.get("tuner/epochs"),
            hp.get("tuner/initial_epoch", 0), hp.get("tuner/trial_id"),
            resumed_at=backup["epochs_done"] if backup is not None else None, worker=self.worker))

    def on_trial_end(self, trial):
        with contextlib.redirect_stdout(io.StringIO()):  # KerasTuner prints its retries
            super().on_trial_end(trial)  # oracle.end_trial + save: the trial is now final
        ended = self.oracle.get_trial(trial.trial_id)
        path = self.record_path(trial.trial_id)
        record = _read_record(path, trial.trial_id)
        if ended.status != _TS.COMPLETED and not record.reason:
            record.reason = _reason_from_traceback(trial.message)
        if ended.status == _TS.INVALID:  # queued to run once more, from its backup
            self.emit(TrialRetry(trial.trial_id, record.reason, worker=self.worker))
            return
        record.status = ended.status
        record.seconds = record.seconds_before + (record.seconds_run or 0.0)
        rss = rss_mb()
        record.rss_mb_after = None if rss is None else round(rss, 1)  # memory, for benchmarks
        record.write(path)
        shutil.rmtree(self.backup_dir(trial.trial_id), ignore_errors=True)
        if self.tensorboard and ended.status == _TS.COMPLETED:
            from xtune.search._board import write_trial_result

            write_trial_result(self.logs_dir, trial.trial_id, record.bracket, record.round, self.oracle.objective.name,
                               ended.score, record.params, record.seconds, record.best_epoch, record.parent)
        self.emit(TrialEnded(trial.trial_id, ended.status, None if ended.score is None else float(ended.score),
                             record.reason, record.seconds, record.best_epoch, record.params, worker=self.worker))
        if ended.status == _TS.FAILED:
            self._consecutive_failures += 1
            if self._consecutive_failures >= self.max_consecutive_failures:
                raise TooManyFailures(f"{self._consecutive_failures} trials failed in a row; the last: {record.reason}")
        else:
            self._consecutive_failures = 0
        self._maybe_recycle(rss)

    def _maybe_recycle(self, rss: float | None) -> None:
        if self.recycle_mb is None or rss is None:
            return
        if self._rss_base is None:
            self._rss_base = rss
        grown = rss - self._rss_base
        if grown >= self.recycle_mb and not self._plan_done():
            self.emit(MemoryRecycled(round(rss, 1), round(grown, 1), worker=self.worker))
            raise RecycleProcess(rss, grown)

    def _plan_done(self) -> bool:
        done = getattr(self.oracle, "is_finished", None)
        return bool(done()) if done is not None else False

    # -- one trial -------------------------------------------------------------------

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        trial_id = trial.trial_id
        path = self.record_path(trial_id)
        record = _start_record(_read_record(path, trial_id), hp.values, trial_id,
                               seed_of(hp.values, self.seed, trial_id))
        initial_epoch = record.initial_epoch
        backup = load_backup(self.backup_dir(trial_id)) if self.epoch_backups else None
        # A run that never ended is a process that died in it (a crash in native code,
        # the out-of-memory killer). Twice from the same epoch: this trial kills the
        # process, so it fails instead of killing every resume.
        start = backup["epochs_done"] if backup is not None else initial_epoch
        died = [r for r in record.runs if not r.get("ended") and r.get("from_epoch") == start]
        if len(died) >= CRASHES_PER_TRIAL:
            record.reason = (f"the process died {len(died)} times while training this trial from epoch {start} "
                             "(a crash inside TensorFlow, or the out-of-memory killer)" + _CRASH_HINT)
            record.runs.append({"from_epoch": start, "ended": True})
            record.write(path)
            raise _kt.FailedTrialError(record.reason)
        record.runs.append({"from_epoch": start})
        record.write(path)
        started = time.monotonic()
        try:
            model, state = self._prepare_model(trial, record, backup, start)
            record.write(path)
            self._fit(trial, model, state, record, start)
            history = state.history
            if state.best_arrays is not None:  # KerasTuner's checkpoint: the best epoch
                with scope(self.distribution_strategy):
                    restore_snapshot(model, state.best_arrays)
                save_weights_atomic(model, self.checkpoint_path(trial_id))
        except (SearchInterrupted, _kt.FatalError):
            _end_run(record, started)
            record.write(path)
            raise
        except Exception as error:  # the trial failed; the search goes on
            from xtune import _atomic

            if _atomic.is_disk_full(error):
                raise DiskFull(f"disk full while running trial {trial_id}: {error}") from error
            record.reason = _reason(error)
            _end_run(record, started)
            record.write(path)
            if isinstance(error, _DETERMINISTIC):
                raise _kt.FailedTrialError(record.reason) from error
            raise  # maybe transient (a runtime or device error): KerasTuner runs it once more
        objective = self.oracle.objective
        scored = [h for h in history if objective.has_value(h)]
        if not scored:
            raise _kt.FailedTrialError("no epoch reported the objective")
        best = scored[0]
        for h in scored[1:]:
            if objective.better_than(objective.get_value(h), objective.get_value(best)):
                best = h
        _end_run(record, started)
        record.history, record.best_epoch = history, best["epoch"]
        record.write(path)
        assert record.params is not None  # _prepare_model counted them
        return {**{k: v for k, v in best.items() if k != "epoch"}, "params": float(record.params)}

    def _prepare_model(self, trial, record: TrialRecord, backup: dict | None, start: int):
        """Build the trial's model from its seed; put its backup or its parent's weights in."""
        hp = trial.hyperparameters
        # Memory of the previous trial goes here: clear_session ends with a full
        # gc.collect(), the one per trial (about 0.1 s here, as run_search freezes
        # what existed before the first trial; more collections bought nothing).
        keras.backend.clear_session()
        keras.utils.set_random_seed(record.seed)
        with scope(self.distribution_strategy):
            model = self.hypermodel.build(hp)
        record.params = int(model.count_params())
        if backup is not None:
            with scope(self.distribution_strategy):
                restore_snapshot(model, backup["arrays"])
            record.resumed_at_epochs = record.resumed_at_epochs + [start]
        elif record.parent is not None:
            with scope(self.distribution_strategy):
                _restore(model, self.checkpoint_path(record.parent))
        folder = self.backup_dir(trial.trial_id) if self.epoch_backups else None
        return model, EpochState(self.oracle.objective, folder, resume=backup, last_epoch=record.epochs)

    def _fit(self, trial, model, state: EpochState, record: TrialRecord, start: int) -> None:
        trial_id, epochs = trial.trial_id, record.epochs
        assert epochs is not None and record.seed is not None  # _start_record sets both
        # Order matters at epoch end: validate first (its results join the logs that
        # the others see), then time the epoch (what follows is overhead), refuse a NaN
        # epoch before it is kept.
        steps = self.splits.steps_per_epoch
        validate = ValidateEachEpoch(self.splits.validation, lambda epoch: self.splits.train(start_epoch=epoch), steps,
                                     refresh=self.refresh_batch_norm)
        callbacks = [ReseedEachEpoch(record.seed), validate, EpochEvents(self.emit, trial_id, epochs, self.worker),
                     FailOnNaN(), state, StopOnRequest(self.stop_event),
                     BatchEvents(self.emit, trial_id, epochs, steps, self.worker)]
        if self.tensorboard:
            from xtune.search._board import trial_callbacks

            callbacks += trial_callbacks(self.logs_dir, trial, self.hypermodel.space, self.plan)
        fault = os.environ.get("XTUNE_FAULT_ABORT", "").split(":")
        if fault[0] == trial_id:
            callbacks.append(AbortAt(int(fault[1])))
        model.fit(  # validation is ValidateEachEpoch's (after batch norm is brought up to date)
            self.splits.train(start_epoch=start), steps_per_epoch=steps, epochs=epochs, initial_epoch=start,
            callbacks=callbacks, verbose=0, shuffle=False,  # the order is ours: train(start_epoch)
        )


def _start_record(previous: TrialRecord, values: dict, trial_id: str, seed: int) -> TrialRecord:
    """The record of a new run of a trial, keeping what earlier runs of it recorded."""
    return TrialRecord(
        trial_id=trial_id, values=space_values(values), bracket=values.get("tuner/bracket"),
        round=values.get("tuner/round"), epochs=values.get("tuner/epochs", 1),
        initial_epoch=values.get("tuner/initial_epoch", 0), parent=values.get("tuner/trial_id"), seed=seed,
        slot=values.get("xtune/slot"),
        resumed_at_epochs=list(previous.resumed_at_epochs), runs=list(previous.runs),
        seconds_before=previous.seconds_before + (previous.seconds_run or 0.0), params=previous.params,
    )


def _end_run(record: TrialRecord, started: float) -> None:
    record.runs[-1]["ended"] = True
    record.seconds_run = time.monotonic() - started


def _restore(model, weights_path) -> None:
    """Load weights *and* optimizer state (Keras 3 drops the latter unless it is built)."""
    model.optimizer.build(model.trainable_variables)
    model.load_weights(os.fspath(weights_path))


def _read_record(path: Path, trial_id: str) -> TrialRecord:
    try:
        return TrialRecord.read(path) or TrialRecord(trial_id)
    except ValueError:
        return TrialRecord(trial_id)


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    name = type(error).__name__
    if "OOM" in str(error) or "ResourceExhausted" in name or "out of memory" in str(error).lower():
        return f"out of memory ({name})"
    return f"{name}: {first}"[:300] if first else name


def _reason_from_traceback(message: str | None) -> str | None:
    if not message:
        return None
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else None

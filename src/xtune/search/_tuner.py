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
from keras_tuner.src import errors as kt_errors
from keras_tuner.src.engine import trial as trial_module
from keras_tuner.src.engine import tuner as tuner_module

from xtune import _atomic
from xtune._runtime import rss_mb
from xtune.search._callbacks import (
    AbortAt,
    DiskFull,
    EpochEvents,
    EpochState,
    FailOnNaN,
    RecycleProcess,
    ReseedEachEpoch,
    SearchInterrupted,
    StopOnRequest,
    TooManyFailures,
    load_backup,
    restore_snapshot,
    save_weights_atomic,
)

TRIAL_RECORD = "xtune.json"
CRASHES_PER_TRIAL = 2
# TensorFlow 2.21's oneDNN CPU kernels have corrupted the heap here (SIGSEGV, "corrupted
# size vs. prev_size"). The one found, the filter gradient of a strided 1x1 conv on odd
# batches, is avoided by the builder (strided_projection=False); for any other, turning
# oneDNN off is the user's way out, at 1.5-3x slower CPU training, so it is only a hint.
_CRASH_HINT = "; on a CPU, TF_ENABLE_ONEDNN_OPTS=0 rules out a crash inside TensorFlow's oneDNN kernels"
# Errors that would happen again: the trial fails at once. Anything else (TensorFlow
# runtime errors, device errors, out of memory) gets one more run, from its backup.
_DETERMINISTIC = (kt_errors.FailedTrialError, ValueError, TypeError, KeyError, NotImplementedError, AttributeError)
_TS = trial_module.TrialStatus


def space_values(values: dict) -> dict:
    """Hyperparameter values without KerasTuner's bookkeeping (``tuner/*``)."""
    return {k: v for k, v in values.items() if not k.startswith("tuner/")}


def trial_seed(seed: int, trial_id: str) -> int:
    """The seed of one trial's weights and random layers."""
    return (int(seed) * 10_007 + int(trial_id)) % (2**31 - 1)


class SearchTuner(keras_tuner.Tuner):
    """Runs trials on a ``Splits``-like dataset, with per-epoch backups.

    Not constructed directly: ``make_tuner`` says what happens to the directory.

    Args:
        oracle: A ``PlannedHyperbandOracle``.
        hypermodel: The ``MiniXceptionHyperModel``.
        project_dir: The search directory (KerasTuner's ``directory/project_name``).
        splits: Has ``train(start_epoch)``, ``steps_per_epoch`` and ``validation``.
        seed: The search seed (weights, random layers, data order).
        emit: Receives progress events (dicts).
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
    """

    def __init__(self, oracle, hypermodel, project_dir: Path, splits, *, seed: int, emit=None,
                 stop_event: threading.Event | None = None, epoch_backups: bool = True,
                 tensorboard: bool = True, max_consecutive_failures: int = 10, recycle_mb: float | None = None,
                 **kwargs):
        self.splits = splits
        self.seed = seed
        self.emit = emit or (lambda event: None)
        self.stop_event = stop_event or threading.Event()
        self.epoch_backups = epoch_backups
        self.tensorboard = tensorboard and keras.backend.backend() == "tensorflow"
        self.max_consecutive_failures = max_consecutive_failures
        self._consecutive_failures = 0
        self.recycle_mb = recycle_mb
        self._rss_base = None
        project_dir = Path(project_dir)
        self.reloaded = (project_dir / f"{os.environ.get('KERASTUNER_TUNER_ID', 'tuner0')}.json").exists()
        # KerasTuner prints "Reloading Tuner from ..."; the CLI reports resumes itself.
        with contextlib.redirect_stdout(io.StringIO()):
            super().__init__(oracle=oracle, hypermodel=hypermodel, directory=str(project_dir.parent),
                             project_name=project_dir.name, overwrite=False, **kwargs)

    def _populate_initial_space(self):
        # Register the space without building models (KerasTuner builds one per
        # conditional scope here): sampling registers every hyperparameter.
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

    # -- trial lifecycle -------------------------------------------------------------

    def on_trial_begin(self, trial):
        if self.stop_event.is_set():
            raise SearchInterrupted("interrupted")
        hp = trial.hyperparameters.values
        self.emit({
            "event": "trial_start", "trial_id": trial.trial_id, "values": space_values(hp),
            "bracket": hp.get("tuner/bracket"), "round": hp.get("tuner/round"),
            "epochs": hp.get("tuner/epochs"), "initial_epoch": hp.get("tuner/initial_epoch", 0),
            "parent": hp.get("tuner/trial_id"),
        })

    def on_trial_end(self, trial):
        with contextlib.redirect_stdout(io.StringIO()):  # KerasTuner prints its retries
            super().on_trial_end(trial)  # oracle.end_trial + save: the trial is now final
        ended = self.oracle.get_trial(trial.trial_id)
        record_path = Path(self.get_trial_dir(trial.trial_id)) / TRIAL_RECORD
        record = _read_record(record_path)
        if ended.status != _TS.COMPLETED and not record.get("reason"):
            record["reason"] = _reason_from_traceback(trial.message)
        if ended.status == _TS.INVALID:  # queued to run once more, from its backup
            self.emit({"event": "trial_retry", "trial_id": trial.trial_id, "reason": record.get("reason")})
            return
        record["status"] = ended.status
        record["seconds"] = record.get("seconds_before", 0.0) + record.get("seconds_run", 0.0)
        rss = rss_mb()
        record["rss_mb_after"] = None if rss is None else round(rss, 1)  # memory, for benchmarks
        _atomic.write_json(record_path, record)
        shutil.rmtree(self.backup_dir(trial.trial_id), ignore_errors=True)
        self.emit({"event": "trial_end", "trial_id": trial.trial_id, "status": ended.status,
                   "score": None if ended.score is None else float(ended.score), "reason": record.get("reason"),
                   "seconds": record["seconds"], "best_epoch": record.get("best_epoch"), "params": record.get("params")})
        if ended.status == _TS.FAILED:
            self._consecutive_failures += 1
            if self._consecutive_failures >= self.max_consecutive_failures:
                raise TooManyFailures(
                    f"{self._consecutive_failures} trials failed in a row; the last: {record.get('reason')}"
                )
        else:
            self._consecutive_failures = 0
        self._maybe_recycle(rss)

    def _maybe_recycle(self, rss: float | None) -> None:
        if self.recycle_mb is None or rss is None:
            return
        if self._rss_base is None:
            self._rss_base = rss
        grown = rss - self._rss_base
        if grown >= self.recycle_mb and not self.oracle.is_finished():
            self.emit({"event": "recycle", "rss_mb": round(rss), "grown_mb": round(grown)})
            raise RecycleProcess(f"memory grew by {grown:.0f} MB since the first trial of this process")

    # -- one trial -------------------------------------------------------------------

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        trial_id = trial.trial_id
        record_path = Path(self.get_trial_dir(trial_id)) / TRIAL_RECORD
        previous = _read_record(record_path)
        epochs = hp.values.get("tuner/epochs", 1)
        initial_epoch = hp.values.get("tuner/initial_epoch", 0)
        backup = load_backup(self.backup_dir(trial_id)) if self.epoch_backups else None
        record = {
            "trial_id": trial_id, "values": space_values(hp.values),
            "bracket": hp.values.get("tuner/bracket"), "round": hp.values.get("tuner/round"),
            "epochs": epochs, "initial_epoch": initial_epoch, "parent": hp.values.get("tuner/trial_id"),
            "resumed_at_epochs": previous.get("resumed_at_epochs", []),
            "seconds_before": previous.get("seconds_before", 0.0) + previous.get("seconds_run", 0.0),
            "runs": previous.get("runs", []),
        }
        # A run that never ended is a process that died in it (a crash in native code,
        # the out-of-memory killer). Twice from the same epoch: this trial kills the
        # process, so it fails instead of killing every resume.
        start = backup["epochs_done"] if backup is not None else initial_epoch
        died = [r for r in record["runs"] if not r.get("ended") and r.get("from_epoch") == start]
        if len(died) >= CRASHES_PER_TRIAL:
            record["reason"] = (f"the process died {len(died)} times while training this trial from epoch {start} "
                                "(a crash inside TensorFlow, or the out-of-memory killer)" + _CRASH_HINT)
            record["runs"].append({"from_epoch": start, "ended": True})
            _atomic.write_json(record_path, record)
            raise kt_errors.FailedTrialError(record["reason"])
        record["runs"].append({"from_epoch": start})
        _atomic.write_json(record_path, record)
        started = time.monotonic()
        try:
            # Memory of the previous trial goes here: clear_session ends with a full
            # gc.collect(), the one per trial (about 0.1 s here, as run_search freezes
            # what existed before the first trial; more collections bought nothing).
            keras.backend.clear_session()
            keras.utils.set_random_seed(trial_seed(self.seed, trial_id))
            model = self._build_hypermodel(hp)
            record["params"] = int(model.count_params())
            if backup is not None:
                with tuner_module.maybe_distribute(self.distribution_strategy):
                    restore_snapshot(model, backup["arrays"])
                record["resumed_at_epochs"] = record["resumed_at_epochs"] + [start]
            elif "tuner/trial_id" in hp.values:
                self._restore(model, self._get_checkpoint_fname(hp.values["tuner/trial_id"]))
            _atomic.write_json(record_path, record)
            state = EpochState(self.oracle.objective, self.backup_dir(trial_id) if self.epoch_backups else None,
                               resume=backup)
            # Order matters at epoch end: time the epoch first (what follows is
            # overhead), refuse a NaN epoch before it is kept.
            callbacks = [EpochEvents(self.emit, trial_id, epochs), ReseedEachEpoch(trial_seed(self.seed, trial_id)),
                         FailOnNaN(), state, StopOnRequest(self.stop_event)]
            if self.tensorboard:
                callbacks += self._tensorboard_callbacks(trial)
            fault = os.environ.get("XTUNE_FAULT_ABORT", "").split(":")
            if fault[0] == trial_id:
                callbacks.append(AbortAt(int(fault[1])))
            model.fit(
                self.splits.train(start_epoch=start), steps_per_epoch=self.splits.steps_per_epoch,
                validation_data=self.splits.validation, epochs=epochs, initial_epoch=start,
                callbacks=callbacks, verbose=0, shuffle=False,  # the order is ours: train(start_epoch)
            )
            history = state.history
            if state.best_arrays is not None:  # KerasTuner's checkpoint: the best epoch
                with tuner_module.maybe_distribute(self.distribution_strategy):
                    restore_snapshot(model, state.best_arrays)
                save_weights_atomic(model, Path(self._get_checkpoint_fname(trial_id)))
        except (SearchInterrupted, kt_errors.FatalError):
            record["runs"][-1]["ended"] = True
            record["seconds_run"] = time.monotonic() - started
            _atomic.write_json(record_path, record)
            raise
        except Exception as error:  # the trial failed; the search goes on
            if _atomic.is_disk_full(error):
                raise DiskFull(f"disk full while running trial {trial_id}: {error}") from error
            record["reason"] = _reason(error)
            record["runs"][-1]["ended"] = True
            record["seconds_run"] = time.monotonic() - started
            _atomic.write_json(record_path, record)
            if isinstance(error, _DETERMINISTIC):
                raise kt_errors.FailedTrialError(record["reason"]) from error
            raise  # maybe transient (a runtime or device error): KerasTuner runs it once more
        objective = self.oracle.objective
        scored = [h for h in history if objective.has_value(h)]
        if not scored:
            raise kt_errors.FailedTrialError("no epoch reported the objective")
        best_record = scored[0]
        for h in scored[1:]:
            if objective.better_than(objective.get_value(h), objective.get_value(best_record)):
                best_record = h
        record["runs"][-1]["ended"] = True
        record.update({"history": history, "best_epoch": best_record["epoch"],
                       "seconds_run": time.monotonic() - started})
        _atomic.write_json(record_path, record)
        return {k: v for k, v in best_record.items() if k != "epoch"}

    def _restore(self, model, weights_path) -> None:
        # The optimizer's variables are built where the model's were: in the strategy's scope.
        with tuner_module.maybe_distribute(self.distribution_strategy):
            _restore(model, weights_path)

    def _tensorboard_callbacks(self, trial):
        from tensorboard.plugins.hparams import api as hparams_api
        from keras_tuner.src.engine import tuner_utils

        logdir = str(self.logs_dir / trial.trial_id)
        hparams = {
            k: v for k, v in tuner_utils.convert_hyperparams_to_hparams(trial.hyperparameters, hparams_api).items()
            if not k.name.startswith("tuner/")
        }
        values = trial.hyperparameters.values
        hparams[hparams_api.HParam("bracket", hparams_api.IntInterval(0, 64))] = int(values.get("tuner/bracket", 0))
        hparams[hparams_api.HParam("round", hparams_api.IntInterval(0, 64))] = int(values.get("tuner/round", 0))
        return [
            keras.callbacks.TensorBoard(log_dir=logdir, write_graph=False, profile_batch=0),
            hparams_api.KerasCallback(writer=logdir, hparams=hparams, trial_id=trial.trial_id),
        ]


def _restore(model, weights_path) -> None:
    """Load weights *and* optimizer state (Keras 3 drops the latter unless it is built)."""
    model.optimizer.build(model.trainable_variables)
    model.load_weights(os.fspath(weights_path))


def _read_record(path: Path) -> dict:
    try:
        return _atomic.read_json(path) if path.exists() else {}
    except ValueError:
        return {}


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
    lines = [l for l in message.strip().splitlines() if l.strip()]
    return lines[-1][:300] if lines else None

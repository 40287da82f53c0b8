"""`tune search`: start or resume a search directory and run its plan."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from xtune import _atomic
from xtune._owned import (
    SEARCH_ENTRIES,
    SEARCH_MARKER,
    describe,
    entries,
    has_marker,
    is_inside,
    remove_owned,
    write_marker,
)
from xtune.errors import ProjectError, UsageError
from xtune.search._plan import HyperbandPlan
from xtune.search._project import (
    FINISHED_FILE,
    LOCK_FILE,
    RUN_FILE,
    ProjectLock,
    SearchSettings,
    check_image_size,
    read_run,
    settings_conflicts,
    write_run,
)

_FLAGS = {name: "--" + name.replace("_", "-") for name in SearchSettings.__dataclass_fields__}
_FLAGS.update(kaggle_split="--split-sizes", max_consecutive_failures="--max-failures")


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


@dataclass
class SearchOutcome:
    """What a call of ``run_search`` did.

    Attributes:
        project: The search directory.
        status: "finished" (the plan is done), "already finished", "interrupted"
            (Ctrl-C / SIGTERM; resumable), "stopped" (too many failures, disk full;
            resumable once fixed) or "recycle" (memory grew past ``recycle_mb``
            between trials: resume it in a fresh process).
        plan: The plan.
        resumed: Whether an existing search was resumed.
        completed, failed: Trials of the whole search, by status.
        best: ``{"trial_id", "score", "values"}`` of the best trial, or None.
        message: Why it stopped (for "stopped" and "recycle").
        notes: Repairs made to damaged state files, one line each.
        interrupted_trial: ``{"trial_id", "epochs_saved"}`` when interrupted mid-trial.
        resume: The command that resumes it, when it differs from the plain
            ``tune search --project DIR`` (several workers).
    """

    project: Path
    status: str
    plan: HyperbandPlan
    resumed: bool = False
    completed: int = 0
    failed: int = 0
    best: dict | None = None
    message: str | None = None
    notes: list[str] = field(default_factory=list)
    interrupted_trial: dict | None = None
    resume: str | None = None


def resolve_settings(project: Path, given: dict, *, space_ref=None, overwrite: bool = False):
    """The settings and space of a search: from run.json on resume, else from ``given``.

    Args:
        project: The search directory.
        given: Settings passed explicitly (flag name without dashes -> value).
        space_ref: ``--space`` as given (a file or built-in name), or None.
        overwrite: Start over even if ``project`` holds a search.

    Returns:
        ``(settings, space, run)`` where ``run`` is the stored run.json or None.

    Raises:
        UsageError: A flag conflicts with run.json (naming it), a bad value.
        ProjectError: ``project`` exists but is not a search.
    """
    from xtune.spaces import SearchSpace, load_space

    project = Path(project)
    given = {k: v for k, v in given.items() if v is not None}
    if not overwrite and (project / RUN_FILE).exists():
        run = read_run(project)
        stored = SearchSettings.from_dict(run["settings"])
        conflicts = settings_conflicts(stored, given)
        space = SearchSpace.from_dict(run["space"])
        if space_ref is not None:
            asked = load_space(space_ref)
            if json.loads(json.dumps(asked.to_dict()["specs"])) != run["space"]["specs"]:
                conflicts.append(("space", space_ref, run["space"]["name"]))
        if conflicts:
            name, value, old = conflicts[0]
            flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
            raise UsageError(
                f"{flag} {_show(value)} conflicts with this search's {_show(old)} ({project / RUN_FILE}); "
                "drop the flag to resume, or pass --overwrite to start over"
            )
        return stored, space, run
    check_new_project(project, given.get("data"))
    if "data" not in given:
        raise UsageError("--data is required to start a search (demo, kaggle:dogs-vs-cats, or a folder)")
    settings = SearchSettings(**given)
    check_image_size(settings.image_size)
    for name in ("batch_size", "max_consecutive_failures"):
        if getattr(settings, name) < 1:
            raise UsageError(f"{_FLAGS[name]} must be at least 1; got {getattr(settings, name)}")
    if settings.objective not in ("val_accuracy", "val_loss", "accuracy", "loss"):
        raise UsageError(f"--objective must be val_accuracy, val_loss, accuracy or loss; got {settings.objective!r}")
    return settings, load_space(space_ref), None


def is_search(project: Path) -> bool:
    """Whether ``project`` is a search directory xtune wrote (its marker, or a run.json)."""
    return has_marker(project, "search") or (Path(project) / RUN_FILE).exists()


def check_new_project(project: Path, data: str | None) -> None:
    """Refuse to start a search in a folder that holds anything xtune did not write.

    An existing search (``--overwrite``) or an empty folder is fine; anything else is
    one line naming what is there, and nothing is touched. The project may not
    overlap a dataset folder either.

    Raises:
        UsageError: The folder is not ours, or it overlaps the data.
    """
    project = Path(project)
    if data is not None and Path(data).expanduser().is_dir():
        folder = Path(data).expanduser()
        if is_inside(project, folder) or is_inside(folder, project):
            raise UsageError(f"--project {project} overlaps the data folder {folder}; "
                             "keep searches apart from the data")
    if not project.exists():
        return
    if not project.is_dir():
        raise UsageError(f"--project {project} is a file, not a folder; choose another --project")
    present = [name for name in entries(project) if name not in (LOCK_FILE, SEARCH_MARKER)]
    if present and not is_search(project):
        raise UsageError(f"{project} is not a tune search: it holds {describe(present, project)}; "
                         "choose another --project")


def check_plan_fits_space(plan: HyperbandPlan, space) -> None:
    """Refuse a plan that needs more distinct configurations than the space has.

    Hyperband draws a new configuration for every first-round trial; with too few it
    stops before any promotion (keras-tuner issue #676), a random search in disguise.
    """
    available = space.num_configurations()
    if available < plan.architectures:
        raise UsageError(
            f"the space {space.name!r} has {available} distinct configurations but the plan samples "
            f"{plan.architectures}; lower --max-trials or widen the space"
        )


@contextlib.contextmanager
def _stop_on_signals(event: threading.Event):
    """Ctrl-C / SIGTERM set ``event`` (training stops at the next batch); a second Ctrl-C aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        event.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class _Progress:
    """Turns the tuner's raw events into what a user wants per trial (i of N, ETA)."""

    def __init__(self, emit, plan: HyperbandPlan, objective_max: bool, done_epochs: int, best):
        self.emit = emit or (lambda event: None)
        self.plan = plan
        self.objective_max = objective_max
        self.start = time.monotonic()
        self.done_epochs = done_epochs
        self.session_epochs = 0
        self.best = best
        self.current = None

    def __call__(self, event: dict):
        event = dict(event)
        kind = event["event"]
        if kind == "trial_start":
            self.current = event
        if kind == "epoch_end":
            self.done_epochs += 1
            self.session_epochs += 1
        if kind == "trial_end":
            score = event.get("score")
            if event["status"] == "COMPLETED" and score is not None:
                if self.best is None or (score > self.best if self.objective_max else score < self.best):
                    self.best = score
        if "trial_id" in event:
            event["index"] = int(event["trial_id"]) + 1
        event["time"] = time.monotonic()
        event["total"] = self.plan.total_trials
        event["best"] = self.best
        elapsed = time.monotonic() - self.start
        event["elapsed"] = elapsed
        left = max(self.plan.total_epochs - self.done_epochs, 0)
        event["eta"] = elapsed / self.session_epochs * left if self.session_epochs else None
        self.emit(event)


def _epochs_done(project: Path) -> int:
    from xtune.search._project import load_project

    try:
        state = load_project(project)
    except ProjectError:
        return 0
    total = 0
    for t in state.trials:
        if t.status in ("COMPLETED", "FAILED") and t.epochs is not None:
            total += t.epochs - t.initial_epoch
        elif t.backup:
            total += t.backup.get("epochs_done", t.initial_epoch) - t.initial_epoch
    return total


def make_tuner(project: Path, settings: SearchSettings, space, splits, *, resume: bool, **tuner_kwargs):
    """Create the KerasTuner state in ``project``, or reload it (``resume``). Never deletes.

    A new search saves its state before the first trial, so a kill during the first
    trial resumes it (KerasTuner alone would start over). Every state file is written
    atomically from here on.
    """
    import keras_tuner

    from xtune._atomic import install_keras_tuner_atomic_writes
    from xtune.search._oracle import PlannedHyperbandOracle
    from xtune.search._tuner import SearchTuner
    from xtune.spaces import MiniXceptionHyperModel

    install_keras_tuner_atomic_writes()
    from keras_tuner.src import config as kt_config

    kt_config.DEBUG = bool(os.environ.get("XTUNE_DEBUG"))  # else every failed trial prints a traceback
    direction = "min" if settings.objective.endswith("loss") else "max"
    oracle = PlannedHyperbandOracle(
        keras_tuner.Objective(settings.objective, direction), settings.plan(), seed=settings.seed
    )
    hypermodel = MiniXceptionHyperModel(
        (settings.image_size, settings.image_size, 3), len(splits.class_names), space
    )
    tuner = SearchTuner(oracle, hypermodel, Path(project), splits, seed=settings.seed, **tuner_kwargs)
    if not tuner.reloaded:  # new, or killed before its first state write: start fresh
        tuner.save()
    return tuner


def run_search(
    project: Path,
    given: dict,
    *,
    space_ref=None,
    data_dir: Path | None = None,
    archive: Path | None = None,
    overwrite: bool = False,
    progress=None,
    mixed_precision: str = "auto",
    epoch_backups: bool = True,
    tensorboard: bool = True,
    splits=None,
    data_info: dict | None = None,
    stop_event: threading.Event | None = None,
    strategy: str | None = None,
    chief=None,
    recycle_mb: float | None = None,
) -> SearchOutcome:
    """Start or resume the search in ``project`` and run it until its plan is done.

    Args:
        project: The search directory (created if new).
        given: Settings passed explicitly (see ``SearchSettings``); on resume only
            used to refuse conflicts.
        space_ref: ``--space`` (a TOML file or built-in name).
        data_dir: Where prepared data is cached (default: the user's cache).
        archive: kaggle:dogs-vs-cats only: a downloaded archive to use offline.
        overwrite: Delete an existing search in ``project`` first.
        progress: Called with event dicts (``search_start``, ``trial_start``,
            ``epoch_end``, ``trial_end``, ``notes``).
        mixed_precision: "auto", "on" or "off".
        epoch_backups: Per-epoch backups for mid-trial resume (on; off only to
            measure their cost).
        tensorboard: Log trials for TensorBoard.
        splits: Pre-built data splits (skips ``xtune.data``; for other backends).
        data_info: With ``splits``: what to record as the data in run.json.
        stop_event: Set it to stop as Ctrl-C would (tests, embedding).
        strategy: "none" or "mirrored": data parallelism inside a trial (see
            ``xtune._runtime.distribution_strategy``). A run-time choice, not stored.
        chief: Serve the search to workers instead of running trials here: an object
            with ``serve(tuner, stop_event)`` (``xtune.search._distributed.ChiefServer``).
            It trains nothing, so devices are left alone.
        recycle_mb: Return with status "recycle" between trials once this process's
            RSS is this many MB above its level after its first trial (see
            ``SearchTuner``); only for a caller that resumes it in a new process.

    Returns:
        A ``SearchOutcome``.

    Raises:
        UsageError, ProjectError, DataError: one-line user errors.
    """
    from xtune._runtime import configure_devices, distribution_strategy

    project = Path(project)
    settings, space, run = resolve_settings(project, given, space_ref=space_ref, overwrite=overwrite)
    plan = settings.plan()
    if run is not None and (project / FINISHED_FILE).exists():
        return _outcome(project, "already finished", plan, resumed=True)
    check_plan_fits_space(plan, space)

    stop_event = stop_event or threading.Event()
    created = not project.exists()
    with ProjectLock(project):
        try:
            if splits is None:
                splits, data_info = _load_data(project, settings, run, data_dir, archive)
        except BaseException:
            if created:  # a bad dataset leaves nothing behind
                shutil.rmtree(project, ignore_errors=True)
            raise
        devices = None if chief is not None else configure_devices(mixed_precision)
        strategy_obj = None if chief is not None else distribution_strategy(strategy)
        if overwrite:  # only what xtune wrote: the user's files and earlier exports stay
            remove_owned(project, SEARCH_ENTRIES, keep=(LOCK_FILE, SEARCH_MARKER))
            run = None
        if not has_marker(project, "search"):
            write_marker(project, "search")
        notes = []
        resumed = run is not None
        if run is None:
            write_run(project, settings, space.to_dict(), data_info)
        else:
            from xtune.search._repair import repair_project

            notes = repair_project(project, plan, settings.seed)
        objective_max = not settings.objective.endswith("loss")
        prior = _outcome(project, "", plan) if resumed else None
        tracker = _Progress(progress, plan, objective_max, _epochs_done(project) if resumed else 0,
                            prior.best["score"] if prior and prior.best else None)
        tracker({"event": "search_start", "project": str(project), "resumed": resumed, "plan": plan.to_dict(),
                 "settings": settings.to_dict(), "devices": devices, "notes": notes,
                 "completed": prior.completed if prior else 0, "failed": prior.failed if prior else 0})
        from xtune.search._callbacks import DiskFull, RecycleProcess, SearchInterrupted, TooManyFailures

        try:
            tuner = make_tuner(project, settings, space, splits, resume=resumed, emit=tracker,
                               stop_event=stop_event, epoch_backups=epoch_backups, tensorboard=tensorboard,
                               max_consecutive_failures=settings.max_consecutive_failures,
                               distribution_strategy=strategy_obj, recycle_mb=recycle_mb)
            with _stop_on_signals(stop_event):
                if chief is not None:
                    chief.serve(tuner, stop_event)
                else:
                    # What exists now (TensorFlow, Keras, the data) lives as long as the
                    # process: out of the collector's sight, the full collection that
                    # clear_session runs between trials only scans what trials made.
                    gc.collect()
                    gc.freeze()
                    try:
                        tuner.search(verbose=0)
                    finally:
                        gc.unfreeze()  # collectable again once the search is over
        except SearchInterrupted:
            outcome = _outcome(project, "interrupted", plan, resumed, notes)
            running = [t for t in _running_trials(project)]
            outcome.interrupted_trial = running[0] if running else None
            return outcome
        except TooManyFailures as error:
            return _outcome(project, "stopped", plan, resumed, notes, message=str(error))
        except RecycleProcess as error:
            return _outcome(project, "recycle", plan, resumed, notes, message=str(error))
        except DiskFull as error:
            raise ProjectError(f"{error}; free some space and run the same command to resume") from None
        except OSError as error:
            if _atomic.is_disk_full(error):
                raise ProjectError(f"disk full while saving the search ({error}); free some space and run "
                                   "the same command to resume") from None
            raise
        outcome = _outcome(project, "finished", plan, resumed, notes)
        _atomic.write_json(project / FINISHED_FILE, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return outcome


def _load_data(project: Path, settings: SearchSettings, run: dict | None, data_dir, archive=None):
    """Prepare (or reuse) the search's data and build its splits; refuse changed data."""
    from xtune.data import load_splits, prepare_data

    prepared = prepare_data(settings.data, data_dir=data_dir, archive=archive, **settings.data_options())
    data_info = prepared.to_dict()
    stored = (run or {}).get("data") or {}
    if stored.get("fingerprint") not in (None, data_info.get("fingerprint")):
        raise ProjectError(
            f"the data of {settings.data!r} changed since this search started ({project / RUN_FILE}); "
            "restore it, or start over with --overwrite"
        )
    splits = load_splits(prepared, image_size=settings.image_size, batch_size=settings.batch_size, seed=settings.seed)
    return splits, data_info


def _running_trials(project: Path) -> list[dict]:
    from xtune.search._project import load_project

    out = []
    for t in load_project(project).trials:
        if t.status in ("RUNNING", "INVALID"):
            out.append({"trial_id": t.trial_id, "epochs_saved": (t.backup or {}).get("epochs_done", t.initial_epoch),
                        "epochs": t.epochs})
    return out


def _outcome(project, status, plan, resumed=False, notes=None, message=None) -> SearchOutcome:
    from xtune.search._project import load_project

    state = load_project(project)
    completed = [t for t in state.trials if t.status == "COMPLETED"]
    failed = [t for t in state.trials if t.status == "FAILED"]
    best = None
    if completed:
        pick = min if state.settings.objective.endswith("loss") else max
        b = pick(completed, key=lambda t: t.score)
        best = {"trial_id": b.trial_id, "score": float(b.score), "values": b.values}
    return SearchOutcome(project, status, plan, resumed, len(completed), len(failed), best, message,
                         list(notes or []))

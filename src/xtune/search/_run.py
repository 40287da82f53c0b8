"""A search in this process: set up or resume a search directory and run its plan.

``run_search`` is the loop and nothing else: resolve the settings (run.json on a
resume), take the lock, load the data, repair what a crash damaged, make the tuner,
run it. ``tune search`` calls it in a supervised child process (``xtune._process``);
tests and benchmarks call it directly. A chief (``xtune.search._chief``) runs the
same set-up and then serves the oracle instead of running trials. What is settled and
checked before the lock is taken (the settings, the folder, the budget, a warm start)
is in ``xtune.search._preflight``.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xtune import _atomic
from xtune._events import Event, SearchStarted
from xtune._owned import SEARCH_ENTRIES, SEARCH_MARKER, has_marker, remove_owned, write_marker
from xtune.errors import ProjectError, UsageError
from xtune.search._plan import HyperbandPlan
from xtune.search._preflight import (
    check_budget,
    record_extension,
    resolve_settings,
    warm_start_record,
)
from xtune.search._project import (
    FINISHED_FILE,
    LOCK_FILE,
    RUN_FILE,
    ProjectLock,
    SearchSettings,
    read_run,
    write_run,
)
from xtune.search._state import load_project

if TYPE_CHECKING:
    from xtune.search._tuner import SearchTuner
    from xtune.spaces import SearchSpace


@dataclass
class SearchOutcome:
    """What a search did.

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
        interrupted_trial: ``{"trial_id", "epochs_saved", "epochs"}`` when interrupted mid-trial.
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


def search_outcome(project: Path, status: str, plan: HyperbandPlan, resumed: bool = False, notes=None,
                   message: str | None = None) -> SearchOutcome:
    """The outcome of a search in ``project``, as its files say now."""
    state = load_project(project)
    best = state.best
    outcome = SearchOutcome(Path(project), status, plan, resumed, len(state.ended) - len(state.failed),
                            len(state.failed), None, message, list(notes or []))
    if best is not None:
        outcome.best = {"trial_id": best.trial_id, "score": best.score, "values": best.values}
    if status == "interrupted":
        stopped = state.interrupted or [t for t in state.trials if t.status in ("RUNNING", "INVALID")]
        if stopped:
            t = stopped[0]
            outcome.interrupted_trial = {"trial_id": t.trial_id, "epochs_saved": t.epochs_saved, "epochs": t.epochs}
    return outcome


# -- checks --------------------------------------------------------------------------------------


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


# -- signals -------------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals(event: threading.Event):
    """Ctrl-C / SIGTERM set ``event`` (training stops at the next batch); a second Ctrl-C aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    from xtune._runtime import SignalRelay

    relay = SignalRelay(event)

    def handler(signum, frame):
        if (event.is_set() or relay.pending) and signum == signal.SIGINT:
            raise KeyboardInterrupt
        relay(signum, frame)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        relay.close()  # one search after another in a process leaves no thread behind


# -- the tuner -----------------------------------------------------------------------------------


def build_oracle(settings: SearchSettings, space, num_classes: int, run: dict | None = None):
    """The search's oracle (not yet attached to a directory).

    The first slots are a warm start's configurations (run.json), then the space's
    default (the book's model in the full family: every search measures it, and
    picks something else only by beating it); those over the size budget are left out.
    """
    import keras_tuner

    from xtune.search._oracle import PlannedHyperbandOracle
    from xtune.search._sampler import ConfigSampler
    from xtune.search._state import objective_is_max

    direction = "max" if objective_is_max(settings.objective) else "min"
    size = settings.image_size
    warm = list(((run or {}).get("warm_start") or {}).get("configs") or [])
    sampler = ConfigSampler(space, settings.seed, fits=settings.budget().predicate((size, size, 3), num_classes),
                            first=[*warm, space.default_config().to_dict()])
    return PlannedHyperbandOracle(keras_tuner.Objective(settings.objective, direction), settings.plan(), sampler)


def make_tuner(project: Path, settings: SearchSettings, space: SearchSpace, splits: Any, *, oracle: Any = None,
               **tuner_kwargs: Any) -> SearchTuner:
    """Create the KerasTuner state in ``project``, or reload it. Never deletes.

    Call inside ``_kt.patched()``. A new search saves its state before the first
    trial, so a kill during the first trial resumes it (KerasTuner alone would
    start over).

    Args:
        oracle: The oracle to use (a worker's remote one); default ``build_oracle``.
        **tuner_kwargs: ``SearchTuner``'s options.
    """
    from xtune.search._tuner import SearchTuner
    from xtune.spaces import MiniXceptionHyperModel

    num_classes = len(splits.class_names)
    oracle = oracle if oracle is not None else build_oracle(settings, space, num_classes, read_run(project))
    hypermodel = MiniXceptionHyperModel((settings.image_size, settings.image_size, 3), num_classes, space)
    tuner = SearchTuner(oracle, hypermodel, Path(project), splits, seed=settings.seed, plan=settings.plan(),
                        **tuner_kwargs)
    if not tuner.reloaded:  # new, or killed before its first state write: start fresh
        tuner.save()
    return tuner


# -- the search ----------------------------------------------------------------------------------


def run_search(
    project: Path,
    given: dict,
    *,
    space_ref: str | Path | SearchSpace | None = None,
    data_dir: Path | None = None,
    archive: Path | None = None,
    overwrite: bool = False,
    progress: Callable[[Event], None] | None = None,
    mixed_precision: str = "auto",
    epoch_backups: bool = True,
    tensorboard: bool = True,
    splits: Any = None,
    data_info: dict | None = None,
    stop_event: threading.Event | None = None,
    strategy: str | None = None,
    chief: Any = None,
    recycle_mb: float | None = None,
    refresh_batch_norm: bool = True,
    warm_start: tuple | None = None,
) -> SearchOutcome:
    """Start or resume the search in ``project`` and run it until its plan is done.

    Args:
        project: The search directory (created if new).
        given: Settings passed explicitly (see ``SearchSettings``); on resume only
            used to refuse conflicts.
        space_ref: ``--space`` (a TOML file or built-in name).
        data_dir: Where prepared data is cached (default: the user's cache).
        archive: kaggle:dogs-vs-cats only: a downloaded archive to use offline.
        overwrite: Start over: remove what xtune wrote in ``project`` first.
        progress: Called with each event (``xtune._events``).
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
            with ``serve(tuner, stop_event)`` (``xtune.search._chief.ChiefServer``).
            It trains nothing, so devices are left alone.
        recycle_mb: Return with status "recycle" between trials once this process's
            RSS is this many MB above its level after its first trial (see
            ``SearchTuner``); only for a caller that resumes it in a new process.
        refresh_batch_norm: Re-estimate batch-norm statistics before each validation
            (off only to measure what it changes; ``ValidateEachEpoch``).
        warm_start: ``(other project, K)``: a new search's first trials are the K best
            configurations of another search (recorded in run.json).

    Returns:
        A ``SearchOutcome``.

    Raises:
        UsageError, ProjectError, DataError: one-line user errors.
    """
    project = Path(project)
    emit = progress or (lambda event: None)
    settings, space, run, warm = _resolve(project, given, space_ref, overwrite, warm_start)
    plan = settings.plan()
    stop_event = stop_event or threading.Event()
    created = not project.exists()
    if (early := _stop_early(project, plan, run, stop_event)) is not None:  # asked to stop while starting
        return early
    with ProjectLock(project, on_wait=emit):
        _atomic.check_writable(project, "--project")  # before any training
        extension = record_extension(project, run, settings) if run is not None else None
        if run is not None and load_project(project).done:
            return _already_finished(project, settings, space, plan, run)
        splits, data_info = _search_data(project, created, settings, space, plan, run, data_dir, archive, splits,
                                         data_info)
        if (early := _stop_early(project, plan, run, stop_event)) is not None:  # loading the data took a while
            return early
        run = _claim(project, run, overwrite)
        return _prepare_and_run(project, settings, space, run, splits, data_info, warm, extension, chief, emit,
                                stop_event, mixed_precision, strategy, recycle_mb=recycle_mb,
                                epoch_backups=epoch_backups, tensorboard=tensorboard,
                                refresh_batch_norm=refresh_batch_norm)


def _resolve(project: Path, given: dict, space_ref, overwrite: bool, warm_start: tuple | None
             ) -> tuple[SearchSettings, SearchSpace, dict | None, dict | None]:
    """The settings, space and run.json of the search (``resolve_settings``), checked; a warm start's record."""
    settings, space, run = resolve_settings(project, given, space_ref=space_ref, overwrite=overwrite)
    check_plan_fits_space(settings.plan(), space)
    if warm_start is not None and run is not None:
        raise UsageError(f"--warm-start starts a new search; {project} already holds one (resume it without "
                         "--warm-start, or pass --overwrite)")
    warm = warm_start_record(Path(warm_start[0]), int(warm_start[1]), space) if warm_start is not None else None
    return settings, space, run, warm


def _already_finished(project: Path, settings: SearchSettings, space, plan: HyperbandPlan,
                      run: dict) -> SearchOutcome:
    """A resumed search whose plan is done trains nothing, but what a crash damaged is still repaired
    (status said it would)."""
    from xtune.search import _kt

    with _kt.patched():
        classes = len((run.get("data") or {}).get("class_names") or []) or 2
        notes = prepare_directory(project, settings, space, run, None, classes)
    _finish(project)
    return search_outcome(project, "already finished", plan, True, notes)


def _search_data(project: Path, created: bool, settings: SearchSettings, space, plan: HyperbandPlan,
                 run: dict | None, data_dir, archive, splits, data_info):
    """The splits to search (``splits`` when given, else ``load_data``) and the data record, within the size budget.

    A new search whose data fails (or does not fit the budget) leaves no folder behind.
    """
    try:
        if splits is None:
            splits, data_info = load_data(project, settings, run, data_dir, archive)
        check_budget(settings, space, plan, len(splits.class_names))
    except BaseException:
        if created:  # a bad dataset leaves nothing behind
            remove_owned(project, SEARCH_ENTRIES)
            with contextlib.suppress(OSError):
                project.rmdir()
        raise
    return splits, data_info


def _claim(project: Path, run: dict | None, overwrite: bool) -> dict | None:
    """Mark ``project`` as a search; with ``overwrite``, first remove what an earlier search wrote.

    Returns:
        The run.json to resume, or None for a new search.
    """
    if overwrite:  # only what xtune wrote: the user's files and earlier exports stay
        remove_owned(project, SEARCH_ENTRIES, keep=(LOCK_FILE, SEARCH_MARKER))
        run = None
    if not has_marker(project, "search"):
        write_marker(project, "search")
    return run


def _prepare_and_run(project: Path, settings: SearchSettings, space, run: dict | None, splits, data_info,
                     warm: dict | None, extension: str | None, chief, emit, stop_event: threading.Event,
                     mixed_precision: str, strategy: str | None, **tuner_options) -> SearchOutcome:
    """Write run.json (or repair a resumed search), set up the devices (not for a chief: it trains nothing), run."""
    from xtune._runtime import configure_devices, distribution_strategy
    from xtune.search import _kt

    with _kt.patched():
        notes = prepare_directory(project, settings, space, run, data_info, len(splits.class_names), warm)
        notes += [extension] if extension else []
        devices = None if chief is not None else configure_devices(mixed_precision)
        strategy_obj = None if chief is not None else distribution_strategy(strategy)
        return _run(project, settings, space, splits, run is not None, notes, devices, strategy_obj, chief,
                    emit, stop_event, **tuner_options)


def _stop_early(project: Path, plan: HyperbandPlan, run: dict | None,
                stop_event: threading.Event) -> SearchOutcome | None:
    """The outcome of a search asked to stop while it was starting, else None.

    A search process whose supervisor was killed gets SIGTERM, possibly while it is
    still starting; it should let go of the project at once, not after its set-up.
    """
    if not stop_event.is_set():
        return None
    if run is None:
        raise ProjectError(f"interrupted before the search in {project} started; start it again")
    return search_outcome(project, "interrupted", plan, True)


def prepare_directory(project: Path, settings, space, run, data_info, num_classes: int,
                      warm: dict | None = None) -> list[str]:
    """Write run.json for a new search, or repair a resumed one; return the repairs made."""
    if run is None:
        write_run(project, settings, space.to_dict(), data_info, extra={"warm_start": warm} if warm else None)
        return []
    from xtune.search._repair import repair_project

    return repair_project(project, settings.plan(), lambda: build_oracle(settings, space, num_classes, run))


def _run(project, settings, space, splits, resumed, notes, devices, strategy_obj, chief, emit, stop_event,
         **tuner_options) -> SearchOutcome:
    from xtune.search._callbacks import DiskFull, RecycleProcess, SearchInterrupted, TooManyFailures

    plan = settings.plan()
    state = load_project(project) if resumed else None
    emit(SearchStarted(str(project), resumed, plan.to_dict(), settings.to_dict(), devices, notes,
                       len(state.ended) - len(state.failed) if state else 0, len(state.failed) if state else 0,
                       state.epochs_done if state else 0))
    try:
        tuner = make_tuner(project, settings, space, splits, emit=emit, stop_event=stop_event,
                           max_consecutive_failures=settings.max_consecutive_failures,
                           distribution_strategy=strategy_obj, **tuner_options)
        with stop_on_signals(stop_event):
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
        return search_outcome(project, "interrupted", plan, resumed, notes)
    except TooManyFailures as error:
        return search_outcome(project, "stopped", plan, resumed, notes, message=str(error))
    except RecycleProcess as error:
        return search_outcome(project, "recycle", plan, resumed, notes, message=str(error))
    except DiskFull as error:
        raise ProjectError(f"{error}; free some space and run the same command to resume") from None
    except OSError as error:
        if _atomic.is_disk_full(error):
            raise ProjectError(f"disk full while saving the search ({error}); free some space and run "
                               "the same command to resume") from None
        raise
    _finish(project)
    return search_outcome(project, "finished", plan, resumed, notes)


def _finish(project: Path) -> None:
    """Write finished.json (again, if it is missing or damaged)."""
    path = project / FINISHED_FILE
    try:
        _atomic.read_json(path)
    except (OSError, ValueError):
        _atomic.write_json(path, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def load_data(project: Path, settings: SearchSettings, run: dict | None, data_dir, archive=None):
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

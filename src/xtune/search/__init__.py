"""The Hyperband search over the mini-Xception family: plan, oracle, tuner, processes, state.

Keras 3 and KerasTuner only (no TensorFlow import here, but for TensorBoard logging),
so a search runs on any Keras backend given data that ``model.fit`` accepts. Every
use of KerasTuner's internals is in ``_kt`` (the seam). See docs/ARCHITECTURE.md.
"""

from typing import TYPE_CHECKING

from xtune.search._board import start_tensorboard
from xtune.search._plan import Bracket, HyperbandPlan, Round, hyperband_plan
from xtune.search._progress import SearchProgress
from xtune.search._project import ProjectLock, SearchSettings
from xtune.search._state import ProjectState, TrialRecord, TrialState, load_project, rank_key, search_status

if TYPE_CHECKING:  # loaded on first use (``__getattr__``); type checkers see them here
    from xtune.search._launch import SearchRequest, start_search, start_worker
    from xtune.search._preflight import resolve_settings
    from xtune.search._run import SearchOutcome, make_tuner, run_search
    from xtune.search._worker_request import WorkerRequest

__all__ = [
    "Bracket",
    "HyperbandPlan",
    "ProjectLock",
    "ProjectState",
    "Round",
    "SearchOutcome",
    "SearchProgress",
    "SearchRequest",
    "SearchSettings",
    "TrialRecord",
    "TrialState",
    "WorkerRequest",
    "hyperband_plan",
    "load_project",
    "make_tuner",
    "rank_key",
    "resolve_settings",
    "run_search",
    "search_status",
    "start_search",
    "start_tensorboard",
    "start_worker",
]

_LAZY = {
    "SearchOutcome": "_run",
    "make_tuner": "_run",
    "resolve_settings": "_preflight",
    "run_search": "_run",
    "SearchRequest": "_launch",
    "start_search": "_launch",
    "start_worker": "_launch",
    "WorkerRequest": "_worker_request",
}


def __getattr__(name):
    # These pull in KerasTuner and Keras (or gRPC); keep `import xtune.search` light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"xtune.search.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'xtune.search' has no attribute {name!r}")

"""The Hyperband search over the mini-Xception family: plan, tuner, resume, status.

Keras 3 and KerasTuner only (no TensorFlow import here), so a search runs on any
Keras backend given data that ``model.fit`` accepts.
"""

from xtune.search._board import start_tensorboard
from xtune.search._plan import Bracket, HyperbandPlan, Round, hyperband_plan
from xtune.search._project import (
    ProjectLock,
    ProjectState,
    SearchSettings,
    TrialState,
    load_project,
    search_status,
)

__all__ = [
    "Bracket",
    "HyperbandPlan",
    "ProjectLock",
    "ProjectState",
    "Round",
    "SearchOutcome",
    "SearchSettings",
    "TrialState",
    "hyperband_plan",
    "load_project",
    "make_tuner",
    "resolve_settings",
    "run_search",
    "search_status",
    "start_tensorboard",
]


def __getattr__(name):
    # These pull in KerasTuner and Keras; keep `import xtune.search` light.
    if name in ("SearchOutcome", "make_tuner", "resolve_settings", "run_search"):
        from xtune.search import _run

        return getattr(_run, name)
    raise AttributeError(f"module 'xtune.search' has no attribute {name!r}")

"""What a search settles and checks before it trains: its settings, its folder, its budget, a warm start.

``resolve_settings`` reads run.json on a resume (a flag that contradicts it is
refused, naming the flag; a larger ``--max-trials`` extends the search) or checks the
flags of a new search. The checks refuse, in one line and before any training, what
would otherwise fail minutes into a search: a folder that is not ours, one this
process cannot write, a size budget too small for the plan, a warm start with nothing
to offer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from xtune import _atomic
from xtune._owned import SEARCH_MARKER, describe, entries, has_marker, is_inside
from xtune.errors import UsageError
from xtune.search._plan import HyperbandPlan
from xtune.search._project import (
    FINISHED_FILE,
    LOCK_FILE,
    RUN_FILE,
    SearchSettings,
    check_image_size,
    read_run,
    settings_conflicts,
)
from xtune.search._state import load_project

if TYPE_CHECKING:
    from xtune.spaces import SearchSpace

FLAGS = {name: "--" + name.replace("_", "-") for name in SearchSettings.__dataclass_fields__}
FLAGS.update(kaggle_split="--split-sizes", max_consecutive_failures="--max-failures",
             max_image_bytes="--max-image-mb")


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def resolve_settings(project: Path, given: dict, *, space_ref: str | Path | SearchSpace | None = None,
                     overwrite: bool = False) -> tuple[SearchSettings, SearchSpace, dict | None]:
    """The settings and space of a search: from run.json on resume, else from ``given``.

    Args:
        project: The search directory.
        given: Settings passed explicitly (flag name without dashes -> value).
        space_ref: ``--space`` as given (a file or built-in name), or None.
        overwrite: Start over even if ``project`` holds a search.

    Returns:
        ``(settings, space, run)`` where ``run`` is the stored run.json or None.

    Raises:
        UsageError: A flag conflicts with run.json (naming it), a bad value, or a
            folder that is not a search.
    """
    from xtune.spaces import SearchSpace, load_space

    project = Path(project)
    given = {k: v for k, v in given.items() if v is not None}
    if not overwrite and (project / RUN_FILE).exists():
        run = read_run(project)
        stored = SearchSettings.from_dict(run["settings"])
        conflicts = settings_conflicts(stored, given)
        more = next((c for c in conflicts if c[0] == "max_trials" and c[1] > c[2]), None)
        if more is not None:  # a bigger budget extends the search with whole new brackets
            conflicts.remove(more)
            stored = extended(stored, more[1])
        space = SearchSpace.from_dict(run["space"])
        if space_ref is not None:
            asked = load_space(space_ref)
            if json.loads(json.dumps(asked.to_dict()["specs"])) != run["space"]["specs"]:
                conflicts.append(("space", space_ref, run["space"]["name"]))
        if conflicts:
            name, value, old = conflicts[0]
            flag = FLAGS.get(name, "--" + name.replace("_", "-"))
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
            raise UsageError(f"{FLAGS[name]} must be at least 1; got {getattr(settings, name)}")
    if settings.objective not in ("val_accuracy", "val_loss", "accuracy", "loss"):
        raise UsageError(f"--objective must be val_accuracy, val_loss, accuracy or loss; got {settings.objective!r}")
    return settings, load_space(space_ref), None


def extended(settings: SearchSettings, max_trials: int) -> SearchSettings:
    """The settings of a search extended to ``max_trials``: the same brackets per
    iteration, so the plan run so far is the start of the new one (whole new brackets follow)."""
    import dataclasses

    return dataclasses.replace(settings, max_trials=max_trials,
                               brackets_per_iteration=settings.plan().num_brackets)


def record_extension(project: Path, run: dict, settings: SearchSettings) -> str | None:
    """Write an extension into run.json (and the search is no longer finished); the note to show."""
    stored = SearchSettings.from_dict(run["settings"])
    if stored.max_trials == settings.max_trials:
        return None
    before, after = stored.plan(), settings.plan()
    run["settings"] = settings.to_dict()
    run.setdefault("extensions", []).append({"from_max_trials": stored.max_trials, "to_max_trials": settings.max_trials,
                                             "brackets_added": len(after.brackets) - len(before.brackets),
                                             "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    _atomic.write_json(project / RUN_FILE, run)
    (project / FINISHED_FILE).unlink(missing_ok=True)
    return (f"extended from {before.total_trials} to {after.total_trials} planned trials: "
            f"{len(after.brackets) - len(before.brackets)} new bracket(s); the {len(before.brackets)} before are kept")


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


def check_budget(settings: SearchSettings, space, plan: HyperbandPlan, num_classes: int) -> None:
    """Refuse, before training, a size budget that leaves too few configurations for the plan."""
    budget = settings.budget()
    if not budget:
        return
    from xtune.spaces import count_flops, count_params
    from xtune.spaces._budget import budget_share

    size = settings.image_size
    shape = (size, size, 3)
    share = budget_share(space, budget, shape, num_classes)
    where = f"{budget.describe()} at {size}x{size} with {num_classes} classes"
    if share.configurations_fitting == 0:
        smallest = space.extreme_config(largest=False)
        raise UsageError(f"no configuration of the space {space.name!r} fits {where} (the smallest has "
                         f"{count_params(smallest, shape, num_classes):,} parameters and "
                         f"{count_flops(smallest, shape, num_classes):,} FLOPs); raise the budget or change the space")
    if share.configurations_fitting < plan.architectures:
        raise UsageError(f"only {share.configurations_fitting:,} configurations of the space {space.name!r} fit {where}, "
                         f"but the plan samples {plan.architectures}; lower --max-trials or raise the budget")


def warm_start_record(other: Path, top: int, space) -> dict:
    """The K best distinct configurations of another search, as run.json keeps them.

    Its data and image size may differ (they are recorded); configurations outside
    this search's space are left out, since this search could never have drawn them.

    Raises:
        UsageError: ``top`` below 1, or the other search has no completed trial.
    """
    from xtune.search._sampler import active_values, config_key

    if top < 1:
        raise UsageError(f"--warm-start-top must be at least 1; got {top}")
    state = load_project(other)
    allowed = {spec.name: spec.all_values() for spec in space.specs}
    configs, seen = [], set()
    for trial in state.ranked():
        values = active_values(space, {**space.default_config().to_dict(), **trial.values})
        if any(v not in allowed[k] for k, v in values.items()) or config_key(values) in seen:
            continue
        seen.add(config_key(values))
        configs.append(values)
        if len(configs) == top:
            break
    if not configs:
        raise UsageError(f"--warm-start {other}: no completed trial there fits this search's space")
    return {"project": str(Path(other).resolve()), "search_id": state.run.get("search_id"), "top": top,
            "data": state.settings.data, "image_size": state.settings.image_size, "configs": configs}

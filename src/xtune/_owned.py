"""Folders xtune wrote, and the rule that ``--overwrite`` deletes nothing else.

A search directory and an export folder each carry a marker file that xtune writes
when it creates them (``.xtune-search``, ``.xtune-export``). ``--overwrite`` replaces
a folder only when it carries its marker (or is empty), and then removes only the
entries xtune writes there; a folder holding anything else is refused in one line
that names what is there, and nothing is deleted. Folders made before markers
existed are recognised by their own files (``run.json``; ``model_card.json``).

See docs/ARCHITECTURE.md ("Where state lives").
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from pathlib import Path

from xtune import _atomic
from xtune.errors import UsageError

SEARCH_MARKER = ".xtune-search"
EXPORT_MARKER = ".xtune-export"
_MARKERS = {"search": SEARCH_MARKER, "export": EXPORT_MARKER}

# What xtune writes into a search directory (shell patterns). Export folders
# (export, export-*) are products: a search --overwrite keeps them.
SEARCH_ENTRIES = (SEARCH_MARKER, ".lock", "run.json", "oracle.json", "tuner0.json", "worker-*.json", "trial_*",
                  "logs", "finished.json", "cluster", "report.html", "*.damaged-*", f"*{_atomic.TMP_MARK}*")
PARETO_DIR = "export-pareto"  # one export per member of the accuracy-vs-size front
EXPORT_ENTRIES = (EXPORT_MARKER, "model.keras", "saved_model", "model.tflite", "model_card.json", "README.md")


def write_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` as written by xtune (a search or an export)."""
    _atomic.write_json(Path(folder) / _MARKERS[kind],
                       {"kind": f"xtune-{kind}", "format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def has_marker(folder: Path, kind: str) -> bool:
    """Whether ``folder`` carries xtune's marker of that kind (a readable one)."""
    try:
        data = json.loads((Path(folder) / _MARKERS[kind]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") == f"xtune-{kind}"


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def entries(folder: Path) -> list[str]:
    """The names in ``folder`` (sorted), or [] when it does not exist."""
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []


def foreign(folder: Path, patterns) -> list[str]:
    """The entries of ``folder`` that xtune does not write there."""
    return [name for name in entries(folder) if not _matches(name, patterns)]


def describe(names: list[str], folder: Path, limit: int = 4) -> str:
    """``a.txt, notes/ and 3 more``: what a refused folder holds."""
    shown = [n + ("/" if (Path(folder) / n).is_dir() else "") for n in names[:limit]]
    more = len(names) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def remove_owned(folder: Path, patterns, keep=()) -> list[str]:
    """Delete the entries of ``folder`` that match ``patterns`` (never ``keep``); return their names."""
    removed = []
    for name in entries(folder):
        if name in keep or not _matches(name, patterns):
            continue
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        removed.append(name)
    return removed


def is_inside(path: Path, other: Path) -> bool:
    """Whether ``path`` is ``other`` or lies inside it (resolved, symlinks followed)."""
    a, b = Path(path).resolve(), Path(other).resolve()
    return a == b or b in a.parents


def check_export_target(out: Path, project: Path, data_folders: list[Path | None]) -> None:
    """Refuse an export folder that would overlap the search or the data.

    Inside the project, ``out`` must be an ``export*`` folder (``runs/NAME/export``, the
    default; ``export-seed``) or one of ``export-pareto/``, never among the search's
    own files or inside another export; it may not be the project, contain it, or
    overlap a data folder.

    Raises:
        UsageError: One line naming the overlap.
    """
    out, project = Path(out), Path(project)
    if is_inside(project, out):
        raise UsageError(f"--out {out} is or contains the search directory {project}; choose a folder outside it")
    if is_inside(out, project):
        parts = out.resolve().relative_to(project.resolve()).parts
        allowed = (len(parts) == 1 and parts[0].startswith("export")) or (len(parts) == 2 and parts[0] == PARETO_DIR)
        if not allowed:
            raise UsageError(f"--out {out} lies inside the search's own files in {project}; "
                             f"use {project / 'export'} or a folder outside the search")
    for folder in data_folders:
        if folder is not None and (is_inside(out, folder) or is_inside(folder, out)):
            raise UsageError(f"--out {out} overlaps the data folder {folder}; choose a folder apart from the data")

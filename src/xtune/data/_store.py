"""The data directory: where it is, its layout, locking and atomic writes.

::

    <data dir>/
      prepared/<name>/            complete prepared copies: {train,validation,test}/<class>/...
                                  and prepared.json, written last
      prepared/.<name>.tmp-...    a copy being built (a leftover one is removed, never used)
      downloads/dogs-vs-cats.zip  complete downloads only (``.part`` folders while downloading)
      sources/demo-digits/        the demo images, written once
      cache/                      decoded images of a running process (``cache="disk"``)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from pathlib import Path

from xtune import _atomic
from xtune.errors import DataError

MARKER = "prepared.json"


def default_data_dir() -> Path:
    """Where prepared data is cached unless ``--data-dir`` says otherwise.

    ``$XTUNE_DATA_DIR``, else ``$XDG_CACHE_HOME/xtune``, else ``~/.cache/xtune``.
    """
    env = os.environ.get("XTUNE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "xtune"


def resolve_data_dir(data_dir) -> Path:
    return Path(data_dir).expanduser().absolute() if data_dir is not None else default_data_dir().absolute()


def short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:40] or "folder"


@contextlib.contextmanager
def locked(folder: Path):
    """Hold an exclusive lock on ``folder`` (created if needed) for the block.

    One preparation at a time per data directory, also across processes (distributed
    workers sharing a data directory wait for the first one, then reuse its copy).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the data directory {folder}: {error.strerror or error}") from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def temp_sibling(final: Path) -> Path:
    """A fresh, hidden folder next to ``final`` to build into (``xtune._atomic``)."""
    return _atomic.temp_sibling(final)


def remove_stale(folder: Path) -> None:
    """Remove half-built folders left by killed processes (call under the lock)."""
    _atomic.remove_leftovers(folder)


remove = _atomic.remove
swap_into_place = _atomic.swap_into_place


def read_marker(folder: Path) -> dict | None:
    """The marker of a complete prepared folder, or None (missing, unreadable, not ours)."""
    try:
        with open(folder / MARKER, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def disk_full(error: OSError) -> bool:
    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)

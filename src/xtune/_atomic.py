"""Atomic writes: a temporary file in the same folder, flushed, fsynced, renamed over.

A kill or a crash at any moment leaves either the old file or the new one, never a
truncated one. A write that fails (a full disk) removes its temporary file and raises
``OSError``; the old file is untouched.

Fault injection for tests: with ``XTUNE_FAULT_PAUSE_WRITE=<seconds>`` every atomic
write stops half-way through its temporary file for that long (so a test can kill
the process inside a write); ``XTUNE_FAULT_PAUSE_WRITE_MATCH=<substring>`` limits it
to paths containing the substring. ``XTUNE_FAULT_ENOSPC=<substring>`` makes writes to
matching paths fail as a full disk would.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp-"


def _fault(path: str) -> None:
    enospc = os.environ.get("XTUNE_FAULT_ENOSPC")
    if enospc and enospc in path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _pause(path: str) -> None:
    pause = os.environ.get("XTUNE_FAULT_PAUSE_WRITE")
    if pause and os.environ.get("XTUNE_FAULT_PAUSE_WRITE_MATCH", "") in path:
        time.sleep(float(pause))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder, so a rename in it survives a crash of the machine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - not every platform can open a folder
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", _pause_before_rename: bool = True):
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    For writers that insist on a file name (h5py, Keras' ``save_weights``): write to
    the yielded path; the file is fsynced and renamed when the block ends, removed
    when it raises. ``suffix`` keeps an extension the writer requires.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    _fault(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + TMP_MARK, suffix=suffix, dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; keep what open() would give
    try:
        yield tmp
        if _pause_before_rename:
            _pause(path)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(folder)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    path = os.fspath(path)
    with atomic_path(path, _pause_before_rename=False) as tmp:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            _pause(path)  # a test hook: a kill here leaves only a partial temporary file
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> str:
    """Write ``obj`` as JSON to ``path`` atomically; return the JSON text."""
    text = json.dumps(obj, indent=indent)
    write_text(path, text)
    return text


def read_json(path: str | os.PathLike):
    """Read a JSON file. Raises ``ValueError`` (with the path) if it is damaged."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is damaged ({error})") from None


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = True) -> int:
    """Delete temporary files left by writes that a kill interrupted; return how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    pattern = f"**/*{TMP_MARK}*" if recursive else f"*{TMP_MARK}*"
    removed = 0
    for p in folder.glob(pattern):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def is_disk_full(error: BaseException) -> bool:
    """Whether an exception (or one it wraps) is a full disk or quota."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def keras_tuner_save_json(path, obj) -> str:
    """Drop-in for ``keras_tuner.src.utils.save_json``, but atomic (no indent, as theirs)."""
    return write_json(path, obj, indent=None)


def install_keras_tuner_atomic_writes() -> Callable:
    """Make every KerasTuner state file (oracle.json, trial.json, tuner0.json) atomic.

    KerasTuner writes all of them through ``keras_tuner.src.utils.save_json``, which
    truncates and writes in place; a kill in between leaves a file that no longer
    loads. Replacing that one function fixes every writer at once. Idempotent.
    """
    from keras_tuner.src import utils

    utils.save_json = keras_tuner_save_json
    return keras_tuner_save_json

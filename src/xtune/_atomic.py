"""Atomic writes: a temporary file (or folder) in the same folder, fsynced, renamed over.

A kill or a crash at any moment leaves either the old file or the new one, never a
truncated one. A write that fails (a full disk) removes its temporary file and raises
``OSError``; the old file is untouched. Folders (a prepared dataset, an export) are
built the same way by ``atomic_directory``: in a hidden sibling, renamed into place
when complete; leftovers of a killed build are hidden siblings, removed next time.

Fault injection for tests: with ``XTUNE_FAULT_PAUSE_WRITE=<seconds>`` every atomic
write stops half-way through its temporary file for that long (so a test can kill
the process inside a write); ``XTUNE_FAULT_PAUSE_WRITE_MATCH=<substring>`` limits it
to paths containing the substring. ``XTUNE_FAULT_ENOSPC=<substring>`` makes writes to
matching paths fail as a full disk would.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
import uuid
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


def is_disk_full(error: BaseException | None) -> bool:
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


# -- folders ---------------------------------------------------------------------------------------

OLD_MARK = ".old-"


def temp_sibling(final: str | os.PathLike) -> Path:
    """A fresh hidden folder next to ``final`` to build it in (``.NAME.tmp-PID-RANDOM``)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(mode=0o777 & ~_umask())
    return tmp


def swap_into_place(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the complete folder ``tmp`` to ``final``, replacing what is there."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists() or final.is_symlink():
        old = final.parent / f".{final.name}{OLD_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    fsync_dir(final.parent)
    if old is not None:
        remove(old)


def remove(path: str | os.PathLike) -> None:
    """Remove a file or a folder (not following a symbolic link); nothing if it is gone."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_leftovers(folder: str | os.PathLike, name: str | None = None) -> int:
    """Remove hidden ``.NAME.tmp-*``/``.NAME.old-*`` folders left by killed builds in ``folder``.

    Args:
        folder: Where to look.
        name: Only the leftovers of this folder name (default: of any).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    count = 0
    for entry in folder.iterdir():
        hidden = entry.name.startswith(".")
        ours = (TMP_MARK in entry.name or OLD_MARK in entry.name) and (
            name is None or entry.name.startswith(f".{name}{TMP_MARK}") or entry.name.startswith(f".{name}{OLD_MARK}"))
        if hidden and ours:
            remove(entry)
            count += 1
    return count


@contextmanager
def atomic_directory(final: str | os.PathLike):
    """Build a folder atomically: yield a hidden sibling; when the block ends, it becomes ``final``.

    ``final`` is replaced only once the block succeeds; an exception (or a kill)
    leaves the old ``final`` as it was and the sibling removed (or, after a kill, a
    hidden leftover that ``remove_leftovers`` clears).
    """
    tmp = temp_sibling(final)
    try:
        yield tmp
        swap_into_place(tmp, final)
    except BaseException:
        remove(tmp)
        raise


def check_writable(folder: str | os.PathLike, option: str) -> None:
    """Refuse, in one line naming ``option``, a folder this process cannot write in.

    A folder that does not exist yet is judged by its nearest existing parent. Used
    before anything is trained (a search's project, an export's output).
    """
    from xtune.errors import ProjectError

    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    probe = existing / f".write-check{TMP_MARK}{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ProjectError(f"cannot write in {existing} ({error.strerror or error}); "
                           f"make it writable or choose another {option}") from None

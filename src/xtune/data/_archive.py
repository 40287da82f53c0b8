"""Zip archives, read safely, and the Kaggle dogs-vs-cats layout.

Every member name of an archive is checked before anything is extracted: an absolute
path, a drive letter, a ``..`` component or a symbolic link refuses the whole archive.
Nothing is ever extracted by member name: files are read from the archive and
written to paths this module computes.

Sizes are checked too. An image member over the limit per image (by its declared size,
before reading; by the bytes read, while reading) or inflating over ``MAX_RATIO`` times
is skipped with its reason (see ``xtune.data._scan``). The ``train.zip`` inside
Kaggle's archive is copied to disk only when it declares at most ``MAX_NESTED_BYTES``
and does not inflate over ``MAX_RATIO`` times; else the archive is refused.
"""

from __future__ import annotations

import contextlib
import re
import stat
import threading
import zipfile
import zlib
from pathlib import Path

from xtune.data._read import Unusable, check_ratio, format_size, read_bounded, too_large
from xtune.data._scan import Entry
from xtune.errors import DataError

CLASSES = ("cat", "dog")
_MEMBER = re.compile(r"^train/(cat|dog)\.(\d+)\.jpg$")
# Kaggle's train.zip is about 545 MiB; four times that is a sane bound for the copy.
MAX_NESTED_BYTES = 2 << 30
_DAMAGED = (zipfile.BadZipFile, EOFError, ValueError, zlib.error, NotImplementedError)


def check_members(zf: zipfile.ZipFile, label: str) -> None:
    """Refuse an archive with a member that could write outside the target folder."""
    for info in zf.infolist():
        name = info.filename
        parts = re.split(r"[\\/]+", name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise DataError(f"refusing {label}: member {name!r} would be written outside the target folder")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"refusing {label}: member {name!r} is a symbolic link")


def open_zip(path: Path, label: str | None = None) -> zipfile.ZipFile:
    label = label or str(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataError(f"{label}: no such file") from None
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{label} is not a readable zip archive ({error}); download it again") from None
    try:
        check_members(zf, label)
    except BaseException:
        zf.close()
        raise
    return zf


@contextlib.contextmanager
def kaggle_entries(archive: Path, work: Path, sizes: tuple[int, int, int]):
    """Entries of the book's split from ``dogs-vs-cats.zip`` or its ``train.zip``.

    Per class, images ``0 .. train-1`` go to train, the next ``validation`` to
    validation, the next ``test`` to test (the book: 1000, 500, 1000). The nested
    ``train.zip`` is copied into ``work`` (a stream, so it need not fit in memory).
    Yields the entries; the archives stay open until the block ends.
    """
    with contextlib.ExitStack() as stack:
        outer = stack.enter_context(open_zip(archive))
        names = set(outer.namelist())
        nested = sorted(n for n in names if n.rsplit("/", 1)[-1] == "train.zip")
        if nested:
            work.mkdir(parents=True, exist_ok=True)
            inner_path = work / "train.zip"
            _copy_nested(outer, outer.getinfo(nested[0]), inner_path, archive)
            inner = stack.enter_context(open_zip(inner_path, f"{archive}:{nested[0]}"))
        elif any(_MEMBER.match(n) for n in names):
            inner = outer
        else:
            raise DataError(
                f"{archive} is neither Kaggle's dogs-vs-cats.zip nor its train.zip "
                "(no train.zip or train/cat.N.jpg inside)"
            )
        members = {}
        for name in inner.namelist():
            m = _MEMBER.match(name)
            if m:
                members[(m.group(1), int(m.group(2)))] = name
        lock = threading.Lock()

        def reader(member: str):
            info = inner.getinfo(member)

            def read(limit: int) -> bytes:
                if info.file_size > limit:
                    raise Unusable(too_large(info.file_size, limit, " declared in the archive"))
                bomb = check_ratio(info.file_size, info.compress_size)
                if bomb:
                    raise Unusable(bomb)
                with lock:
                    try:
                        with inner.open(info) as f:
                            return read_bounded(f.read, info.file_size, limit)
                    except _DAMAGED as error:
                        raise OSError(f"damaged archive member: {error}") from None
            return read

        entries = []
        bounds = (0, sizes[0], sizes[0] + sizes[1], sum(sizes))
        for cls in CLASSES:
            have = sum(1 for c, _ in members if c == cls)
            if have < bounds[-1]:
                raise DataError(
                    f"{archive} has {have} {cls} images; the split asked for needs {bounds[-1]} per class "
                    f"(train, validation, test = {', '.join(map(str, sizes))})"
                )
            for split, lo, hi in zip(("train", "validation", "test"), bounds, bounds[1:]):
                for i in range(lo, hi):
                    member = members.get((cls, i))
                    if member is None:
                        raise DataError(f"{archive} has no train/{cls}.{i}.jpg; the archive is incomplete, "
                                        "download it again")
                    entries.append(Entry(member, cls, f"{cls}.{i}.jpg", split, reader(member)))
        yield entries


def _copy_nested(outer: zipfile.ZipFile, info: zipfile.ZipInfo, dst: Path, archive: Path) -> None:
    """Copy a nested archive to ``dst`` by stream, within ``MAX_NESTED_BYTES`` and ``MAX_RATIO``."""
    label = f"{archive}: {info.filename}"
    if info.file_size > MAX_NESTED_BYTES:
        raise DataError(f"refusing {label} declares {format_size(info.file_size)}, over the "
                        f"{format_size(MAX_NESTED_BYTES)} limit (Kaggle's is about 545 MiB)")
    bomb = check_ratio(info.file_size, info.compress_size)
    if bomb:
        raise DataError(f"refusing {label} is {bomb}")
    copied = 0
    try:
        with outer.open(info) as src, open(dst, "wb") as out:
            while chunk := src.read(1 << 20):
                copied += len(chunk)
                if copied > MAX_NESTED_BYTES:  # zipfile stops at the declared size; this is the backstop
                    raise DataError(f"refusing {label} is longer than the {format_size(MAX_NESTED_BYTES)} limit")
                out.write(chunk)
    except (*_DAMAGED, zipfile.LargeZipFile) as error:
        raise DataError(f"{archive}: cannot unpack {info.filename} ({error}); download it again") from None

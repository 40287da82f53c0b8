"""Reading a file within limits: what `tune data prepare` reads of a file, and when it stops.

A file is checked before it is opened (``stat``: a pipe or a device is never opened, a
file over the limit never read) and read no further than the limit should it be longer
than it said; an archive member that inflates like a zip bomb is refused by its
declared sizes. The reasons are the scan's skip reasons (``Unusable``); the whole list
is in ``xtune.data._scan``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

# Above any camera JPEG (a 100-megapixel medium-format frame: 30-50 MB) and an 8-bit PNG
# of a 24-megapixel photo (40-50 MB); far above what a convnet trains on. It bounds what
# one scan thread holds. Uncompressed 16-bit TIFF scans can be larger: max_image_bytes.
MAX_IMAGE_BYTES = 64 << 20
# Archive members: JPEG and PNG barely compress (1-1.2x), uncompressed BMP or TIFF
# photos a few times; more than this, once over MIN_RATIO_BYTES, is a zip bomb.
MAX_RATIO = 200
MIN_RATIO_BYTES = 1 << 20

class Unusable(ValueError):
    """A file skipped before (or while) reading it; ``str(error)`` is the reason."""


def format_size(n: int) -> str:
    """``n`` bytes for people: "64 MiB", "1.5 GiB", "900 bytes"."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def too_large(size: int, limit: int, what: str = "") -> str:
    """The skip reason of a file over the limit per image."""
    return f"file too large ({format_size(size)}{what}; the limit is {format_size(limit)} per image)"


def check_ratio(file_size: int, compress_size: int) -> str | None:
    """Why an archive member is a likely zip bomb, or None."""
    if file_size > MIN_RATIO_BYTES and file_size > MAX_RATIO * max(compress_size, 1):
        return f"compressed {file_size / max(compress_size, 1):,.0f}:1 in the archive (over {MAX_RATIO}:1: a zip bomb?)"
    return None


def read_bounded(read: Callable[[int], bytes], expected: int, limit: int) -> bytes:
    """Read to the end with ``read(n)``, but never more than ``limit`` + 1 bytes.

    ``expected`` (the size the file says it has) sizes the first read, so an ordinary
    file is one read and no copy.

    Raises:
        Unusable: The data goes on past ``limit``.
    """
    parts: list[bytes] = []
    total = 0
    first = min(expected, limit) + 1
    while total <= limit:
        chunk = read(min(first - total if total < first else 1 << 20, limit + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    if total > limit:
        raise Unusable(f"file too large (longer than its size said, past the {format_size(limit)} limit per image)")
    return b"".join(parts)  # one part: the same object, no copy


_KINDS = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder"))


def _check_stat(st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "special file")
        raise Unusable(f"not a regular file ({kind})")
    if st.st_size > limit:
        raise Unusable(too_large(st.st_size, limit))


_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0))


def read_regular_file(path, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """A file's bytes, if it is a regular file (a symbolic link to one counts) of at most ``limit`` bytes.

    Checked with ``stat`` before it is opened (a pipe or a device is never opened), and
    again on the open file (it may have been swapped in between; ``O_NONBLOCK`` so that
    opening a pipe swapped in cannot block).

    Raises:
        Unusable: Not a regular file, a broken link, over ``limit``; the message says which.
        OSError: It cannot be read (permissions, I/O error).
    """
    try:
        st = os.stat(path)  # follows a symbolic link
    except OSError as error:
        if error.errno == errno.ENOENT and os.path.islink(path):
            raise Unusable("broken symbolic link") from None
        if error.errno == errno.ELOOP:
            raise Unusable("symbolic link loop") from None
        raise
    _check_stat(st, limit)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        _check_stat(st, limit)
        return read_bounded(lambda n: os.read(fd, n), st.st_size, limit)
    finally:
        os.close(fd)

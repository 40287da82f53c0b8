"""The scan: every file is checked once, before anything trains on it.

What happens to a file in a class folder:

- hidden (its name starts with "."): skipped, reason "hidden file". Hidden folders
  (and ``__MACOSX``) are not looked into.
- not a regular file (a named pipe, a device, a socket): skipped, e.g. "not a regular
  file (named pipe)", without being opened (a pipe would block, ``/dev/zero`` never ends).
- a symbolic link: followed only to a regular file, wherever it is (datasets are often
  links into a photo library), which then counts as the file; a link to anything else is
  skipped as that thing, a broken link "broken symbolic link". A link to a folder inside
  a class folder is not followed: "symbolic link to a folder (not followed)" (class
  folders themselves may be links: that is the layout the user chose).
- larger than the limit per image (``max_image_bytes``, ``MAX_IMAGE_BYTES`` = 64 MiB by
  default): skipped, "file too large (...)". The size is checked before the file is
  read (``stat``, or an archive member's declared size), and reading stops one byte past
  the limit should the file be longer than it said. An archive member that inflates
  over ``MAX_RATIO`` (200) times, to more than 1 MiB, is skipped too: image files barely
  compress, so only a zip bomb does that.
- empty: skipped, "zero-byte file".
- not an image Pillow can identify: skipped, "not an image"; if it starts like an
  image (JPEG, PNG, GIF, BMP, TIFF, WebP signature) but cannot be opened: "corrupt FMT".
- an image that fails to decode completely: "truncated FMT" (data ends early) or
  "corrupt FMT (message)". Images over Pillow's decompression-bomb limit (twice
  ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 megapixels) are skipped, "image too large",
  from their header, before decoding; below it, decoding threads share a memory budget
  (``DECODE_BUDGET``), so huge images are decoded one at a time.
- plain 8-bit RGB or grayscale JPEG, plain 8-bit RGB or grayscale PNG: kept byte for
  byte. TensorFlow decodes them with ``channels=3``, so a grayscale file reaches the
  model as RGB (gray copied to the three channels); such files are listed as
  converted with the action "decoded as RGB".
- anything else that decodes (CMYK JPEG, RGBA/LA/palette/1-bit/16-bit PNG, GIF, BMP,
  TIFF, WebP, ...): re-encoded as an 8-bit RGB PNG (lossless): transparency is
  composited over white, 16-bit values are scaled to 8 bits (v * 255 / 65535),
  animations keep their first frame. Listed as converted, "re-encoded as RGB PNG".

EXIF orientation is not applied (as in Keras' ``image_dataset_from_directory``).
So every file the pipeline reads is a JPEG or PNG that ``tf.io.decode_image``
decodes to RGB, and no bad file reaches tf.data. The reading within limits (sizes, file
kinds, zip bombs) is in ``xtune.data._read``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xtune.data._read import MAX_IMAGE_BYTES, Unusable, read_regular_file
from xtune.errors import DataError

SPLITS = ("train", "validation", "test")
_SPLIT_DIRS = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}
_IGNORED_DIRS = ("__MACOSX",)

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

KEPT_GRAY = "decoded as RGB"
REENCODED = "re-encoded as RGB PNG"

# Decoded pixels in flight across scan threads (see _Budget).
DECODE_BUDGET = 1 << 30
_DECODE_BYTES_PER_PIXEL = 8  # Pillow keeps RGB as 4 bytes a pixel; plus a converted copy


class _Budget:
    """Bytes that threads may hold at once; a request over the whole budget waits to run alone."""

    def __init__(self, total: int):
        self.total = total
        self._free = total
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, n: int):
        n = min(n, self.total)
        with self._cond:
            self._cond.wait_for(lambda: self._free >= n)
            self._free -= n
        try:
            yield
        finally:
            with self._cond:
                self._free += n
                self._cond.notify_all()


_DECODING = _Budget(DECODE_BUDGET)


@dataclass(frozen=True)
class SkippedFile:
    """A file kept out of training.

    Args:
        path: Relative to the source (the folder, or the archive's members).
        reason: Why, e.g. "zero-byte file", "truncated JPEG", "not an image".
    """

    path: str
    reason: str


@dataclass(frozen=True)
class ConvertedFile:
    """A file that reaches the model as RGB although it is stored otherwise.

    Args:
        path: Relative to the source.
        original: Format and mode it came in, e.g. "JPEG CMYK", "PNG RGBA", "PNG I;16 16-bit".
        action: "re-encoded as RGB PNG", or "decoded as RGB" (plain grayscale, kept as is).
    """

    path: str
    original: str
    action: str


@dataclass(frozen=True)
class Verdict:
    action: str  # "keep", "convert" or "skip"
    reason: str = ""
    original: str = ""
    payload: bytes | None = None  # the RGB PNG, for "convert"


def sniff_format(raw: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if raw.startswith(magic):
            return fmt
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WEBP"
    return None


def _png_header(raw: bytes) -> tuple[int, int] | None:
    """(bit depth, color type) from a PNG's IHDR chunk."""
    if len(raw) >= 26 and raw[12:16] == b"IHDR":
        return raw[24], raw[25]
    return None


def check_image(raw: bytes) -> Verdict:
    """Decide what to do with one file's bytes (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    if not raw:
        return Verdict("skip", "zero-byte file")
    magic = sniff_format(raw)
    try:
        img = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        return Verdict("skip", f"corrupt {magic} (cannot be decoded)" if magic else "not an image")
    except Image.DecompressionBombError:
        return Verdict("skip", "image too large (decompression bomb limit)")
    except Exception as error:  # Pillow raises many kinds on garbage
        return Verdict("skip", _corrupt(magic or "image", error))
    with img, _DECODING.hold(img.width * img.height * _DECODE_BYTES_PER_PIXEL):
        fmt = img.format or magic or "image"
        try:
            img.load()
        except Image.DecompressionBombError:
            return Verdict("skip", f"image too large ({img.width}x{img.height})")
        except Exception as error:
            return Verdict("skip", _corrupt(fmt, error))
        if img.width < 1 or img.height < 1:
            return Verdict("skip", f"corrupt {fmt} (empty image)")
        mode = img.mode
        header = _png_header(raw) if fmt == "PNG" else None
        depth16 = header is not None and header[0] == 16
        original = f"{fmt} {mode}" + (" 16-bit" if depth16 else "")
        if fmt == "JPEG" and mode in ("RGB", "L"):
            return Verdict("keep", original=original if mode == "L" else "")
        if header is not None and header[0] == 8 and header[1] in (0, 2) and "transparency" not in img.info:
            return Verdict("keep", original=original if header[1] == 0 else "")
        try:
            payload = _rgb_png(img)
        except Exception as error:
            return Verdict("skip", _corrupt(fmt, error))
        return Verdict("convert", original=original, payload=payload)


def _corrupt(fmt: str, error: BaseException) -> str:
    message = " ".join(str(error).split())
    if isinstance(error, EOFError) or "truncated" in message.lower():
        return f"truncated {fmt}"
    return f"corrupt {fmt} ({message[:80] or type(error).__name__})"


def _rgb_png(img) -> bytes:
    """The image as an 8-bit RGB PNG (see the module docstring for the rules)."""
    import numpy as np
    from PIL import Image

    mode = img.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if (mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        arr8 = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        rgb = Image.fromarray(arr8, "L").convert("RGB")
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    else:
        rgb = img.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue()


# ---------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class Entry:
    """One candidate file of a source.

    ``rel`` is what the user sees (relative to the source), ``name`` the file's path
    inside its class folder, ``split`` the split the source puts it in (None: the
    stratified split decides). ``read(limit)`` returns the bytes, or raises ``Unusable``
    (over ``limit``, not a regular file, ...) or ``OSError``.
    """

    rel: str
    cls: str
    name: str
    split: str | None
    read: Callable[[int], bytes]


@dataclass(frozen=True)
class Scanned:
    entry: Entry
    verdict: Verdict  # without payload
    digest: str | None = None  # sha256 of the bytes written
    staged: Path | None = None


@dataclass
class FolderListing:
    """What a folder source holds, before any file is opened."""

    layout: str  # "classes" or "split"
    entries: list[Entry]
    class_dirs: dict[tuple[str | None, str], int]  # (split, class) -> files found (hidden excluded)
    skipped: list[SkippedFile]
    warnings: list[str]


def _visible_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder)
                  if e.is_dir() and not e.name.startswith(".") and e.name not in _IGNORED_DIRS)


def _stray_files(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if not e.is_dir() and not e.name.startswith("."))


def _file_reader(path: Path) -> Callable[[int], bytes]:
    return lambda limit: read_regular_file(path, limit)


def list_folder(root: Path) -> FolderListing:
    """Find the layout, the class folders and their files (nothing is opened yet)."""
    try:
        top = _visible_dirs(root)
    except OSError as error:
        raise DataError(f"cannot read the folder {root}: {error.strerror or error}") from None
    warnings_: list[str] = []
    if "train" in top:
        layout = "split"
        dirs = {}
        for wanted, aliases in _SPLIT_DIRS.items():
            present = [n for n in aliases if n in top]
            if not present:
                missing = [s for s, ns in _SPLIT_DIRS.items() if not any(n in top for n in ns)]
                raise DataError(
                    f"{root} has train/ but no {' or '.join(m + '/' for m in missing)}: a split folder needs "
                    "train/, validation/ and test/, each with one sub-folder per class "
                    "(or give a folder of class sub-folders only, to split it)"
                )
            dirs[wanted] = present[0]
        others = [n for n in top if n not in dirs.values()]
        if others:
            warnings_.append(f"folders ignored (not train/, validation/ or test/): {', '.join(o + '/' for o in others)}")
        groups: list[tuple[str | None, Path, str]] = [(split, root / dirs[split], dirs[split] + "/")
                                                      for split in SPLITS]
    else:
        layout = "classes"
        groups = [(None, root, "")]
    stray = _stray_files(root)
    if stray:
        warnings_.append(f"files outside class folders ignored: {_some(stray)}")

    entries: list[Entry] = []
    skipped: list[SkippedFile] = []
    class_dirs: dict[tuple[str | None, str], int] = {}
    for split, folder, prefix in groups:
        if split is not None:
            stray = _stray_files(folder)
            if stray:
                warnings_.append(f"files outside class folders ignored in {prefix}: {_some(stray)}")
        for cls in _visible_dirs(folder):
            found = 0
            names, linked_dirs = _walk(folder / cls)
            skipped.extend(SkippedFile(f"{prefix}{cls}/{name}", "symbolic link to a folder (not followed)")
                           for name in linked_dirs)
            for name in names:
                rel = f"{prefix}{cls}/{name}"
                if any(part.startswith(".") for part in PurePosixPath(name).parts):
                    skipped.append(SkippedFile(rel, "hidden file"))
                    continue
                found += 1
                entries.append(Entry(rel, cls, name, split, _file_reader(folder / cls / name)))
            class_dirs[(split, cls)] = found
    return FolderListing(layout, entries, class_dirs, skipped, warnings_)


def _walk(folder: Path) -> tuple[list[str], list[str]]:
    """Files under ``folder`` (recursively, hidden folders pruned), and links to folders; relative, sorted.

    Files are anything but a folder (pipes and devices too: the scan says why they are
    skipped). Links to folders are not followed (they could lead anywhere, or loop).
    """
    files: list[str] = []
    links: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = PurePosixPath(Path(dirpath).relative_to(folder).as_posix())

        def rel(name, rel_dir=rel_dir):
            return str(rel_dir / name) if str(rel_dir) != "." else name

        visible = [d for d in dirnames if not d.startswith(".") and d not in _IGNORED_DIRS]
        links.extend(rel(d) for d in visible if os.path.islink(os.path.join(dirpath, d)))
        dirnames[:] = sorted(d for d in visible if not os.path.islink(os.path.join(dirpath, d)))
        files.extend(rel(name) for name in filenames)
    return sorted(files), sorted(links)


def _some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def listing_signature(root: Path) -> str:
    """Changes when a file under ``root`` is added, removed, resized or touched."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).as_posix()
        digest.update(f"D {rel}\n".encode())
        for name in sorted(filenames):
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            digest.update(f"F {rel}/{name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------- scanning


def scan_entries(entries: list[Entry], staging: Path | None = None, workers: int | None = None,
                 max_bytes: int = MAX_IMAGE_BYTES) -> list[Scanned]:
    """Check every entry (in parallel threads; Pillow decodes without the GIL).

    With ``staging``, what will be kept is written there (``<index>``), so each file is
    read once; without it the scan is read-only (``tune data info`` on a folder). A
    file over ``max_bytes`` is skipped without being read.
    """
    if staging is not None:
        staging.mkdir(parents=True, exist_ok=True)
    workers = workers or min(32, 2 * (os.cpu_count() or 1))

    def work(index: int, entry: Entry) -> Scanned:
        try:
            raw = entry.read(max_bytes)
        except Unusable as error:
            return Scanned(entry, Verdict("skip", str(error)))
        except OSError as error:
            return Scanned(entry, Verdict("skip", f"unreadable file ({error.strerror or error})"))
        verdict = check_image(raw)
        if verdict.action == "skip":
            return Scanned(entry, verdict)
        out = verdict.payload if verdict.action == "convert" else raw
        assert out is not None  # a "convert" verdict carries its payload
        staged = None
        if staging is not None:
            staged = staging / f"{index:08d}"
            staged.write_bytes(out)
        return Scanned(entry, Verdict(verdict.action, original=verdict.original),
                       hashlib.sha256(out).hexdigest(), staged)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's EXIF/ICC chatter; real problems are verdicts
        if workers <= 1 or len(entries) < 8:
            return [work(i, e) for i, e in enumerate(entries)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xtune-scan") as pool:
            return list(pool.map(work, range(len(entries)), entries))

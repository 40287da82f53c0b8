"""Sources -> a validated, split, local folder: ``prepare_data`` and ``load_prepared``.

A prepared copy is built in a temporary sibling folder and renamed into place at the
end; its marker, ``prepared.json``, is written last (before the rename). A folder
without the marker, or a leftover temporary folder, is never used: it is removed and
built again. One preparation runs at a time per data directory (a file lock).

This module finds the source and the copy, and builds it: a source is listed and
scanned (``xtune.data._scan``), then split and named (``xtune.data._assemble``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from xtune import __version__, _atomic
from xtune.data import _store
from xtune.data._assemble import assemble
from xtune.data._read import MAX_IMAGE_BYTES
from xtune.data._scan import (
    SPLITS,
    ConvertedFile,
    SkippedFile,
    list_folder,
    listing_signature,
    scan_entries,
)
from xtune.errors import DataError, UsageError

# 2: the limit per image is a setting; names no longer clash (copies of format 1 may
# have lost an image to a clash, so they are prepared again, not reused).
FORMAT = 2
KAGGLE_SOURCE = "kaggle:dogs-vs-cats"
DEMO_SOURCE = "demo"
BOOK_SPLIT = (1000, 500, 1000)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PreparedData:
    """A prepared dataset: ``root/{train,validation,test}/<class>/<files>``.

    Args:
        source: "demo", "kaggle:dogs-vs-cats", or the folder's absolute path.
        root: The prepared folder.
        class_names: Sorted; a class's index is its label.
        counts: Images per split and class (``counts["train"]["cat"]``).
        skipped: Files kept out, with the reason, relative to the source.
        converted: Files that reach the model as RGB although stored otherwise.
        fingerprint: Changes when the prepared content changes (names, bytes, classes).
        warnings: What was ignored (empty class folders, stray files).
        settings: How it was split (layout, fractions and seed, or the Kaggle sizes),
            and ``max_image_bytes``, the limit per image it was prepared with.
        origin: Where the images come from, and their license (the demo's).
        prepared_at: When it was prepared (ISO 8601).
    """

    source: str
    root: Path
    class_names: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    skipped: tuple[SkippedFile, ...] = ()
    converted: tuple[ConvertedFile, ...] = ()
    fingerprint: str = ""
    warnings: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)
    origin: str | None = None
    license: str | None = None
    prepared_at: str | None = None

    @property
    def sizes(self) -> dict[str, int]:
        """Images per split."""
        return {split: sum(self.counts.get(split, {}).values()) for split in SPLITS}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        """JSON-ready, for run.json and ``tune data info --format json``."""
        return {
            "source": self.source,
            "root": str(self.root) if self.root is not None else None,
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "sizes": self.sizes,
            "counts": {s: dict(c) for s, c in self.counts.items()},
            "fingerprint": self.fingerprint,
            "settings": dict(self.settings),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "converted": [{"path": c.path, "original": c.original, "action": c.action} for c in self.converted],
            "warnings": list(self.warnings),
            "origin": self.origin,
            "license": self.license,
            "prepared_at": self.prepared_at,
        }

    @classmethod
    def from_dict(cls, d: dict, root: Path | None = None) -> PreparedData:
        return cls(
            source=d["source"],
            # None only in describe_data's scan of a folder not prepared (to_dict says null)
            root=cast(Path, Path(root) if root is not None else (Path(d["root"]) if d.get("root") else None)),
            class_names=tuple(d["class_names"]),
            counts={s: {c: int(n) for c, n in cs.items()} for s, cs in d["counts"].items()},
            skipped=tuple(SkippedFile(s["path"], s["reason"]) for s in d.get("skipped", ())),
            converted=tuple(ConvertedFile(c["path"], c["original"], c["action"]) for c in d.get("converted", ())),
            fingerprint=d.get("fingerprint", ""),
            warnings=tuple(d.get("warnings", ())),
            settings=dict(d.get("settings", {})),
            origin=d.get("origin"),
            license=d.get("license"),
            prepared_at=d.get("prepared_at"),
        )


# ---------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    kind: str  # "kaggle", "demo" or "folder"
    text: str  # canonical: what PreparedData.source says
    path: Path | None = None

    @property
    def folder(self) -> Path:
        """The path of a folder source (the others have none)."""
        assert self.path is not None, self.kind
        return self.path


def _parse_source(source) -> _Source:
    text = str(source).strip()
    if text == DEMO_SOURCE:
        return _Source("demo", DEMO_SOURCE)
    if text.lower().startswith("kaggle:"):
        if text.lower() != KAGGLE_SOURCE:
            raise UsageError(f"unknown Kaggle source {text!r}: the supported one is {KAGGLE_SOURCE}")
        return _Source("kaggle", KAGGLE_SOURCE)
    path = Path(text).expanduser()
    if not path.exists():
        raise UsageError(f"data source {text!r} is not demo, {KAGGLE_SOURCE} or an existing folder")
    if not path.is_dir():
        raise UsageError(f"data source {text!r} is a file; give a folder of class sub-folders, demo, or "
                         f"{KAGGLE_SOURCE} (a downloaded dogs-vs-cats.zip goes with --archive)")
    path = path.resolve()
    return _Source("folder", str(path), path)


def _check_settings(validation_fraction, test_fraction, kaggle_split, max_image_bytes=MAX_IMAGE_BYTES) -> None:
    if isinstance(max_image_bytes, bool) or not isinstance(max_image_bytes, int) or max_image_bytes < 1:
        raise UsageError(f"the limit per image must be a positive number of bytes; got {max_image_bytes!r}")
    for name, value in (("validation fraction", validation_fraction), ("test fraction", test_fraction)):
        if not 0 < value < 1:
            raise UsageError(f"the {name} must be between 0 and 1 (exclusive); got {value}")
    if validation_fraction + test_fraction >= 1:
        raise UsageError(f"validation and test fractions leave nothing to train on: "
                         f"{validation_fraction} + {test_fraction} >= 1")
    sizes = tuple(kaggle_split)
    if len(sizes) != 3 or any(int(n) != n or n < 1 for n in sizes):
        raise UsageError(f"the Kaggle split needs three positive sizes (train, validation, test); got {kaggle_split}")
    if sum(sizes) > 12500:
        raise UsageError(f"the Kaggle split asks for {sum(sizes)} images per class; dogs-vs-cats has 12500")


def _check_archive(src: _Source, archive: Path | None) -> Path | None:
    """``--archive`` as an absolute path, refused unless it is a file given for the Kaggle source."""
    if archive is None:
        return None
    if src.kind != "kaggle":
        raise UsageError(f"--archive is for {KAGGLE_SOURCE} only; {src.text!r} needs none")
    archive = Path(archive).expanduser().absolute()
    if not archive.is_file():
        raise UsageError(f"--archive {archive}: no such file")
    return archive


def _settings(src: _Source, validation_fraction, test_fraction, split_seed, kaggle_split,
              max_image_bytes=MAX_IMAGE_BYTES) -> dict:
    # The limit per image decides which files are kept, so it names the copy like a split does.
    if src.kind == "kaggle":
        return {"layout": "kaggle", "split_sizes": [int(n) for n in kaggle_split],
                "max_image_bytes": int(max_image_bytes)}
    return {"validation_fraction": float(validation_fraction), "test_fraction": float(test_fraction),
            "split_seed": int(split_seed), "max_image_bytes": int(max_image_bytes)}


def _prepared_name(src: _Source, settings: dict) -> str:
    if src.kind == "kaggle":
        limit = settings["max_image_bytes"]
        suffix = "" if limit == MAX_IMAGE_BYTES else (f"-{limit >> 20}MiB" if limit % (1 << 20) == 0 else f"-{limit}B")
        return "dogs-vs-cats-" + "-".join(map(str, settings["split_sizes"])) + suffix
    if src.kind == "demo":
        return f"demo-digits-{_store.short_hash(settings)}"
    return f"{_store.slug(src.folder.name)}-{_store.short_hash([src.text, settings])}"


# ---------------------------------------------------------------------------- public


def prepare_data(
    source: str,
    *,
    data_dir: Path | None = None,
    archive: Path | None = None,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 1337,
    kaggle_split: tuple[int, int, int] = BOOK_SPLIT,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> PreparedData:
    """Download, unpack and scan a source into a prepared folder; reuse one if complete.

    Idempotent: a complete prepared copy of the same source and settings is reused at
    once (a folder source's copy is redone when the folder changed: a file added,
    removed, resized or touched).

    Args:
        source: "demo" (handwritten digits shipped in scikit-learn), "kaggle:dogs-vs-cats"
            (the book's data), or a folder: ``train/ validation/ test/`` with one
            sub-folder per class each, or class sub-folders only (split here).
        data_dir: Where prepared data is cached (default: ``default_data_dir()``).
        archive: For kaggle:dogs-vs-cats, an already downloaded ``dogs-vs-cats.zip``
            or ``train.zip`` to use instead of downloading (offline).
        validation_fraction: A class-folders-only source: share of each class for validation.
        test_fraction: Likewise for test.
        split_seed: Seeds that stratified split.
        kaggle_split: Images per class for train, validation and test, taken in file
            number order (the book's: 1000, 500, 1000 = images 0-999, 1000-1499, 1500-2499).
        max_image_bytes: The limit per image file (default ``MAX_IMAGE_BYTES``, 64 MiB):
            a larger file is skipped, with its reason, without being read (archive
            members by their declared size). Part of the copy's settings: a copy
            prepared with another limit is not reused.
        overwrite: Prepare again even if a complete copy exists (a complete download is kept).
        progress: Called with a line of text at each long step.

    Returns:
        The prepared data.

    Raises:
        UsageError: A source or setting that cannot be used.
        DataError: Data that cannot be prepared (no credentials, a bad archive, fewer
            than two classes, an empty split, a class missing from a split, ...).
    """
    src = _parse_source(source)
    _check_settings(validation_fraction, test_fraction, kaggle_split, max_image_bytes)
    archive = _check_archive(src, archive)
    settings = _settings(src, validation_fraction, test_fraction, split_seed, kaggle_split, max_image_bytes)
    root_dir = _store.resolve_data_dir(data_dir)
    prepared_dir = root_dir / "prepared"
    final = prepared_dir / _prepared_name(src, settings)

    if not overwrite:
        reused = _reusable(final, src, settings)
        if reused is not None:
            return reused
    with _store.locked(prepared_dir):
        _store.remove_stale(prepared_dir)
        if not overwrite:
            reused = _reusable(final, src, settings)  # another process may have just built it
            if reused is not None:
                return reused
        record = _build_in_place(src, settings, final, root_dir, archive, progress)
    return PreparedData.from_dict(record, root=final)


def load_prepared(
    source: str,
    *,
    data_dir: Path | None = None,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 1337,
    kaggle_split: tuple[int, int, int] = BOOK_SPLIT,
    max_image_bytes: int = MAX_IMAGE_BYTES,
) -> PreparedData:
    """The prepared copy of a source, without preparing anything.

    The settings must be those it was prepared with (they name the copy).

    Raises:
        DataError: It is not prepared (the message says how to prepare it).
    """
    src = _parse_source(source)
    _check_settings(validation_fraction, test_fraction, kaggle_split, max_image_bytes)
    settings = _settings(src, validation_fraction, test_fraction, split_seed, kaggle_split, max_image_bytes)
    root_dir = _store.resolve_data_dir(data_dir)
    final = root_dir / "prepared" / _prepared_name(src, settings)
    marker = _store.read_marker(final)
    if marker is None or marker.get("format") != FORMAT or not _same_settings(marker.get("settings"), settings):
        raise DataError(f"{src.text} is not prepared in {root_dir}; run: tune data prepare "
                        f"{_quote(source)}{_options_hint(data_dir, src, settings)}")
    return PreparedData.from_dict(marker, root=final)


def describe_data(
    source: str,
    *,
    data_dir: Path | None = None,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 1337,
    kaggle_split: tuple[int, int, int] = BOOK_SPLIT,
    max_image_bytes: int = MAX_IMAGE_BYTES,
) -> dict:
    """What ``tune data info`` shows: the prepared copy, or a read-only scan of a folder.

    A folder that is not prepared yet (or changed since) is scanned without writing
    anything, so its bad files and split sizes show before preparing. ``demo`` and
    ``kaggle:dogs-vs-cats`` must be prepared first. Arguments as for ``prepare_data``.

    Returns:
        ``PreparedData.to_dict()`` plus ``status``: "prepared", "not prepared" or "changed"
        (the last two: a scan, with ``root`` and ``prepared_at`` None).
    """
    src = _parse_source(source)
    options: dict[str, Any] = {"validation_fraction": validation_fraction, "test_fraction": test_fraction,
                               "split_seed": split_seed, "kaggle_split": kaggle_split,
                               "max_image_bytes": max_image_bytes}
    try:
        prepared = load_prepared(source, data_dir=data_dir, **options)
    except DataError:
        if src.kind != "folder":
            raise
        status = "not prepared"
    else:
        marker = _store.read_marker(prepared.root) or {}
        if src.kind != "folder" or marker.get("listing") == listing_signature(src.folder):
            return {"status": "prepared", **prepared.to_dict()}
        status = "changed"
    record = _build_folder(src.folder, _settings(src, **options), None)
    record["source"] = src.text
    return {"status": status, **PreparedData.from_dict(record, root=None).to_dict()}


def _quote(text) -> str:
    import shlex

    return shlex.quote(str(text))


def _options_hint(data_dir, src: _Source, settings: dict) -> str:
    hint = f" --data-dir {_quote(data_dir)}" if data_dir is not None else ""
    limit = settings["max_image_bytes"]
    if limit != MAX_IMAGE_BYTES and limit % (1 << 20) == 0:
        hint += f" --max-image-mb {limit >> 20}"
    if src.kind == "kaggle":
        if tuple(settings["split_sizes"]) != BOOK_SPLIT:
            hint += " --split-sizes " + ",".join(map(str, settings["split_sizes"]))
    else:
        if settings["validation_fraction"] != 0.15:
            hint += f" --validation-fraction {settings['validation_fraction']}"
        if settings["test_fraction"] != 0.15:
            hint += f" --test-fraction {settings['test_fraction']}"
        if settings["split_seed"] != 1337:
            hint += f" --split-seed {settings['split_seed']}"
    return hint


def _same_settings(stored, wanted: dict) -> bool:
    def strip(d):
        return {k: v for k, v in d.items() if k != "layout"} if isinstance(d, dict) else None

    return strip(stored) == strip(wanted)


def _reusable(final: Path, src: _Source, settings: dict) -> PreparedData | None:
    marker = _store.read_marker(final)
    if marker is None or marker.get("format") != FORMAT or not _same_settings(marker.get("settings"), settings):
        return None
    if src.kind == "folder" and marker.get("listing") != listing_signature(src.folder):
        return None
    return PreparedData.from_dict(marker, root=final)


# ---------------------------------------------------------------------------- building


def _build_in_place(src: _Source, settings: dict, final: Path, root_dir: Path, archive, progress) -> dict:
    """Build the copy in a temporary sibling, mark it complete, rename it to ``final``; its record.

    Under the data directory's lock. A failed or interrupted build leaves nothing behind.
    """
    tmp = _store.temp_sibling(final)
    try:
        record = _build(src, settings, tmp, root_dir, archive, progress)
        record.update(source=src.text, settings={**settings, **record.get("settings", {})}, format=FORMAT,
                      xtune_version=__version__, prepared_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        _atomic.write_json(tmp / _store.MARKER, record, indent=1)  # last: marks the copy complete
        _store.swap_into_place(tmp, final)
    except OSError as error:
        _store.remove(tmp)
        if _store.disk_full(error):
            raise DataError(f"disk full while preparing {src.text} in {root_dir}; free some space "
                            "or choose another --data-dir") from None
        raise
    except BaseException:
        _store.remove(tmp)
        raise
    return record


def _build(src: _Source, settings: dict, tmp: Path, root_dir: Path, archive, progress) -> dict:
    if src.kind == "kaggle":
        from xtune.data._archive import kaggle_entries

        downloaded = archive is None
        if downloaded:
            from xtune.data._kaggle import download_competition

            archive = download_competition(root_dir / "downloads", progress)
        if progress:
            progress(f"unpacking {archive}")
        try:
            with kaggle_entries(archive, tmp / ".work", tuple(settings["split_sizes"])) as entries:
                if progress:
                    progress(f"checking {len(entries)} images")
                scanned = scan_entries(entries, staging=tmp / ".staging", max_bytes=settings["max_image_bytes"])
        except DataError as error:
            if not downloaded:
                raise
            _store.remove(archive)  # a damaged download must not be reused
            raise DataError(f"{error} (the download was removed: run the same command to download it again)") from None
        _store.remove(tmp / ".work")
        record = assemble(scanned, "kaggle", {}, [], [], settings, tmp)
        record["archive"] = str(archive)
        return record
    if src.kind == "demo":
        from xtune.data import _demo

        _store.remove_stale(root_dir / "sources")  # under the data directory's lock
        if progress and not (root_dir / "sources" / _demo.FOLDER).is_dir():
            progress("writing the demo digits (scikit-learn's copy of the UCI handwritten digits)")
        folder = _demo.write_demo_folder(root_dir / "sources")
        record = _build_folder(folder, settings, tmp, progress)
        record.update(origin=_demo.ORIGIN, license=_demo.LICENSE)
        return record
    return _build_folder(src.folder, settings, tmp, progress)


def _build_folder(folder: Path, settings: dict, tmp: Path | None, progress=None) -> dict:
    """Scan a folder source; with ``tmp``, write the prepared copy there."""
    signature = listing_signature(folder)
    listing = list_folder(folder)
    if progress:
        progress(f"checking {len(listing.entries)} files in {folder}")
    scanned = scan_entries(listing.entries, staging=tmp / ".staging" if tmp is not None else None,
                           max_bytes=settings["max_image_bytes"])
    record = assemble(scanned, listing.layout, listing.class_dirs, listing.skipped, listing.warnings,
                      settings, tmp)
    record["listing"] = signature
    record["settings"] = {"layout": listing.layout, **settings}
    return record

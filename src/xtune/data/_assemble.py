"""Scanned files -> the prepared copy: its classes, its split, its file names, its fingerprint.

``assemble`` is where preparing decides: which classes count (a folder of unusable
files is ignored, with a warning), which split each image joins (the source's own
split folders, or a seeded split of each class, ``_stratify``), what each file is
called in the copy (``_prepared_names``), and the fingerprint of the result. Given a
folder it moves the files into place; without one it writes nothing (``tune data
info`` on a folder not yet prepared).

Every kept source file gets a file of its own in the prepared copy: names that would
clash once converted files become ``.png`` (``photo.bmp`` and ``photo.webp``), or that
differ only in case (``a.JPG`` and ``a.jpg``, one file on macOS or Windows), are made
unique, and each renaming is listed in the warnings.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import random
import unicodedata
from pathlib import Path

from xtune.data import _store
from xtune.data._read import format_size
from xtune.data._scan import (
    KEPT_GRAY,
    REENCODED,
    SPLITS,
    ConvertedFile,
    Scanned,
    SkippedFile,
    _some,
)
from xtune.errors import DataError


def assemble(scanned: list[Scanned], layout: str, class_dirs: dict, skipped: list[SkippedFile],
             warnings: list[str], settings: dict, tmp: Path | None) -> dict:
    """Skip, split, check and (with ``tmp``) move the kept files into place; the record for the marker."""
    usable, skipped, converted = _kept(scanned, skipped)
    class_names, ignored = _class_names(usable, class_dirs)
    warnings = [*warnings, *ignored]
    assigned = _split(layout, class_names, usable, settings)
    names, renamed = _prepared_names(scanned)
    if renamed:
        warnings.append(f"{len(renamed)} file{'s' if len(renamed) != 1 else ''} renamed in the prepared copy, as "
                        "their names clash ignoring case or the extension: "
                        + _some([f"{rel} as {name}" for rel, name in renamed]))
    too_large = sum(s.reason.startswith("file too large") for s in skipped)
    if too_large:
        warnings.append(f"{too_large} file{'s' if too_large != 1 else ''} over the limit per image "
                        f"({format_size(settings['max_image_bytes'])}) skipped: --max-image-mb raises it")
    counts, fingerprint = _place(assigned, class_names, names, tmp)
    return {
        "class_names": list(class_names),
        "counts": counts,
        "fingerprint": fingerprint,
        "skipped": [{"path": s.path, "reason": s.reason} for s in sorted(skipped, key=lambda s: s.path)],
        "converted": [{"path": c.path, "original": c.original, "action": c.action}
                      for c in sorted(converted, key=lambda c: c.path)],
        "warnings": warnings,
    }


def _kept(scanned: list[Scanned], skipped: list[SkippedFile]
          ) -> tuple[dict[str, list[Scanned]], list[SkippedFile], list[ConvertedFile]]:
    """The usable files by class, every skipped file (``skipped`` and the scan's), the converted files."""
    skipped = list(skipped)
    converted = []
    usable: dict[str, list[Scanned]] = {}
    for s in scanned:
        if s.verdict.action == "skip":
            skipped.append(SkippedFile(s.entry.rel, s.verdict.reason))
            continue
        if s.verdict.original:
            action = REENCODED if s.verdict.action == "convert" else KEPT_GRAY
            converted.append(ConvertedFile(s.entry.rel, s.verdict.original, action))
        usable.setdefault(s.entry.cls, []).append(s)
    return usable, skipped, converted


def _class_names(usable: dict[str, list[Scanned]], class_dirs: dict) -> tuple[tuple[str, ...], list[str]]:
    """The classes (sorted) and a warning for each class folder ignored: empty, or of bad files only.

    Raises:
        DataError: Fewer than two classes have usable images.
    """
    warnings = []
    found_files: dict[str, int] = {}
    for (_, cls), n in class_dirs.items():
        found_files[cls] = found_files.get(cls, 0) + n
    for cls in sorted(found_files):
        if cls in usable:
            continue
        if found_files[cls] == 0:
            warnings.append(f"empty class folder {cls!r} ignored")
        else:
            warnings.append(f"class folder {cls!r} ignored: none of its {found_files[cls]} files is a usable image")
    class_names = tuple(sorted(usable))
    if len(class_names) < 2:
        found = f"{len(class_names)} class ({class_names[0]})" if class_names else "no class"
        raise DataError(
            f"found {found} with usable images; need at least 2: one sub-folder per class "
            "(FOLDER/<class>/<images>, or FOLDER/train|validation|test/<class>/<images>)"
        )
    return class_names, warnings


def _split(layout: str, class_names: tuple[str, ...], usable: dict[str, list[Scanned]],
           settings: dict) -> dict[str, dict[str, list[Scanned]]]:
    """Each split's files by class: the source's split folders, or each class split here (``_stratify``).

    Raises:
        DataError: A split folder with no usable image, or a class missing from a split.
    """
    assigned: dict[str, dict[str, list[Scanned]]] = {split: {c: [] for c in class_names} for split in SPLITS}
    if layout == "classes":
        for cls in class_names:
            for split, items in zip(SPLITS, _stratify(cls, usable[cls], settings)):
                assigned[split][cls] = items
        return assigned
    for cls in class_names:
        for s in usable[cls]:
            assert s.entry.split is not None  # a split folder's files name their split
            assigned[s.entry.split][cls].append(s)
    for split in SPLITS:
        if not any(assigned[split].values()):
            raise DataError(f"the {split} split is empty: no usable images in its class folders")
    missing = [f"{cls} ({', '.join(s for s in SPLITS if not assigned[s][cls])})"
               for cls in class_names if not all(assigned[s][cls] for s in SPLITS)]
    if missing:
        raise DataError(f"class missing from a split: {'; '.join(missing)}; every class needs usable images "
                        "in train, validation and test")
    return assigned


def _place(assigned: dict[str, dict[str, list[Scanned]]], class_names: tuple[str, ...], names: dict[int, str],
           tmp: Path | None) -> tuple[dict[str, dict[str, int]], str]:
    """Count the files and fingerprint them (names and bytes); with ``tmp``, move each into place there."""
    digest = hashlib.sha256("\n".join(class_names).encode())
    lines = []
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        counts[split] = {}
        for cls in class_names:
            items = assigned[split][cls]
            counts[split][cls] = len(items)
            for s in items:
                name = names[id(s)]
                lines.append(f"{split}/{cls}/{name}\t{s.digest}")
                if tmp is not None:
                    dst = tmp / split / cls / name
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if os.path.lexists(dst):  # a file system that folds names further than _name_key
                        raise DataError(f"{s.entry.rel} and another file would both be {split}/{cls}/{name} in "
                                        f"the prepared copy on this file system; rename one of them")
                    assert s.staged is not None  # staged: the scan wrote into tmp's staging folder
                    os.replace(s.staged, dst)
    for line in sorted(lines):
        digest.update(b"\n" + line.encode())
    if tmp is not None:
        _store.remove(tmp / ".staging")
    return counts, digest.hexdigest()[:16]


def _stratify(cls: str, items: list[Scanned], settings: dict) -> tuple[list, list, list]:
    """Seeded split of one class: (train, validation, test), each non-empty."""
    n = len(items)
    if n < 3:
        raise DataError(f"class {cls!r} has {n} usable image{'s' if n != 1 else ''}; a class needs at least 3 "
                        "to appear in train, validation and test")
    order = sorted(items, key=lambda s: s.entry.name)
    random.Random(f"{settings['split_seed']}/{cls}").shuffle(order)
    n_val = max(1, math.floor(n * settings["validation_fraction"] + 0.5))
    n_test = max(1, math.floor(n * settings["test_fraction"] + 0.5))
    while n - n_val - n_test < 1:  # tiny classes: keep one for training
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        else:
            n_test -= 1
    test, validation, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return sorted(train, key=_by_name), sorted(validation, key=_by_name), sorted(test, key=_by_name)


def _by_name(s: Scanned) -> str:
    return s.entry.name


def _name_key(name: str) -> str:
    """What a case-insensitive, normalizing file system (macOS, Windows) sees of a name."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def _split_ext(name: str) -> tuple[str, str]:
    head, _, last = name.rpartition("/")
    stem, dot, ext = last.rpartition(".")
    if not dot or not stem:
        stem, ext = last, ""
    else:
        ext = "." + ext
    return (head + "/" if head else "") + stem, ext


def _prepared_names(scanned: list[Scanned]) -> tuple[dict[int, str], list[tuple[str, str]]]:
    """Each kept file's name in the prepared copy (by ``id``), and the files renamed for a clash.

    As in the source, with ``.png`` for a re-encoded file (``photo.bmp`` -> ``photo.png``).
    Names are unique per destination folder ignoring case, and never take another
    source file's name: files kept as they are claim their names first, in name order;
    a clash becomes ``photo.webp.png`` (re-encoded) or ``a-2.jpg``, ``a-3.jpg``, ...
    The destination folder of a class-folders source is the whole class, so the names
    do not depend on the split.
    """
    groups: dict[tuple, list[Scanned]] = {}
    for s in scanned:
        groups.setdefault((s.entry.split, s.entry.cls), []).append(s)
    names: dict[int, str] = {}
    renamed: list[tuple[str, str]] = []
    for items in groups.values():
        # Every source name (skipped ones too: no file takes over another's name) and its folders.
        sources = {_name_key("/".join(parts[:i])) for s in items
                   for parts in [s.entry.name.split("/")] for i in range(1, len(parts) + 1)}
        claimed: set[str] = set()
        usable = [s for s in items if s.verdict.action != "skip"]
        for s in sorted(usable, key=lambda s: (s.verdict.action == "convert", s.entry.name)):
            name = s.entry.name
            if s.verdict.action == "convert" and not name.lower().endswith(".png"):
                name = _split_ext(name)[0] + ".png"
            candidates = [name]
            if s.verdict.action == "convert" and name != s.entry.name:
                candidates.append(s.entry.name + ".png")
            stem, ext = _split_ext(candidates[-1])
            own = _name_key(s.entry.name)
            numbered = (f"{stem}-{i}{ext}" for i in itertools.count(2))
            chosen = next(c for c in itertools.chain(candidates, numbered)
                          if _name_key(c) not in claimed and (_name_key(c) == own or _name_key(c) not in sources))
            claimed.add(_name_key(chosen))
            names[id(s)] = chosen
            if chosen != name:
                renamed.append((s.entry.rel, chosen.rsplit("/", 1)[-1]))
    return names, sorted(renamed)

"""Name clashes in the prepared copy: every source image keeps a file of its own."""

import io

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from xtune.cli import tune
from xtune.data import prepare_data

from .images import image_bytes, make_classes_folder, write

SPLITS = ("train", "validation", "test")


def _prepare(*args):
    """`tune data prepare ARGS`; an exception other than click's exit would be a traceback for the user."""
    result = CliRunner().invoke(tune, ["data", "prepare", *map(str, args)])
    assert isinstance(result.exception, (SystemExit, type(None))), result.exception
    assert "Traceback" not in result.output
    return result


def _files_on_disk(prepared):
    return {split: {cls: sorted(p.relative_to(prepared.root / split / cls).as_posix()
                                for p in (prepared.root / split / cls).rglob("*") if p.is_file())
                    for cls in prepared.class_names} for split in SPLITS}


def _check_files_match_counts(prepared):
    """What `tune search` checks before training (the 'was changed' error): a file per counted image."""
    on_disk = _files_on_disk(prepared)
    assert {s: {c: len(f) for c, f in cs.items()} for s, cs in on_disk.items()} == prepared.counts
    return on_disk


# ---------------------------------------------------------------------------- name clashes


def _pixels(data: bytes) -> bytes:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).tobytes()


def _photos(prepared, on_disk):
    """The dog files in the prepared copy but those of ``make_classes_folder``."""
    return sorted(n for split in SPLITS for n in on_disk[split]["dog"] if not n.startswith("dog_"))


def test_converted_images_with_the_same_name_each_keep_their_own_file(tmp_path, data_dir):
    folder = make_classes_folder(tmp_path / "pets", per_class=4)
    bmp = write(folder / "dog" / "photo.bmp", image_bytes("BMP", seed=1))
    webp = write(folder / "dog" / "photo.webp", image_bytes("WEBP", seed=2))
    prepared = prepare_data(folder, data_dir=data_dir)
    assert _photos(prepared, _check_files_match_counts(prepared)) == ["photo.png", "photo.webp.png"]
    assert sum(prepared.sizes.values()) == 8 + 2  # 22 recorded and 21 on disk was the bug
    assert _pixels(next(prepared.root.rglob("photo.png")).read_bytes()) == _pixels(bmp.read_bytes())
    assert _pixels(next(prepared.root.rglob("photo.webp.png")).read_bytes()) == _pixels(webp.read_bytes())
    assert "1 file renamed in the prepared copy, as their names clash ignoring case or the extension: " \
           "dog/photo.webp as photo.webp.png" in prepared.warnings
    assert prepare_data(folder, data_dir=data_dir) == prepared  # reused, and the clash is not repeated


def test_no_converted_image_takes_another_files_name(tmp_path, data_dir):
    folder = make_classes_folder(tmp_path / "pets", per_class=4)
    sources = [write(folder / "dog" / name, image_bytes(fmt, seed=seed))
               for name, fmt, seed in (("photo.bmp", "BMP", 1), ("photo.webp", "WEBP", 2), ("photo.gif", "GIF", 3),
                                       ("photo.png", "PNG", 4), ("photo.webp.png", "PNG", 5), ("photo", "TIFF", 6))]
    prepared = prepare_data(folder, data_dir=data_dir)
    names = _photos(prepared, _check_files_match_counts(prepared))
    assert len(names) == 6 and {"photo.png", "photo.webp.png"} <= set(names)  # kept files keep their names
    copies = [p.read_bytes() for p in prepared.root.rglob("photo*")]
    assert sorted(map(_pixels, copies)) == sorted(_pixels(p.read_bytes()) for p in sources)


def test_names_that_differ_only_in_case_each_keep_their_own_file(tmp_path, data_dir):
    folder = make_classes_folder(tmp_path / "pets", per_class=4)
    write(folder / "dog" / "a.JPG", image_bytes(seed=1))
    if (folder / "dog" / "a.jpg").exists():
        pytest.skip("a case-insensitive file system: a.JPG and a.jpg are one file")
    sources = {name: write(folder / "dog" / name, image_bytes(fmt, mode, seed=seed))
               for name, fmt, mode, seed in (("a.JPG", "JPEG", "RGB", 1), ("a.jpg", "JPEG", "RGB", 2),
                                             ("c.JPG", "JPEG", "CMYK", 3), ("c.jpg", "JPEG", "CMYK", 4),
                                             ("b.TIFF", "TIFF", "RGB", 5), ("B.png", "PNG", "RGB", 6))}
    prepared = prepare_data(folder, data_dir=data_dir, split_seed=3)
    # Both CMYK files becoming c.png lost one on any file system; the rest clash on macOS and Windows.
    assert _photos(prepared, _check_files_match_counts(prepared)) == [
        "B.png", "a-2.jpg", "a.JPG", "b.TIFF.png", "c.jpg.png", "c.png"]
    copy = {p.name: p.read_bytes() for p in prepared.root.rglob("*") if p.is_file() and not p.name.startswith("dog_")}
    assert copy["a.JPG"] == sources["a.JPG"].read_bytes() and copy["a-2.jpg"] == sources["a.jpg"].read_bytes()
    assert _pixels(copy["c.png"]) == _pixels(sources["c.JPG"].read_bytes())
    assert _pixels(copy["c.jpg.png"]) == _pixels(sources["c.jpg"].read_bytes())
    result = _prepare(folder, "--data-dir", data_dir, "--split-seed", "3")
    assert result.exit_code == 0
    assert "warning: 3 files renamed in the prepared copy" in result.output

"""Hostile inputs: each is skipped with its reason, or refused in one line, and nothing else is touched.

Every case also checks the disk afterwards: all of the user's files are still there,
unchanged, and nothing was written outside the data directory. Memory figures for the
same inputs are in ``benchmarks/prepare_memory.py``, not here.
"""

import io
import os
import socket
import threading
import time
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from xtune.cli import tune
from xtune.data import DataError, _archive, _read, _scan, load_prepared, prepare_data
from xtune.errors import UsageError

from .images import bomb_png, image_bytes, kaggle_zip, make_classes_folder, set_declared_size, write

SPLITS = ("train", "validation", "test")


def _snapshot(root, exclude):
    """Every path under ``root`` but ``exclude``, with its type, size and modification time (links not followed)."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != str(exclude)]
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            seen[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return seen


def _prepare(*args):
    """`tune data prepare ARGS`; an exception other than click's exit would be a traceback for the user."""
    result = CliRunner().invoke(tune, ["data", "prepare", *map(str, args)])
    assert isinstance(result.exception, (SystemExit, type(None))), result.exception
    assert "Traceback" not in result.output
    return result


def _skip_line(output, path):
    """The reason printed for ``path`` in the table of skipped files."""
    lines = output.splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith(path + " ")), None)
    assert at is not None, output
    reason = [lines[at][len(path):].strip()]
    for more in lines[at + 1:]:  # a long reason wraps inside its column (the table fits the terminal)
        if not more.startswith(" " * len(path)) or not more.strip():
            break
        reason.append(more.strip())
    return " ".join(reason)


def _files_on_disk(prepared):
    return {split: {cls: sorted(p.relative_to(prepared.root / split / cls).as_posix()
                                for p in (prepared.root / split / cls).rglob("*") if p.is_file())
                    for cls in prepared.class_names} for split in SPLITS}


def _check_files_match_counts(prepared):
    """What `tune search` checks before training (the 'was changed' error): a file per counted image."""
    on_disk = _files_on_disk(prepared)
    assert {s: {c: len(f) for c, f in cs.items()} for s, cs in on_disk.items()} == prepared.counts
    return on_disk


# ---------------------------------------------------------------------------- folders


def _fifo(cat, outside):
    os.mkfifo(cat / "pipe.jpg")


def _socket(cat, outside):
    cwd = os.getcwd()
    os.chdir(cat)  # a socket's path must be short: bind a relative one
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("sock.jpg")
        sock.close()
    finally:
        os.chdir(cwd)


def _oversize(cat, outside):
    with open(cat / "huge.jpg", "wb") as f:
        f.write(image_bytes())
        f.truncate(65 << 20)  # sparse: 65 MiB that take no room on disk


FOLDER_CASES = [
    pytest.param(lambda cat, outside: os.symlink("/dev/zero", cat / "zero.jpg"), "cat/zero.jpg",
                 "not a regular file (character device)", id="symlink-to-dev-zero"),
    pytest.param(_fifo, "cat/pipe.jpg", "not a regular file (named pipe)", id="fifo",
                 marks=pytest.mark.timeout(60, method="thread")),  # the bug was a hang
    pytest.param(_socket, "cat/sock.jpg", "not a regular file (socket)", id="socket"),
    pytest.param(_oversize, "cat/huge.jpg", "file too large (65 MiB; the limit is 64 MiB per image)", id="oversize"),
    pytest.param(lambda cat, outside: write(cat / "bomb.png", bomb_png()), "cat/bomb.png",
                 "image too large (decompression bomb limit)", id="decompression-bomb"),
    pytest.param(lambda cat, outside: os.symlink(outside / "gone.jpg", cat / "broken.jpg"), "cat/broken.jpg",
                 "broken symbolic link", id="broken-symlink"),
    pytest.param(lambda cat, outside: os.symlink(cat / "loop.jpg", cat / "loop.jpg"), "cat/loop.jpg",
                 "symbolic link loop", id="symlink-loop"),
    pytest.param(lambda cat, outside: os.symlink(outside, cat / "elsewhere"), "cat/elsewhere",
                 "symbolic link to a folder (not followed)", id="symlink-to-a-folder-outside"),
]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX file types")
@pytest.mark.parametrize("make,path,reason", FOLDER_CASES)
def test_a_hostile_file_in_a_class_folder_is_skipped_with_its_reason(tmp_path, data_dir, make, path, reason):
    folder = make_classes_folder(tmp_path / "pets", per_class=4)
    outside = tmp_path / "outside"
    write(outside / "private.jpg", image_bytes(seed=5))
    make(folder / "cat", outside)
    before = _snapshot(tmp_path, data_dir)

    result = _prepare(folder, "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    assert _skip_line(result.output, path) == reason
    assert before == _snapshot(tmp_path, data_dir)  # nothing of the user's changed, nothing written beside it
    prepared = load_prepared(folder, data_dir=data_dir)
    assert [(s.path, s.reason) for s in prepared.skipped] == [(path, reason)]
    assert sum(prepared.sizes.values()) == 8
    _check_files_match_counts(prepared)
    assert not list(prepared.root.rglob("private.jpg"))


def test_a_link_leaving_the_folder_is_followed_only_to_a_regular_file(tmp_path, data_dir):
    """The documented choice: links are followed to regular files anywhere (datasets are often links)."""
    folder = make_classes_folder(tmp_path / "pets", per_class=4)
    photo = write(tmp_path / "library" / "photo.jpg", image_bytes(seed=42, color=(200, 40, 40)))
    os.symlink(photo, folder / "cat" / "linked.jpg")
    os.symlink("/dev/zero", tmp_path / "library" / "zero.jpg")
    os.symlink(tmp_path / "library" / "zero.jpg", folder / "cat" / "chain.jpg")  # a link to a link to a device
    before = _snapshot(tmp_path, data_dir)

    prepared = prepare_data(folder, data_dir=data_dir)
    assert [(s.path, s.reason) for s in prepared.skipped] == [
        ("cat/chain.jpg", "not a regular file (character device)")]
    copies = list(prepared.root.rglob("linked.jpg"))
    assert len(copies) == 1 and not copies[0].is_symlink()  # a copy, not a link out of the prepared folder
    assert copies[0].read_bytes() == photo.read_bytes()
    assert before == _snapshot(tmp_path, data_dir)


def test_the_limit_per_image_is_an_option_and_names_the_copy(tmp_path, data_dir):
    folder = make_classes_folder(tmp_path / "pets", per_class=4)
    big = write(folder / "dog" / "big.png", image_bytes("PNG", size=200, seed=3))  # about 120 kB
    size = big.stat().st_size
    strict = prepare_data(folder, data_dir=data_dir, max_image_bytes=size - 1)
    [(path, reason)] = [(s.path, s.reason) for s in strict.skipped]
    assert path == "dog/big.png" and reason.startswith("file too large (") and reason.endswith(" per image)")
    assert any("over the limit per image" in w and "--max-image-mb" in w for w in strict.warnings)
    assert strict.settings["max_image_bytes"] == size - 1
    default = prepare_data(folder, data_dir=data_dir)
    assert default.skipped == () and default.root != strict.root  # not the strict copy, reused silently
    assert default.settings["max_image_bytes"] == 64 << 20
    assert load_prepared(folder, data_dir=data_dir, max_image_bytes=size - 1) == strict
    with pytest.raises(DataError, match=r"not prepared .* --max-image-mb 1$"):
        load_prepared(folder, data_dir=data_dir, max_image_bytes=1 << 20)
    for bad in (0, -5, 1.5, True):
        with pytest.raises(UsageError, match="limit per image must be a positive number of bytes"):
            prepare_data(folder, data_dir=data_dir, max_image_bytes=bad)


def test_reading_stops_one_byte_past_the_limit_whatever_the_file_said():
    asked = []

    def endless(n):  # like /dev/zero, or a file that grows while read
        asked.append(n)
        return bytes(n)

    with pytest.raises(_read.Unusable, match="longer than its size said, past the 1 KiB limit"):
        _read.read_bounded(endless, expected=10, limit=1024)
    assert sum(asked) == 1025
    assert _read.read_bounded(io.BytesIO(b"x" * 1024).read, expected=1024, limit=1024) == b"x" * 1024


def test_huge_decodes_run_one_at_a_time_and_small_ones_together():
    budget = _scan._Budget(100)
    lock = threading.Lock()

    def most_at_once(n: int) -> int:
        active, peak = [0], [0]

        def decode():
            with budget.hold(n):
                with lock:
                    active[0] += 1
                    peak[0] = max(peak[0], active[0])
                time.sleep(0.05)
                with lock:
                    active[0] -= 1

        threads = [threading.Thread(target=decode) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return peak[0]

    assert most_at_once(500) == 1  # over the whole budget: alone
    assert most_at_once(10) == 4


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


# ---------------------------------------------------------------------------- archives


def _symlink_member(zf):
    info = zipfile.ZipInfo("train/link.jpg")
    info.external_attr = 0o120777 << 16
    zf.writestr(info, "/etc/passwd")


ESCAPES = {
    "dot-dot": "../evil.jpg",
    "dot-dot-inside": "train/../../evil.jpg",
    "absolute": "/tmp/evil.jpg",
    "backslash": "..\\evil.jpg",
    "backslash-absolute": "\\evil.jpg",
    "drive-letter": "C:/evil.jpg",
}


@pytest.mark.parametrize("where", ["outer", "inner"])
@pytest.mark.parametrize("member", [*ESCAPES.values(), "symlink"], ids=[*ESCAPES, "symlink"])
def test_an_archive_member_that_could_escape_refuses_the_archive_in_one_line(tmp_path, data_dir, where, member):
    if member == "symlink":  # dogs-vs-cats.zip, or a train.zip given directly, with a link in it
        archive = kaggle_zip(tmp_path / "in" / f"{where}.zip", per_class=8, nested=where == "outer")
        with zipfile.ZipFile(archive, "a") as zf:
            _symlink_member(zf)
    else:
        extra = {member: image_bytes()}
        archive = kaggle_zip(tmp_path / "in" / "dogs-vs-cats.zip", per_class=8,
                             **({"extra": extra} if where == "outer" else {"inner_extra": extra}))
    before = _snapshot(tmp_path, data_dir)

    result = _prepare("kaggle:dogs-vs-cats", "--archive", archive, "--split-sizes", "4,2,2", "--data-dir", data_dir)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: refusing")
    assert "symbolic link" in errors[0] if member == "symlink" else "outside the target folder" in errors[0]
    assert before == _snapshot(tmp_path, data_dir)  # the archive is kept; no evil.jpg anywhere
    assert list((data_dir / "prepared").iterdir()) == [] and not list(data_dir.rglob("*evil*"))


def test_an_oversize_archive_member_is_skipped_by_its_declared_size(tmp_path, data_dir):
    archive = kaggle_zip(tmp_path / "train.zip", per_class=8, nested=False)
    set_declared_size(archive, "train/cat.5.jpg", 1 << 30)  # a 1 GiB member; never read
    result = _prepare("kaggle:dogs-vs-cats", "--archive", archive, "--split-sizes", "4,2,2", "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    assert _skip_line(result.output, "train/cat.5.jpg") == ("file too large (1 GiB declared in the archive; "
                                                            "the limit is 64 MiB per image)")
    prepared = load_prepared("kaggle:dogs-vs-cats", data_dir=data_dir, kaggle_split=(4, 2, 2))
    assert prepared.counts["validation"] == {"cat": 1, "dog": 2}
    _check_files_match_counts(prepared)


def test_a_member_that_inflates_like_a_zip_bomb_is_skipped(tmp_path, data_dir):
    archive = kaggle_zip(tmp_path / "train.zip", per_class=8, nested=False)
    with zipfile.ZipFile(tmp_path / "train.zip") as src, zipfile.ZipFile(tmp_path / "bomb.zip", "w") as dst:
        for info in src.infolist():
            data = bytes(2 << 20) if info.filename == "train/dog.1.jpg" else src.read(info)
            dst.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
    prepared = prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir, archive=tmp_path / "bomb.zip",
                            kaggle_split=(4, 2, 2))
    [(path, reason)] = [(s.path, s.reason) for s in prepared.skipped]
    assert path == "train/dog.1.jpg" and reason.startswith("compressed ") and "over 200:1: a zip bomb?" in reason
    assert archive.exists()


def test_a_member_that_holds_more_than_it_declares_is_skipped_as_damaged(tmp_path, data_dir):
    archive = kaggle_zip(tmp_path / "train.zip", per_class=8, nested=False)
    set_declared_size(archive, "train/cat.2.jpg", 100)  # holds more than it says
    prepared = prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir, archive=archive, kaggle_split=(4, 2, 2))
    [(path, reason)] = [(s.path, s.reason) for s in prepared.skipped]
    assert path == "train/cat.2.jpg" and reason.startswith("unreadable file (damaged archive member")


def _nested_bomb(path):
    """A dogs-vs-cats.zip whose train.zip holds 8 MiB of zeros (stored), so it deflates 1000:1."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("train/cat.0.jpg", bytes(8 << 20), compress_type=zipfile.ZIP_STORED)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("train.zip", inner.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    return path


def test_a_nested_train_zip_bomb_refuses_the_archive_in_one_line(tmp_path, data_dir):
    archive = _nested_bomb(tmp_path / "dogs-vs-cats.zip")
    before = _snapshot(tmp_path, data_dir)
    result = _prepare("kaggle:dogs-vs-cats", "--archive", archive, "--split-sizes", "4,2,2", "--data-dir", data_dir)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: refusing {archive}: train.zip is compressed ")
    assert before == _snapshot(tmp_path, data_dir)
    assert list((data_dir / "prepared").iterdir()) == []  # the half-copied train.zip went with the temporary folder


def test_a_nested_train_zip_is_copied_within_a_limit(tmp_path, data_dir, monkeypatch):
    archive = kaggle_zip(tmp_path / "dogs-vs-cats.zip", per_class=8)
    set_declared_size(archive, "train.zip", 3 << 30)
    with pytest.raises(DataError, match=r"refusing .*: train.zip declares 3 GiB, over the 2 GiB limit"):
        prepare_data("kaggle:dogs-vs-cats", data_dir=data_dir, archive=archive, kaggle_split=(4, 2, 2))
    assert archive.exists() and list((data_dir / "prepared").iterdir()) == []

    class Zeros(io.RawIOBase):  # never ends, like /dev/zero
        def readinto(self, buffer):
            buffer[:] = bytes(len(buffer))
            return len(buffer)

    class Endless:  # an archive whose member streams on past what it declared
        def open(self, info):
            return Zeros()

    monkeypatch.setattr(_archive, "MAX_NESTED_BYTES", 3 << 20)
    info = zipfile.ZipInfo("train.zip")
    info.file_size = info.compress_size = 10
    with pytest.raises(DataError, match=r"refusing .*: train.zip is longer than the 3 MiB limit"):
        _archive._copy_nested(Endless(), info, tmp_path / "copy.zip", archive)
    assert (tmp_path / "copy.zip").stat().st_size <= 3 << 20

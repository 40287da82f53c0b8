"""prepare_data on folders and the demo: splits, bad files, class errors, idempotency, atomicity."""

import json
import os

import pytest

from xtune.data import DataError, PreparedData, _prepare, describe_data, load_prepared, prepare_data
from xtune.errors import UsageError

from .images import bad_files, image_bytes, make_bad_folder, make_classes_folder, make_split_folder, write


def _files(prepared: PreparedData, split: str, cls: str) -> list[str]:
    return sorted(p.name for p in (prepared.root / split / cls).iterdir())


def test_class_folders_are_split_stratified_and_seeded(tmp_path, data_dir):
    folder = make_classes_folder(tmp_path / "pets", per_class=20)
    prepared = prepare_data(folder, data_dir=data_dir)
    assert prepared.class_names == ("cat", "dog")
    assert prepared.counts == {s: {"cat": n, "dog": n} for s, n in (("train", 14), ("validation", 3), ("test", 3))}
    assert prepared.settings["layout"] == "classes"
    placed = {s: _files(prepared, s, "cat") for s in ("train", "validation", "test")}
    assert sorted(name for names in placed.values() for name in names) == sorted(p.name for p in (folder / "cat").iterdir())

    again = prepare_data(folder, data_dir=tmp_path / "other-dir")
    assert {s: _files(again, s, "cat") for s in placed} == placed  # same seed, same split
    assert again.fingerprint == prepared.fingerprint
    reseeded = prepare_data(folder, data_dir=data_dir, split_seed=7)
    assert {s: _files(reseeded, s, "cat") for s in placed} != placed
    assert reseeded.root != prepared.root and reseeded.fingerprint != prepared.fingerprint
    other = prepare_data(folder, data_dir=data_dir, validation_fraction=0.25, test_fraction=0.1)
    assert other.sizes == {"train": 26, "validation": 10, "test": 4}


def test_a_split_folder_keeps_its_split(tmp_path, data_dir):
    folder = make_split_folder(tmp_path / "split", classes=("bird", "cat", "dog"), per_split=(5, 2, 3))
    prepared = prepare_data(folder, data_dir=data_dir)
    assert prepared.settings["layout"] == "split"
    assert prepared.class_names == ("bird", "cat", "dog")
    assert prepared.sizes == {"train": 15, "validation": 6, "test": 9}
    for split in ("train", "validation", "test"):
        assert _files(prepared, split, "dog") == sorted(p.name for p in (folder / split / "dog").iterdir())


def test_every_bad_file_is_reported_and_odd_ones_converted(tmp_path, data_dir):
    folder = make_bad_folder(tmp_path / "bad", per_class=8)
    prepared = prepare_data(folder, data_dir=data_dir)
    skipped = {s.path: s.reason for s in prepared.skipped}
    converted = {c.path: (c.original, c.action) for c in prepared.converted}
    for name, (_, expected) in bad_files().items():
        action, detail = expected.split(":", 1)
        if action == "skip":
            assert skipped[f"cat/{name}"].startswith(detail), name
        else:
            assert converted[f"cat/{name}"][0] == detail, name
    assert len(skipped) == sum(e.startswith("skip") for _, e in bad_files().values())
    assert converted["cat/gray.jpg"][1] == "decoded as RGB"
    assert converted["cat/cmyk.jpg"][1] == "re-encoded as RGB PNG"
    assert prepared.class_names == ("cat", "dog")  # the empty class folder is ignored ...
    assert any("empty" in w for w in prepared.warnings)  # ... with a warning
    assert sum(prepared.counts[s]["cat"] for s in prepared.counts) == 8 + 5  # 5 convertible
    # Re-encoded files are PNGs in the prepared copy; nothing that was skipped is there.
    names = {p.name for p in prepared.root.rglob("*") if p.is_file()}
    assert {"cmyk.png", "rgba.png", "palette.png", "sixteen.png", "gray.jpg"} <= names
    assert not names & {"notes.jpg", "empty.jpg", "truncated.jpg", "corrupt.png", ".hidden.jpg", "garbage.jpg"}
    # What is stored is what load_prepared (and `tune data info`) returns.
    assert load_prepared(folder, data_dir=data_dir) == prepared


def test_preparing_again_reuses_the_copy_without_rewriting(tmp_path, data_dir, monkeypatch):
    folder = make_classes_folder(tmp_path / "pets", per_class=6)
    first = prepare_data(folder, data_dir=data_dir)
    marker = first.root / "prepared.json"
    stamp = marker.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a complete copy")

    monkeypatch.setattr(_prepare, "_build", no_build)
    second = prepare_data(str(folder), data_dir=data_dir)
    assert second == first and marker.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    rebuilt = prepare_data(folder, data_dir=data_dir, overwrite=True)
    assert rebuilt.root == first.root and rebuilt.fingerprint == first.fingerprint
    assert marker.stat().st_mtime_ns != stamp


def test_a_changed_folder_is_prepared_again(tmp_path, data_dir):
    folder = make_classes_folder(tmp_path / "pets", per_class=6)
    first = prepare_data(folder, data_dir=data_dir)
    write(folder / "dog" / "new.png", image_bytes("PNG", seed=99))
    second = prepare_data(folder, data_dir=data_dir)
    assert second.root == first.root
    assert sum(second.sizes.values()) == sum(first.sizes.values()) + 1
    assert second.fingerprint != first.fingerprint


def test_leftovers_and_copies_without_marker_are_redone_not_used(tmp_path, data_dir):
    folder = make_classes_folder(tmp_path / "pets", per_class=6)
    first = prepare_data(folder, data_dir=data_dir)
    # A build killed half-way, and a copy whose marker never got written.
    leftover = first.root.parent / f".tmp-{first.root.name}-99999-deadbeef"
    (leftover / "train" / "cat").mkdir(parents=True)
    (first.root / "prepared.json").unlink()
    (first.root / "train" / "cat" / "junk.jpg").write_bytes(b"half written")
    with pytest.raises(DataError, match="not prepared"):
        load_prepared(folder, data_dir=data_dir)
    second = prepare_data(folder, data_dir=data_dir)
    assert (second.root / "prepared.json").is_file()
    assert not leftover.exists()
    assert not (second.root / "train" / "cat" / "junk.jpg").exists()
    assert second.fingerprint == first.fingerprint
    assert sorted(p.name for p in second.root.parent.iterdir()) == [second.root.name]


def test_an_interrupted_build_leaves_nothing_behind(tmp_path, data_dir, monkeypatch):
    folder = make_classes_folder(tmp_path / "pets", per_class=6)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_prepare, "assemble", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(folder, data_dir=data_dir)
    assert list((data_dir / "prepared").iterdir()) == []


def test_fewer_than_two_classes_is_one_clear_error(tmp_path, data_dir):
    folder = make_classes_folder(tmp_path / "one", classes=("cat",), per_class=6)
    (folder / "dog").mkdir()
    write(folder / "dog" / "broken.jpg", b"")
    with pytest.raises(DataError, match=r"found 1 class \(cat\).*need at least 2") as error:
        prepare_data(folder, data_dir=data_dir)
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="found no class"):
        prepare_data((tmp_path / "nothing").mkdir() or tmp_path / "nothing", data_dir=data_dir)


def test_an_empty_split_is_one_clear_error(tmp_path, data_dir):
    folder = make_split_folder(tmp_path / "split", per_split=(4, 2, 0))
    (folder / "test").mkdir()
    with pytest.raises(DataError, match="the test split is empty"):
        prepare_data(folder, data_dir=data_dir)


def test_a_class_missing_from_a_split_is_one_clear_error(tmp_path, data_dir):
    folder = make_split_folder(tmp_path / "split", per_split=(4, 2, 2))
    for p in (folder / "validation" / "dog").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"class missing from a split: dog \(validation\)"):
        prepare_data(folder, data_dir=data_dir)
    with pytest.raises(DataError, match="no validation/"):
        import shutil

        shutil.rmtree(folder / "validation")
        prepare_data(folder, data_dir=data_dir)


def test_a_class_too_small_to_split_is_one_clear_error(tmp_path, data_dir):
    folder = make_classes_folder(tmp_path / "pets", per_class=6)
    for p in sorted((folder / "dog").iterdir())[2:]:
        p.unlink()
    with pytest.raises(DataError, match="class 'dog' has 2 usable images; a class needs at least 3"):
        prepare_data(folder, data_dir=data_dir)


@pytest.mark.parametrize("kwargs,match", [
    ({"source": "/no/such/folder"}, "not demo, kaggle:dogs-vs-cats or an existing folder"),
    ({"source": "kaggle:mnist"}, "the supported one is kaggle:dogs-vs-cats"),
    ({"source": "demo", "archive": "x.zip"}, "--archive is for kaggle:dogs-vs-cats only"),
    ({"source": "demo", "validation_fraction": 0.6, "test_fraction": 0.4}, "leave nothing to train on"),
    ({"source": "demo", "test_fraction": 0}, "between 0 and 1"),
    ({"source": "kaggle:dogs-vs-cats", "kaggle_split": (10000, 2000, 1000)}, "dogs-vs-cats has 12500"),
])
def test_bad_arguments_are_usage_errors(kwargs, match, data_dir):
    with pytest.raises(UsageError, match=match):
        prepare_data(data_dir=data_dir, **kwargs)
    assert not data_dir.exists()


def test_load_prepared_says_how_to_prepare(data_dir):
    with pytest.raises(DataError, match=r"demo is not prepared in .*; run: tune data prepare demo --data-dir"):
        load_prepared("demo", data_dir=data_dir)


def test_describe_scans_an_unprepared_folder_without_writing(tmp_path, data_dir):
    folder = make_bad_folder(tmp_path / "bad", per_class=6)
    info = describe_data(folder, data_dir=data_dir)
    assert info["status"] == "not prepared" and info["root"] is None
    assert {s["path"] for s in info["skipped"]} >= {"cat/notes.jpg", "cat/empty.jpg", "cat/.hidden.jpg"}
    assert not data_dir.exists()
    prepared = prepare_data(folder, data_dir=data_dir)
    info = describe_data(folder, data_dir=data_dir)
    assert info["status"] == "prepared" and info["fingerprint"] == prepared.fingerprint
    assert json.loads(json.dumps(info)) == info


def test_demo_is_real_digits_in_class_folders(data_dir):
    prepared = prepare_data("demo", data_dir=data_dir)
    assert prepared.source == "demo"
    assert prepared.class_names == tuple(str(d) for d in range(10))
    assert sum(prepared.sizes.values()) == 1797
    assert min(min(c.values()) for c in prepared.counts.values()) >= 20
    assert "scikit-learn" in prepared.origin and "CC BY 4.0" in prepared.license
    assert prepared.skipped == () and prepared.warnings == ()
    assert prepare_data("demo", data_dir=data_dir) == prepared


def test_the_demo_digits_ship_with_xtune_not_through_scikit_learn():
    """The UCI digits as load_digits reads them (its first image is a 0), with scikit-learn unimportable."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['sklearn'] = None\n"  # an import of it would raise
            "from xtune.data._demo import load_digits\n"
            "images, labels = load_digits()\n"
            "print(images.shape, images.min(), images.max(), int(images.sum()), labels[:10].tolist(),"
            " [int((labels == d).sum()) for d in range(10)], images[0, 1].astype(int).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    assert out == ("(1797, 8, 8) 0.0 16.0 561718 [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] "
                   "[178, 182, 177, 183, 181, 182, 181, 179, 174, 180] [0, 0, 13, 15, 10, 15, 5, 0]")


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path):
    from xtune.data import default_data_dir

    monkeypatch.setenv("XTUNE_DATA_DIR", str(tmp_path / "x"))
    assert default_data_dir() == tmp_path / "x"
    monkeypatch.delenv("XTUNE_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "xtune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "xtune"
    assert os.fspath(default_data_dir()).endswith(os.path.join(".cache", "xtune"))


def test_describe_shows_a_changed_folder_as_a_fresh_scan(tmp_path, data_dir):
    folder = make_classes_folder(tmp_path / "pets", per_class=6)
    prepare_data(folder, data_dir=data_dir)
    write(folder / "cat" / "extra.txt", b"not an image")
    info = describe_data(folder, data_dir=data_dir)
    assert info["status"] == "changed" and info["settings"]["layout"] == "classes"
    assert info["skipped"] == [{"path": "cat/extra.txt", "reason": "not an image"}]


def test_concurrent_preparations_build_once_and_agree(tmp_path, data_dir, monkeypatch):
    import threading

    folder = make_classes_folder(tmp_path / "pets", per_class=6)
    builds = []
    real_build = _prepare._build

    def counted(*args, **kwargs):
        builds.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(_prepare, "_build", counted)
    results = [None] * 4

    def worker(i):
        results[i] = prepare_data(folder, data_dir=data_dir)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert all(r == results[0] for r in results)

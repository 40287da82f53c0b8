"""xtune._atomic: a write leaves the old file or the new one, never a truncated one.

Every state file of a search (run.json, oracle.json, trial.json, backups, exports)
goes through it, so a kill or a full disk at any moment must leave a file that loads.
"""

import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from xtune import _atomic

SRC = Path(__file__).resolve().parents[1] / "src"


def _temporaries(folder: Path):
    return sorted(p.name for p in folder.rglob(f"*{_atomic.TMP_MARK}*"))


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "deep" / "er" / "state.json"  # missing folders are made
    text = _atomic.write_json(target, {"b": [1, 2], "a": "é"})
    assert text == json.dumps({"b": [1, 2], "a": "é"}, indent=2)
    assert target.read_text(encoding="utf-8") == text
    assert _atomic.read_json(target) == {"b": [1, 2], "a": "é"}
    _atomic.write_text(target, "second")
    assert target.read_text(encoding="utf-8") == "second"
    _atomic.write_bytes(target, b"\x00third\xff")
    assert target.read_bytes() == b"\x00third\xff"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]
    assert _atomic.write_json(tmp_path / "flat.json", [1, {"x": 2}], indent=None) == '[1, {"x": 2}]'


@pytest.mark.parametrize("data", [b"", b"x", b"0123456789" * 1000])
def test_every_byte_is_written(tmp_path, data):
    _atomic.write_bytes(tmp_path / "f.bin", data)
    assert (tmp_path / "f.bin").read_bytes() == data


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_written_file_has_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        _atomic.write_text(tmp_path / "a.txt", "x")
        with _atomic.atomic_path(tmp_path / "b.h5") as tmp:
            Path(tmp).write_bytes(b"x")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert os.umask(old) == old  # the umask itself is left as it was
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("a.txt", "b.h5"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_the_data_and_the_rename_reach_the_disk(tmp_path, monkeypatch):
    """fsync of the new file before the rename, of the folder after it (a power cut keeps one of the two)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(source, target):
        events.append(("replace", os.fspath(target)))
        return real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    folder = tmp_path.resolve()

    def write_with_atomic_path(target, text):  # a writer that never fsyncs (h5py, Keras' save_weights)
        with _atomic.atomic_path(target) as tmp:
            Path(tmp).write_text(text)

    for write in (_atomic.write_text, write_with_atomic_path):
        events.clear()
        target = folder / "state.json"
        write(target, f"new {write.__name__}")
        assert target.read_text() == f"new {write.__name__}"
        renamed = events.index(("replace", str(target)))
        assert any(kind == "fsync" and _atomic.TMP_MARK in path for kind, path in events[:renamed]), write
        assert ("fsync", str(folder)) in events[renamed:], write


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "model.weights.h5"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with _atomic.atomic_path(target, suffix=".weights.h5") as tmp:
            assert Path(tmp).parent == tmp_path and tmp.endswith(".weights.h5") and _atomic.TMP_MARK in tmp
            Path(tmp).write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert _temporaries(tmp_path) == []


def test_a_full_disk_during_the_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "oracle.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as raised:
        _atomic.write_text(target, "new")
    assert raised.value.errno == errno.ENOSPC and _atomic.is_disk_full(raised.value)
    assert target.read_text() == "old"
    assert _temporaries(tmp_path) == []


def test_the_enospc_fault_hook_fails_matching_writes_only(tmp_path, monkeypatch):
    monkeypatch.setenv("XTUNE_FAULT_ENOSPC", "epoch-0002")
    (tmp_path / "epoch-0002.npz").write_bytes(b"old")
    with pytest.raises(OSError) as raised:
        _atomic.write_bytes(tmp_path / "epoch-0002.npz", b"new")
    # As a full disk would: the same errno, message and file name as the kernel's error.
    real = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "epoch-0002.npz"))
    assert (raised.value.errno, raised.value.strerror, raised.value.filename) == (real.errno, real.strerror, real.filename)
    assert str(raised.value) == str(real)
    assert (tmp_path / "epoch-0002.npz").read_bytes() == b"old" and _temporaries(tmp_path) == []
    _atomic.write_bytes(tmp_path / "epoch-0001.npz", b"fine")
    assert (tmp_path / "epoch-0001.npz").read_bytes() == b"fine"


def test_the_pause_hook_stops_half_way_through_matching_writes(tmp_path, monkeypatch):
    """XTUNE_FAULT_PAUSE_WRITE: the moment the kill tests aim at. At the pause, the target
    is still the old file and the temporary holds half of the new data."""
    seen = []

    def sleep(seconds):
        temporaries = [p for p in tmp_path.iterdir() if _atomic.TMP_MARK in p.name]
        seen.append((seconds, (tmp_path / "state.json").read_bytes(), [p.read_bytes() for p in temporaries]))

    monkeypatch.setattr(_atomic, "time", SimpleNamespace(sleep=sleep))
    (tmp_path / "state.json").write_bytes(b"old")
    monkeypatch.setenv("XTUNE_FAULT_PAUSE_WRITE", "2.5")
    monkeypatch.setenv("XTUNE_FAULT_PAUSE_WRITE_MATCH", "state")
    _atomic.write_bytes(tmp_path / "state.json", b"0123456789")
    assert seen == [(2.5, b"old", [b"01234"])]
    assert (tmp_path / "state.json").read_bytes() == b"0123456789"
    # atomic_path (for writers that need a file name) pauses once the file is written, before the rename.
    seen.clear()
    with _atomic.atomic_path(tmp_path / "state.json") as tmp:
        Path(tmp).write_bytes(b"whole")
    assert seen == [(2.5, b"0123456789", [b"whole"])]
    # Other paths do not pause; nor does anything without XTUNE_FAULT_PAUSE_WRITE.
    seen.clear()
    _atomic.write_bytes(tmp_path / "other.json", b"x")
    monkeypatch.delenv("XTUNE_FAULT_PAUSE_WRITE")
    _atomic.write_bytes(tmp_path / "state.json", b"y")
    assert seen == []
    monkeypatch.setenv("XTUNE_FAULT_PAUSE_WRITE", "1")
    monkeypatch.delenv("XTUNE_FAULT_PAUSE_WRITE_MATCH")  # no filter: every write pauses
    _atomic.write_bytes(tmp_path / "other.json", b"z")
    assert [s[0] for s in seen] == [1.0]


_WRITER = """
import sys
from xtune import _atomic
print("writing", flush=True)
_atomic.write_json(sys.argv[1], {"version": 2, "pad": "x" * 100000})
print("done", flush=True)
"""


def test_sigkill_in_the_middle_of_a_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "run.json"
    _atomic.write_json(target, {"version": 1})
    env = dict(os.environ, XTUNE_FAULT_PAUSE_WRITE="30", XTUNE_FAULT_PAUSE_WRITE_MATCH="run.json",
               PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline() == "writing\n"
        deadline = time.monotonic() + 60
        while not [p for p in tmp_path.iterdir() if _atomic.TMP_MARK in p.name and p.stat().st_size > 0]:
            assert time.monotonic() < deadline and proc.poll() is None, "the writer never paused"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert _atomic.read_json(target) == {"version": 1}  # the old file, whole
    (partial,) = _temporaries(tmp_path)
    assert partial.startswith("run.json" + _atomic.TMP_MARK)
    assert _atomic.remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_stale_temporaries_are_removed_recursively_or_not(tmp_path):
    (tmp_path / "trial_0001" / "backup").mkdir(parents=True)
    (tmp_path / f"oracle.json{_atomic.TMP_MARK}a1").write_text("{")
    (tmp_path / "trial_0001" / f"trial.json{_atomic.TMP_MARK}b2").write_text("{")
    (tmp_path / "trial_0001" / "backup" / f"epoch-0001.npz{_atomic.TMP_MARK}c3.npz").write_bytes(b"\0")
    (tmp_path / f"folder{_atomic.TMP_MARK}d4").mkdir()  # only files are temporaries
    (tmp_path / "oracle.json").write_text("{}")
    (tmp_path / "trial_0001" / "trial.json").write_text("{}")
    assert _atomic.remove_stale_temporaries(tmp_path, recursive=False) == 1
    assert _temporaries(tmp_path) == [f"epoch-0001.npz{_atomic.TMP_MARK}c3.npz", f"folder{_atomic.TMP_MARK}d4",
                                      f"trial.json{_atomic.TMP_MARK}b2"]
    assert _atomic.remove_stale_temporaries(tmp_path) == 2
    assert _temporaries(tmp_path) == [f"folder{_atomic.TMP_MARK}d4"]
    assert (tmp_path / "oracle.json").exists() and (tmp_path / "trial_0001" / "trial.json").exists()
    assert _atomic.remove_stale_temporaries(tmp_path / "missing") == 0
    assert _atomic.remove_stale_temporaries(tmp_path / "oracle.json") == 0


def test_removing_temporaries_while_another_process_does_too(tmp_path, monkeypatch):
    """A chief and its workers clean the same project at start: a temporary gone meanwhile is no error."""
    for name in ("a", "b"):
        (tmp_path / f"oracle.json{_atomic.TMP_MARK}{name}").write_text("{")
    real_is_file = Path.is_file

    def is_file_then_removed_by_another_process(self):
        found = real_is_file(self)
        if found and self.name.endswith("a"):
            self.unlink()
        return found

    monkeypatch.setattr(Path, "is_file", is_file_then_removed_by_another_process)
    _atomic.remove_stale_temporaries(tmp_path)
    assert _temporaries(tmp_path) == []


@pytest.mark.parametrize("content", [b'{"a": 1', b"\xff\xfe not utf-8", b""])
def test_a_damaged_json_file_is_a_value_error_naming_it(tmp_path, content):
    path = tmp_path / "trial.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} is damaged \\("):
        _atomic.read_json(path)


def _chained(outer, inner, how):
    try:
        try:
            raise inner
        except BaseException as error:
            if how == "cause":
                raise outer from error
            raise outer  # noqa: B904 - the case without an explicit cause is what this tests
    except BaseException as error:
        return error


@pytest.mark.parametrize("error, full", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (RuntimeError("Failed to write: No space left on device [Op:SaveV2]"), True),
    (RuntimeError("quota: Disk quota exceeded"), True),
    (OSError(errno.EACCES, "Permission denied"), False),
    (OSError(errno.ENOSPC + 1000, "something else"), False),
    (RuntimeError("could not create a primitive descriptor"), False),
    (_chained(RuntimeError("saving failed"), OSError(errno.ENOSPC, "full"), "cause"), True),
    (_chained(RuntimeError("saving failed"), OSError(errno.EDQUOT, "quota"), "context"), True),
    (_chained(RuntimeError("saving failed"), ValueError("bad value"), "cause"), False),
])
def test_a_full_disk_is_recognised_through_wrapping_errors(error, full):
    assert _atomic.is_disk_full(error) is full


def test_is_disk_full_ends_on_a_cycle_of_errors():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__context__ = b, a
    assert _atomic.is_disk_full(a) is False
    b.__cause__ = OSError(errno.ENOSPC, "full")  # __cause__ is followed before __context__
    assert _atomic.is_disk_full(a) is True


def test_keras_tuner_state_files_are_written_atomically(tmp_path, monkeypatch):
    from keras_tuner.src import utils

    from xtune.search import _kt

    original = utils.save_json
    theirs = utils.save_json(str(tmp_path / "theirs.json"), {"trials": {"0001": 1}, "x": [1.5]})
    writes = []
    real = _atomic.write_json
    monkeypatch.setattr(_atomic, "write_json", lambda *a, **k: writes.append(a[0]) or real(*a, **k))
    with _kt.patched():  # the seam's scope: every KerasTuner state file goes through the atomic writer
        assert utils.save_json is not original
        ours = utils.save_json(str(tmp_path / "ours.json"), {"trials": {"0001": 1}, "x": [1.5]})
    assert writes == [str(tmp_path / "ours.json")]
    assert ours == theirs == (tmp_path / "ours.json").read_text() == (tmp_path / "theirs.json").read_text()
    assert utils.save_json is original  # restored when the scope ends

"""Issue #12, sections 5 and 6: the edge cases a user meets, each pinned at the command line.

Every test checks the exit code, that an error is one line with no traceback (click's
test runner swallows tracebacks: ``result.exception`` must be the ``SystemExit`` of an
orderly exit), and what is on disk afterwards. Searches are hand-made (the files a
finished search leaves, no training), in folders whose paths hold a space, so that
every hint printed along the way has to quote them.
"""

import contextlib
import errno
import json
import logging
import os
import shlex
import shutil
import subprocess
import types
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.search.projects import new_project, write_trial
from xtune.cli import tune
from xtune.errors import DataError, ProjectError

SPACED = "my runs"  # in every project path: the hints must quote it


# -- helpers -------------------------------------------------------------------------------------


def run(*args):
    return CliRunner().invoke(tune, [str(a) for a in args])


def orderly(result, code: int) -> str:
    """The output of a command that ended as it meant to (exit ``code``, no traceback)."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.output


def error_line(result, code: int) -> str:
    """The one line of an error (``Error: ...``), and nothing else."""
    lines = orderly(result, code).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def damaged(output: str) -> list[str]:
    """The lines of `tune status` that name a damaged file."""
    return [line for line in output.splitlines() if line.startswith("damaged: ")]


def next_command(output: str, prefix: str) -> list[str]:
    """The shell words of the hint that starts with ``prefix`` (as a user would paste it)."""
    lines = [line.strip() for line in output.splitlines()]
    line = next((line for line in lines if line.startswith(prefix)), None) or next(line for line in lines if prefix in line)
    return shlex.split(line.split(prefix, 1)[1].split("|")[0])


def finished_search(path: Path) -> Path:
    """A finished search over the "small" space as its files say, made without training.

    10 completed trials (bracket 1: five of 2 epochs, 0004 and 0003 promoted to 4; bracket
    0: three of 4), trial.json written by KerasTuner's ``Trial`` and oracle.json by the
    oracle itself (the files a search leaves), finished.json, tuner0.json, the lock file.
    Trial 0005 is the best (0.8).
    """
    import keras_tuner

    from xtune.search import _kt
    from xtune.search._project import FINISHED_FILE, SearchSettings, read_run
    from xtune.search._repair import _rebuild_oracle, _trial_from_record
    from xtune.search._run import build_oracle
    from xtune.spaces import SearchSpace
    from xtune.spaces._hypermodel import sample_config

    project = new_project(path)
    run_json = read_run(project)
    settings, space = SearchSettings.from_dict(run_json["settings"]), SearchSpace.from_dict(run_json["space"])
    hp = keras_tuner.HyperParameters()
    sample_config(hp, space)
    space_config = json.dumps({**hp.get_config(), "values": {}})

    def trial(n, score, bracket, round, epochs, initial=0, parent=None, stages=2, width=8, slot=None):
        folder = write_trial(project, f"{n:04d}", trial_json=False, bracket=bracket, round=round, epochs=epochs,
                             initial_epoch=initial, parent=parent, record_status="COMPLETED", params=1000 + n,
                             history=[{"epoch": epochs, "val_accuracy": score, "val_loss": 1 - score}],
                             best_epoch=epochs, values={"num_stages": stages, "base_width": width}, slot=slot,
                             record_seed=n)
        _trial_from_record(folder, json.loads(space_config)).save(str(folder / "trial.json"))

    for i in range(5):
        trial(i, 0.5 + i / 20, 1, 0, 2, stages=(1, 1, 1, 2, 2)[i], width=(8, 16, 32, 8, 16)[i], slot=i)
    trial(5, 0.8, 1, 1, 4, 2, "0004", stages=2, width=16)
    trial(6, 0.75, 1, 1, 4, 2, "0003", stages=2, width=8)
    for i in range(3):
        trial(7 + i, 0.6, 0, 0, 4, stages=3, width=(8, 16, 32)[i], slot=5 + i)
    with _kt.patched():
        trials = {f"{n:04d}": _kt.Trial.load(str(project / f"trial_{n:04d}" / "trial.json")) for n in range(10)}
        _rebuild_oracle(project, settings.plan(), build_oracle(settings, space, 2, run_json), trials,
                        json.loads(space_config))
    (project / "tuner0.json").write_text("{}")
    (project / FINISHED_FILE).write_text(json.dumps({"finished": "2026-01-01T00:00:00+0000"}))
    (project / ".lock").write_text("")  # a search leaves its lock file (unlocked)
    return project


@pytest.fixture(scope="module")
def _finished_once(tmp_path_factory):
    return finished_search(tmp_path_factory.mktemp("made") / "search")


@pytest.fixture
def finished(_finished_once, tmp_path):
    """A copy of the hand-made finished search at ``tmp/my runs/a search``, for this test to damage."""
    project = tmp_path / SPACED / "a search"
    shutil.copytree(_finished_once, project)
    return project


def search_again(project: Path):
    """`tune search --project P`'s work, in this process (its child runs ``run_search`` the same way)."""
    from xtune.search import run_search

    return run_search(project, {})


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails the test: what is checked here must be decided before."""
    def fail(*args, **kwargs):
        raise AssertionError("data was loaded: the check came too late")

    monkeypatch.setattr("xtune.search._run.load_data", fail)
    monkeypatch.setattr("xtune.results._export.load_export_data", fail)


# -- 1. a finished search whose best trial's trial.json is damaged ------------------------------

TRIAL = Path("trial_0005") / "trial.json"


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


DAMAGED_TRIALS = {
    "truncated": (lambda f: f.write_text(f.read_text()[:100]), "is damaged (Unterminated string"),
    "not a trial": (lambda f: f.write_text("[1, 2]"), "is damaged (not a KerasTuner trial)"),
    "score a string": (lambda f: _edit_json(f, score="high"), "is damaged (its score is not a number)"),
}


@pytest.mark.parametrize("damage", DAMAGED_TRIALS)
def test_a_damaged_trial_json_of_a_finished_search_is_listed_then_repaired(finished, no_data, damage):
    write, problem = DAMAGED_TRIALS[damage]
    write(finished / TRIAL)
    output = orderly(run("status", "--project", finished), 0)
    assert f"{finished}: finished" in output and "trials: 10 of 10 planned (10 completed, 0 failed)" in output
    assert "best: trial 0005, val_accuracy 0.8000" in output  # our record still knows its score
    assert f"damaged: {finished / TRIAL} {problem}" in " ".join(output.split())
    assert "(the next `tune search` repairs it)" in output

    outcome = search_again(finished)
    assert outcome.status == "already finished" and outcome.best["trial_id"] == "0005"
    assert any("trial.json is damaged" in note and "rebuilt it from trial_0005/xtune.json" in note
               for note in outcome.notes)
    kept = list((finished / "trial_0005").glob("trial.json.damaged-*"))
    assert len(kept) == 1  # the damaged copy is kept
    rebuilt = json.loads((finished / TRIAL).read_text())
    assert rebuilt["status"] == "COMPLETED" and rebuilt["score"] == pytest.approx(0.8)
    output = orderly(run("status", "--project", finished), 0)
    assert not damaged(output) and "best: trial 0005, val_accuracy 0.8000" in output


def test_a_null_score_is_read_from_our_record_and_nothing_is_rewritten(finished, no_data):
    _edit_json(finished / TRIAL, score=None)  # formerly: TypeError: '>' not supported between None and float
    before = snapshot(finished)
    output = orderly(run("status", "--project", finished), 0)
    assert "best: trial 0005, val_accuracy 0.8000" in output and not damaged(output)
    assert search_again(finished).status == "already finished"
    assert {k: v for k, v in snapshot(finished).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}


def test_a_trial_without_any_score_is_not_promised_a_repair(finished, no_data):
    """Nothing can give a scoreless trial its score back: status says so without promising a repair."""
    _edit_json(finished / TRIAL, score=None)
    _edit_json(finished / "trial_0005" / "xtune.json", history=[], best_epoch=None)
    output = orderly(run("status", "--project", finished), 0)
    assert "damaged: trial 0005 is completed but has no score" in output
    assert "repairs" not in output
    assert "best: trial 0006, val_accuracy 0.7500" in output
    assert search_again(finished).status == "already finished"
    assert orderly(run("status", "--project", finished), 0) == output


# -- 5. a finished search whose oracle.json or finished.json is damaged -------------------------

DAMAGED_STATE = {
    "oracle truncated": {"oracle.json": lambda text: text[:50]},
    "oracle empty": {"oracle.json": lambda text: ""},
    "oracle not an object": {"oracle.json": lambda text: "[1, 2]"},
    "oracle start_order not a list": {"oracle.json": lambda text: json.dumps({**json.loads(text), "start_order": 5})},
    "finished truncated": {"finished.json": lambda text: text[:5]},
    "finished empty": {"finished.json": lambda text: ""},
    "both": {"oracle.json": lambda text: text[:50], "finished.json": lambda text: ""},
}


@pytest.mark.parametrize("damage", DAMAGED_STATE)
def test_status_and_search_agree_that_a_damaged_finished_search_is_finished(finished, no_data, damage):
    from xtune.search._state import load_project, oracle_damage

    good_oracle = json.loads((finished / "oracle.json").read_text())
    for name, change in DAMAGED_STATE[damage].items():
        (finished / name).write_text(change((finished / name).read_text()))
    output = orderly(run("status", "--project", finished), 0)
    assert f"{finished}: finished" in output and "resume:" not in output
    assert len(damaged(output)) == len(DAMAGED_STATE[damage])
    assert output.count("(the next `tune search` repairs it)") == len(DAMAGED_STATE[damage])  # each is promised one

    outcome = search_again(finished)  # the same verdict: nothing to train, only repairs
    assert outcome.status == "already finished" and outcome.completed == 10
    state = load_project(finished)
    assert state.done and state.problems == [] and state.finished is not None
    oracle = json.loads((finished / "oracle.json").read_text())
    assert oracle_damage(oracle) is None and oracle["xtune"]["brackets"] == good_oracle["xtune"]["brackets"]
    assert oracle["start_order"] == good_oracle["start_order"]
    assert json.loads((finished / "finished.json").read_text())["finished"]
    kept = sorted(p.name.split(".damaged-")[0] for p in finished.glob("*.damaged-*"))
    assert kept == (["oracle.json"] if "oracle.json" in DAMAGED_STATE[damage] else [])
    output = orderly(run("status", "--project", finished), 0)
    assert f"{finished}: finished" in output and not damaged(output)


def test_tune_search_on_a_damaged_finished_search_repairs_it_and_says_so(finished):
    """The whole command (its child process): the repairs are shown, the hint quotes the path."""
    (finished / "oracle.json").write_text("{")
    (finished / "finished.json").write_text("")
    (finished / TRIAL).write_text('{"trial_id": "00')
    output = orderly(run("search", "--project", finished, "--quiet"), 0)
    assert "is damaged (Expecting property name" in output and "rebuilt the Hyperband state" in output
    assert "rebuilt it from trial_0005/xtune.json" in output
    assert f"The search in {finished} is finished" in " ".join(output.split())
    assert next_command(output, "See: ") == ["tune", "results", "--project", str(finished)]
    assert len(list(finished.glob("oracle.json.damaged-*"))) == 1
    assert len(list((finished / "trial_0005").glob("trial.json.damaged-*"))) == 1
    assert not damaged(orderly(run("status", "--project", finished), 0))


# -- 2. a project folder this process cannot write ----------------------------------------------


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` read-only for this process, even as root (``chattr +i``); skip where impossible."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = [lambda: folder.chmod(0o755)]
    else:  # root writes through permissions: only the immutable flag stops it
        try:
            subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as error:
            pytest.skip(f"running as root, and `chattr +i` is not available here ({error}): "
                        "no folder can be made read-only (the check itself is tested with an unwritable path)")
        undo = [lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)]
    try:
        probe = folder / "probe"
        try:
            probe.write_bytes(b"")
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip(f"{folder} stays writable for this process")
        yield folder
    finally:
        for step in undo:
            step()


def test_search_and_export_refuse_a_read_only_project_in_one_line(finished, no_data, tmp_path):
    before = snapshot(finished)
    with read_only(finished):
        line = error_line(run("search", "--project", finished, "--quiet"), 1)
        assert line.startswith(f"Error: cannot write in {finished} (")
        assert line.endswith("); make it writable or choose another --project")
        line = error_line(run("export", "--project", finished, "--data-dir", tmp_path / "data", "--quiet"), 1)
        assert line.startswith(f"Error: cannot write in {finished.absolute()} (") and "choose another --out" in line
        line = error_line(run("search", "--data", "demo", "--project", finished / "new", "--quiet"), 1)
        assert line.startswith(f"Error: cannot write in {finished / 'new'} (")
    after = snapshot(finished)
    after.pop(".lock"), before.pop(".lock")  # the search took the lock (its holder is written there), then refused
    assert after == before and not (tmp_path / "data").exists()


@pytest.fixture
def unwritable(monkeypatch):
    """The write checks' probe fails (as on a read-only file system), whoever runs the test."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(".write-check"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_the_write_checks_refuse_what_cannot_be_written(tmp_path):
    from xtune._atomic import check_writable

    a_file = tmp_path / "a file"
    a_file.write_text("not a folder")
    with pytest.raises(ProjectError) as info:
        check_writable(a_file, "--project")  # its probe would go inside a file: refused, even as root
    assert str(info.value) == (f"cannot write in {a_file} ({os.strerror(errno.ENOTDIR)}); "
                               "make it writable or choose another --project")
    with pytest.raises(ProjectError, match="choose another --out"):
        check_writable(a_file / "export", "--out")
    check_writable(tmp_path, "--project")  # a folder that can be written passes, and keeps nothing of the probe
    check_writable(tmp_path / "not yet" / "export", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file"]


def test_an_unwritable_project_is_refused_before_its_data_is_loaded(finished, no_data, unwritable):
    from xtune.search import run_search

    (finished / "finished.json").unlink()
    shutil.rmtree(finished / "trial_0009")  # the plan is not done: a resume would load the data next
    before = snapshot(finished)
    with pytest.raises(ProjectError) as info:
        run_search(finished, {})
    assert str(info.value) == (f"cannot write in {finished} ({os.strerror(errno.EROFS)}); "
                               "make it writable or choose another --project")
    after = snapshot(finished)
    assert after.pop(".lock") != before.pop(".lock")  # the lock was taken (it names its holder), nothing else
    assert after == before


def test_an_unwritable_project_is_refused_by_export_before_training(finished, no_data, unwritable, tmp_path):
    before = snapshot(finished)
    line = error_line(run("export", "--project", finished, "--data-dir", tmp_path / "data"), 1)
    assert line == (f"Error: cannot write in {finished.absolute()} ({os.strerror(errno.EROFS)}); "
                    "make it writable or choose another --out")
    assert snapshot(finished) == before and not (tmp_path / "data").exists()


# -- 3. tune predict on a damaged export --------------------------------------------------------


@pytest.fixture
def export_dir(tmp_path):
    """An export folder as far as `tune predict` reads it (card, model.keras), and an image."""
    from PIL import Image

    folder = tmp_path / SPACED / "export"
    folder.mkdir(parents=True)
    (folder / "model_card.json").write_text(json.dumps({"class_names": ["cat", "dog"],
                                                        "model": {"input_shape": [32, 32, 3]}}))
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(image)
    return folder, image


def test_predict_with_a_garbage_model_keras_says_so_in_one_line(export_dir):
    folder, image = export_dir
    (folder / "model.keras").write_bytes(b"\x00garbage" * 64)
    before = snapshot(folder)
    line = error_line(run("predict", "--model", folder, image), 1)
    assert line == (f"Error: {folder / 'model.keras'} is damaged (not a Keras archive: a .keras file is a zip); "
                    "export again with: tune export --project runs/NAME --overwrite")
    assert "not found" not in line.lower()  # Keras's own words: "File not found", of a file that is there
    assert snapshot(folder) == before


def test_predict_with_a_zip_that_is_no_keras_model_says_so_in_one_line(export_dir):
    folder, image = export_dir
    with zipfile.ZipFile(folder / "model.keras", "w") as archive:
        archive.writestr("notes.txt", "not a model")
    before = snapshot(folder)
    line = error_line(run("predict", "--model", folder, image), 1)
    assert line.startswith(f"Error: {folder / 'model.keras'} does not load as a Keras model (")
    assert line.endswith("; export again with: tune export --project runs/NAME --overwrite")
    assert snapshot(folder) == before


def test_predict_with_a_card_without_class_names_says_so_in_one_line(export_dir):
    folder, image = export_dir
    (folder / "model.keras").write_bytes(b"never read")
    (folder / "model_card.json").write_text(json.dumps({"model": {"input_shape": [32, 32, 3]}}))
    before = snapshot(folder)
    line = error_line(run("predict", "--model", folder, image), 1)
    assert line == (f"Error: {folder / 'model_card.json'} is damaged (no class_names or input_shape); "
                    "export again with: tune export --project runs/NAME --overwrite")
    assert snapshot(folder) == before


# 4. A space file range outside the family (num_stages = { min = 0, max = 9 }) is an error, not
# clamped: pinned by tests/spaces/test_space.py::test_bad_space_files_fail_in_one_line.


# -- 6. TensorFlow's retracing warnings ---------------------------------------------------------


def _retrace(tf) -> None:
    """Call one tf.function with eight input shapes: TensorFlow warns that it retraced."""
    function = tf.function(lambda x: x * 2)
    for size in range(1, 9):
        function(tf.zeros((size,)))


def test_retracing_warnings_do_not_get_through(monkeypatch, caplog):
    import tensorflow as tf

    from xtune._runtime import quiet_python_warnings

    monkeypatch.delenv("XTUNE_DEBUG", raising=False)
    logger = logging.getLogger("tensorflow")
    level = logger.level
    try:
        logger.setLevel(logging.NOTSET)
        with caplog.at_level(logging.WARNING):
            _retrace(tf)  # the control: TensorFlow warns through its logger
            assert any("retracing" in r.getMessage() for r in caplog.records if r.name == "tensorflow")
            caplog.clear()
            orderly(run("status", "--project", "no such search"), 1)  # every `tune` command quiets it first
            _retrace(tf)
            assert not [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]
        logger.setLevel(logging.NOTSET)
        quiet_python_warnings()  # the search's child process calls it too
        assert logger.getEffectiveLevel() == logging.ERROR
    finally:
        logger.setLevel(level)


# -- 7. the hints quote paths with spaces -------------------------------------------------------


def test_the_hints_after_results_status_and_report_quote_the_project(finished):
    output = orderly(run("results", "--project", finished), 0)
    assert next_command(output, "Next: ") == ["tune", "export", "--project", str(finished)]
    (finished / "finished.json").unlink()
    (finished / TRIAL).unlink()  # interrupted now: status tells how to resume
    (finished / "trial_0005" / "xtune.json").write_text(json.dumps({"trial_id": "0005", "status": None}))
    output = orderly(run("status", "--project", finished), 0)
    assert next_command(output, "resume: ") == ["tune", "search", "--project", str(finished)]
    output = orderly(run("report", "--project", finished), 0)
    uri = (finished / "report.html").resolve().as_uri()
    assert " ".join(output.split()).endswith(f"Open it in a browser: {uri}") and "%20" in uri
    assert (finished / "report.html").is_file()


def test_the_hints_in_export_errors_quote_the_project(finished, tmp_path, no_data):
    before = snapshot(finished)
    line = error_line(run("export", "--project", finished, "--trial", "77", "--data-dir", tmp_path / "d"), 1)
    assert shlex.split(line.split("(see: ", 1)[1].rstrip(")")) == ["tune", "results", "--project", str(finished)]
    assert snapshot(finished) == before
    empty = new_project(tmp_path / SPACED / "empty one")
    write_trial(empty, "0000", "RUNNING", trial_json=False)
    before = snapshot(empty)
    line = error_line(run("export", "--project", empty, "--data-dir", tmp_path / "d"), 1)
    assert next_command(line, "run or resume it with: ") == ["tune", "search", "--project", str(empty)]
    assert snapshot(empty) == before and not (tmp_path / "d").exists()


def test_the_hint_after_a_finished_search_quotes_the_project(tmp_path, capsys):
    from xtune.cli._render import echo_outcome
    from xtune.search._plan import hyperband_plan
    from xtune.search._run import SearchOutcome

    project = tmp_path / SPACED / "done"
    echo_outcome(SearchOutcome(project, "finished", hyperband_plan(10, 4), completed=10))
    text = capsys.readouterr().out
    assert next_command(text, "Next: ") == ["tune", "results", "--project", str(project)]
    assert shlex.split(text.split("|", 1)[1]) == ["tune", "export", "--project", str(project)]


def test_the_hint_to_prepare_changed_data_again_quotes_the_source(tmp_path):
    from xtune.data._pipeline import _list_split

    source = str(tmp_path / "my photos")
    prepared = types.SimpleNamespace(root=str(tmp_path / "prepared"), class_names=["cat"],
                                     counts={"train": {"cat": 2}}, source=source)
    with pytest.raises(DataError) as info:
        _list_split(prepared, "train")  # two files prepared, none there now
    assert next_command(str(info.value), "prepare it again: ") == ["tune", "data", "prepare", source, "--overwrite"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_refused_search_starts_no_process(tmp_path, monkeypatch, workers):
    """What the search process would refuse first is refused by `tune search` itself, in a
    fraction of a second: no process starts (and imports TensorFlow) only to say no."""
    from xtune import _process

    def no_child(self, restart=False):
        raise AssertionError(f"started {self.spec.name} for a search it refuses")

    monkeypatch.setattr(_process.Child, "start", no_child)
    project = new_project(tmp_path / SPACED / "search")
    before = sorted(p.name for p in project.iterdir())
    conflict = error_line(run("search", "--project", project, "--image-size", "64", "--workers", workers), 2)
    assert "--image-size 64 conflicts with this search's 32" in conflict
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.md").write_text("mine")
    refused = error_line(run("search", "--project", users, "--data", "demo", "--workers", workers), 2)
    assert "is not a tune search: it holds notes.md" in refused
    assert sorted(p.name for p in project.iterdir()) == before and sorted(p.name for p in users.iterdir()) == ["notes.md"]


def test_a_workers_lines_before_its_log_folder_exists_reach_the_log(tmp_path):
    """A worker starts with its chief, before the chief creates the project: what it
    prints then (a warning, a crash's last words) goes to its log once the folder exists,
    first, in order, not lost."""
    import io
    import queue

    from xtune._process import Child, ChildSpec

    log = tmp_path / "project" / "cluster" / "worker-1.log"
    child = Child(ChildSpec("worker-1", "worker", {}, log=log), queue.Queue(), on_output=None)
    child._read_output(io.BytesIO(b"importing\nwarming up\n"), is_err=True)
    assert not log.exists()  # the folder is the chief's to create; a refused search leaves none
    log.parent.mkdir(parents=True)
    child._read_output(io.BytesIO(b"serving\n"), is_err=False)
    assert log.read_text().splitlines() == ["importing", "warming up", "serving"]

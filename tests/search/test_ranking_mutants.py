"""The read model where mutation testing found it unpinned: what each trial file says, the ranking,
the state label, interrupted trials and their epochs, our trial record. Hand-made search
directories (tests/search/projects.py), no training. See setup.cfg [mutmut]."""

import json

import pytest

from xtune.search import load_project, search_status
from xtune.search._state import TrialRecord

from .projects import held_lock, new_project, write_oracle, write_trial


def ACC(epoch, acc, loss=None):
    return {"epoch": epoch, "val_accuracy": acc, **({"val_loss": loss} if loss else {})}
BOOM = "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom\n"


@pytest.fixture
def mixed(tmp_path):
    """An interrupted search: every kind of trial a search directory can hold (10 trials planned)."""
    p = new_project(tmp_path / "mixed")
    write_trial(p, "0000", score=0.8, bracket=1, seed=11, history=[ACC(1, 0.5, 0.9), ACC(2, 0.8, 0.4)], best_epoch=2,
                params=5000, flops=7000, seconds=12.5, record_seed=99, record_status="COMPLETED")
    # trial.json without a score: the record's best epoch has it.
    write_trial(p, "0001", score=None, bracket=1, history=[ACC(1, 0.6), ACC(2, 0.9, 0.3)], best_epoch=2, record_seed=42)
    write_trial(p, "0002", score=None, bracket=1)  # completed, but no score anywhere
    write_trial(p, "0003", "FAILED", score=0.99, bracket=1, message=BOOM)  # a failed trial's partial score
    write_trial(p, "0004", "RUNNING", bracket=1, round=1, epochs=4, initial_epoch=2, parent="0000", backup_epochs=3)
    write_trial(p, "0005", trial_json="damaged", bracket=1, round=1, epochs=4, initial_epoch=2, parent="0000",
                record_seed=7)
    write_trial(p, "0006", score=0.999)  # created, never recorded in oracle.json (a kill between two writes)
    write_trial(p, "0007", "FAILED", record="damaged", message="out of memory")
    write_trial(p, "0008", "INVALID", backup_epochs=1)  # to run again on resume
    write_oracle(p, ["0000", "0001", "0002", "0003", "0004", "0005", "0007", "0008"])
    return p


def test_each_trial_is_read_as_its_files_say(mixed):
    state = load_project(mixed)
    by_id = {t.trial_id: t for t in state.trials}
    assert list(by_id) == ["0000", "0001", "0002", "0003", "0004", "0005", "0007", "0008"]  # 0006: never recorded
    t = by_id["0000"]
    assert (t.status, t.score, t.bracket, t.round, t.epochs, t.initial_epoch, t.parent, t.seed) == \
        ("COMPLETED", 0.8, 1, 0, 2, 0, None, 11)  # the seed in trial.json wins over the record's
    assert t.values == {"num_stages": 2, "base_width": 8} and t.params == 5000 and t.backup is None
    assert t.best_metrics == ACC(2, 0.8, 0.4)
    assert (by_id["0001"].score, by_id["0001"].seed) == (0.9, 42)  # from the record
    assert by_id["0002"].score is None
    assert (by_id["0003"].status, by_id["0003"].score, by_id["0003"].message) == ("FAILED", 0.99, BOOM)
    t = by_id["0004"]
    assert (t.round, t.epochs, t.initial_epoch, t.parent, t.backup, t.epochs_saved) == (1, 4, 2, "0000",
                                                                                     {"epochs_done": 3}, 3)
    t = by_id["0005"]  # trial.json damaged: the record knows the essentials
    assert (t.status, t.score, t.bracket, t.round, t.epochs, t.initial_epoch, t.seed, t.values) == \
        ("RUNNING", None, 1, 1, 4, 2, 7, {"num_stages": 2, "base_width": 8})
    assert t.epochs_saved == 2  # no backup: nothing beyond its starting epoch
    assert by_id["0007"].record == TrialRecord("0007") and by_id["0007"].message == "out of memory"
    assert len(state.problems) == 3
    assert state.problems[0] == "trial 0002 is completed but has no score; it is left out of the ranking"
    assert "trial_0005/trial.json" in state.problems[1]
    assert "trial_0007/xtune.json is damaged (not a trial record)" in state.problems[2]
    assert state.oracle == json.loads((mixed / "oracle.json").read_text())


def test_a_damaged_trial_json_keeps_the_parent_our_record_knows(mixed):
    assert {t.trial_id: t for t in load_project(mixed).trials}["0005"].parent == "0000"


def test_damaged_files_are_listed_not_raised(tmp_path):
    p = new_project(tmp_path / "p")
    write_trial(p, "0000", score=0.5, backup_epochs=1)
    (p / "trial_0000" / "backup" / "state.json").write_text("{")  # damaged mid-write: as if no backup
    write_trial(p, "0001", "RUNNING", backup_epochs=1)
    (p / "trial_0001" / "backup" / "state.json").write_text("[1]")  # not a backup
    write_trial(p, "0002", record="damaged", trial_json="damaged")  # nothing readable: left out
    (p / "trial_0003").mkdir()  # created, nothing written yet: left out
    write_trial(p, "0004", score=0.6)
    (p / "oracle.json").write_text('{"start_order": ["00')  # damaged: every trial folder is read
    state = load_project(p)
    assert [t.trial_id for t in state.trials] == ["0000", "0001", "0004"]
    assert state.trial("0").backup is None and state.trial("1").backup is None and state.trial("1").epochs_saved == 0
    assert state.oracle is None and len(state.problems) == 3
    assert "oracle.json" in state.problems[0] and "trial_0002/xtune.json" in state.problems[1] \
        and "trial_0002/trial.json" in state.problems[2]


def test_only_completed_trials_with_a_score_are_ranked(mixed):
    state = load_project(mixed)
    assert [t.trial_id for t in state.ranked()] == ["0001", "0000"]  # not 0002 (no score), not 0003 (failed)
    assert state.best.trial_id == "0001"
    assert [t.trial_id for t in state.ended] == ["0000", "0001", "0002", "0003", "0007"]
    assert [t.trial_id for t in state.failed] == ["0003", "0007"]


def test_without_oracle_json_every_trial_folder_is_read(mixed):
    (mixed / "oracle.json").unlink()
    assert "0006" in [t.trial_id for t in load_project(mixed).trials]


def test_interrupted_trials_and_the_epochs_their_backups_saved(mixed):
    state = load_project(mixed)
    assert state.label == "interrupted" and not state.done and not state.running
    assert [t.trial_id for t in state.interrupted] == ["0004", "0005", "0008"] and state.active == []
    assert state.epochs_saved == (3 - 2) + 0 + 1
    # Ended trials count all their epochs; the others what their backups saved.
    assert state.epochs_done == 5 * 2 + (3 - 2) + 0 + 1
    status = search_status(mixed)
    expected = {"project": str(mixed), "state": "interrupted", "objective": "val_accuracy", "plan_trials": 10,
                "trials_ended": 5, "completed": 3, "failed": 2, "best": {"trial_id": "0001", "score": 0.9},
                "interrupted": [{"trial_id": "0004", "epochs_saved": 3, "initial_epoch": 2, "epochs": 4},
                                {"trial_id": "0005", "epochs_saved": 2, "initial_epoch": 2, "epochs": 4},
                                {"trial_id": "0008", "epochs_saved": 1, "initial_epoch": 0, "epochs": 2}],
                "running": [], "epochs_saved": 2, "epochs_done": 12, "plan_epochs": 26, "owner": None,
                "problems": state.problems, "repairable": state.repairable}
    assert {k: v for k, v in status.items() if k != "eta"} == expected


def test_while_the_search_runs_its_trials_are_running_not_interrupted(mixed):
    with held_lock(mixed) as owner:
        state = load_project(mixed)
        status = search_status(mixed)
    assert state.running and state.owner == owner and state.label == "running"
    assert state.interrupted == [] and state.epochs_saved == 0
    assert [t.trial_id for t in state.active] == ["0004", "0005", "0008"]
    assert status["state"] == "running" and status["owner"] == owner and status["interrupted"] == []
    assert [r["trial_id"] for r in status["running"]] == ["0004", "0005", "0008"]
    assert load_project(mixed).label == "interrupted"  # the lock let go


def _all_ended(project, n=10, running=()):
    for k in range(n):
        write_trial(project, f"{k:04d}", "FAILED" if k == 3 else "COMPLETED", score=0.5 + k / 100)
    for k in running:
        write_trial(project, f"{k:04d}", "RUNNING")


def test_the_state_label(tmp_path):
    empty = new_project(tmp_path / "empty")
    assert load_project(empty).label == "not started"
    assert search_status(empty)["state"] == "not started" and search_status(empty)["best"] is None
    # Every planned trial ended: finished, even when finished.json is damaged (it is written last).
    p = new_project(tmp_path / "ended")
    _all_ended(p)
    (p / "finished.json").write_text("{")
    state = load_project(p)
    assert state.done and state.label == "finished" and state.finished is None and len(state.problems) == 1
    assert search_status(p)["eta"] is None
    # One short of the plan: interrupted.
    p = new_project(tmp_path / "short")
    _all_ended(p, n=9)
    assert not load_project(p).done and load_project(p).label == "interrupted"
    # As many ended as planned, but one still to run (resumed after an extension): not done.
    p = new_project(tmp_path / "extra")
    _all_ended(p, running=[10])
    assert not load_project(p).done
    # finished.json says so (failures can end a plan with fewer trials than planned).
    p = new_project(tmp_path / "finished")
    _all_ended(p, n=6)
    (p / "finished.json").write_text(json.dumps({"finished": "2024-01-01T00:00:00"}))
    state = load_project(p)
    assert state.done and state.label == "finished" and state.finished == {"finished": "2024-01-01T00:00:00"}


def test_a_loss_objective_ranks_the_lowest_first_then_the_highest_accuracy_then_fewer_parameters(tmp_path):
    p = new_project(tmp_path / "loss", objective="val_loss")
    for trial_id, loss, acc, params in [("0000", 0.30, 0.70, 100), ("0001", 0.30, 0.90, 900),
                                        ("0002", 0.20, 0.10, 100), ("0003", 0.30, 0.90, 300),
                                        ("0004", 0.40, 0.99, 100)]:
        write_trial(p, trial_id, score=loss, history=[ACC(1, acc, loss)], best_epoch=1, params=params)
    state = load_project(p)
    assert not state.maximize
    assert [t.trial_id for t in state.ranked()] == ["0002", "0003", "0001", "0000", "0004"]


def test_a_trial_is_found_by_its_number(mixed):
    state = load_project(mixed)
    for wanted in (4, "4", "0004"):
        assert state.trial(wanted).trial_id == "0004"
    assert state.trial(6) is None and state.trial("best") is None


def test_our_trial_record_round_trips_and_loads_older_and_newer_records(tmp_path):
    record = TrialRecord("0003", values={"num_stages": 2}, bracket=1, round=0, epochs=2, seed=5, slot=3,
                         status="COMPLETED", history=[ACC(1, 0.5), ACC(2, 0.7)], best_epoch=2, params=10,
                         runs=[{"from_epoch": 0, "ended": True}], seconds=3.5)
    path = tmp_path / "xtune.json"
    record.write(path)
    assert TrialRecord.read(path) == record
    on_disk = json.loads(path.read_text())
    assert on_disk["format"] == 1 and on_disk["trial_id"] == "0003" and on_disk["runs"] == record.runs
    assert TrialRecord.from_dict({"trial_id": "0003", "from_a_newer_xtune": 1}) == TrialRecord("0003")
    assert TrialRecord.read(tmp_path / "missing.json") is None
    assert record.best() == ACC(2, 0.7) and TrialRecord("1", history=[ACC(1, 0.5)], best_epoch=2).best() is None


@pytest.mark.parametrize("content", ["[1, 2]", '{"values": {}}', '"0003"'])
def test_a_record_that_is_not_one_is_a_value_error_naming_it(tmp_path, content):
    path = tmp_path / "trial_0003" / "xtune.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(ValueError, match=r"trial_0003/xtune.json is damaged \(not a trial record\)"):
        TrialRecord.read(path)


def test_a_trials_seconds(tmp_path):
    assert TrialRecord("1", seconds=7, seconds_before=3.0, seconds_run=1.0).total_seconds == 7.0
    assert TrialRecord("1", seconds_before=3.0, seconds_run=1.5).total_seconds == 4.5  # interrupted: its runs so far
    assert TrialRecord("1", seconds_before=3.0).total_seconds is None

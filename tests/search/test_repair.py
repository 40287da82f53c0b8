"""Damaged state files are reported, rebuilt from the trial files, and kept."""

import json

import pytest

from xtune.search import hyperband_plan
from xtune.search._repair import repair_project

from .test_oracle import drive, make_oracle


def repair(tmp_path, project, plan, seed):
    return repair_project(project, plan, lambda: make_oracle(tmp_path, plan, seed=seed, name="scratch"))


@pytest.mark.parametrize("stop_after", [4, 13, None])
def test_oracle_state_is_rebuilt_from_trial_files(tmp_path, stop_after):
    plan = hyperband_plan(30, 9, 3)
    oracle = make_oracle(tmp_path, plan, seed=5)
    drive(oracle, stop_after=stop_after, fail=lambda t: t.trial_id == "0002")
    project = tmp_path / "p"
    truth = json.loads((project / "oracle.json").read_text())
    (project / "oracle.json").write_text(json.dumps(truth)[:200])  # truncated by a crash

    notes = repair(tmp_path, project, plan, 5)
    assert len(notes) == 1 and "oracle.json is damaged" in notes[0] and "rebuilt" in notes[0]
    assert list(project.glob("oracle.json.damaged-*"))  # nothing deleted
    rebuilt = json.loads((project / "oracle.json").read_text())
    for key in ("start_order", "end_order", "ongoing_trials"):
        assert rebuilt[key] == truth[key], key
    # xtune's own state (every bracket, who is in each round, the configurations drawn) comes back exactly.
    assert rebuilt["xtune"] == truth["xtune"]

    # The rebuilt state goes on exactly as the original would have.
    resumed = make_oracle(tmp_path, plan, seed=5)
    resumed.reload()
    more = drive(resumed)
    assert len(resumed.trials) == len(oracle.trials) + len(more)
    assert resumed.is_finished()


def test_every_running_trial_of_several_workers_is_run_again_after_a_rebuild(tmp_path):
    from keras_tuner.engine.trial import TrialStatus

    plan = hyperband_plan(10, 4, 3)
    oracle = make_oracle(tmp_path, plan, seed=5)
    drive(oracle, stop_after=2)
    running = [oracle.create_trial(f"worker-{k}").trial_id for k in (1, 2)]
    oracle.save()
    project = tmp_path / "p"
    (project / "oracle.json").write_text("{")
    repair(tmp_path, project, plan, 5)
    resumed = make_oracle(tmp_path, plan, seed=5)
    resumed.reload()
    more = drive(resumed)
    assert sorted(t.trial_id for t in more[:2]) == running  # first, under their own ids
    assert len(resumed.trials) == plan.total_trials and resumed.is_finished()
    assert all(t.status == TrialStatus.COMPLETED for t in resumed.trials.values())


def test_a_damaged_trial_file_is_rebuilt_from_our_record(tmp_path):
    plan = hyperband_plan(10, 4, 3)
    oracle = make_oracle(tmp_path, plan)
    drive(oracle, stop_after=3)
    project = tmp_path / "p"
    trial_dir = project / "trial_0001"
    good = json.loads((trial_dir / "trial.json").read_text())
    values = good["hyperparameters"]["values"]
    (trial_dir / "xtune.json").write_text(json.dumps({
        "trial_id": "0001", "values": {k: v for k, v in values.items() if "/" not in k},
        "bracket": values["tuner/bracket"], "round": values["tuner/round"], "epochs": values["tuner/epochs"],
        "initial_epoch": 0, "seed": values["xtune/seed"], "slot": values["xtune/slot"], "status": "COMPLETED",
        "best_epoch": 2,
        "history": [{"epoch": 1, "val_accuracy": 0.25}, {"epoch": 2, "val_accuracy": good["score"]}],
    }))
    (trial_dir / "trial.json").write_text("{\"trial_id\": \"00")
    notes = repair(tmp_path, project, plan, 7)
    assert any("trial_0001/trial.json is damaged" in n and "rebuilt it from trial_0001/xtune.json" in n for n in notes)
    rebuilt = json.loads((trial_dir / "trial.json").read_text())
    assert rebuilt["hyperparameters"]["values"] == values
    assert rebuilt["score"] == good["score"] and rebuilt["status"] == "COMPLETED"
    fresh = make_oracle(tmp_path, plan)
    fresh.reload()  # loads again
    assert fresh.get_trial("0001").score == good["score"]


def test_stale_temporaries_are_removed(tmp_path):
    project = tmp_path / "p"
    (project / "trial_0000").mkdir(parents=True)
    (project / "oracle.json.tmp-abc").write_text("{")
    (project / "trial_0000" / "checkpoint.weights.h5.tmp-x.weights.h5").write_bytes(b"\0")
    notes = repair(tmp_path, project, hyperband_plan(10, 4, 3), 1)
    assert notes == ["removed 2 temporary file(s) left by an interrupted write"]
    assert not list(project.rglob("*.tmp-*"))

"""Trial rows, the front and the best trial where mutation testing found them unpinned.

Hand-made search directories (tests/search/projects.py), no training: the fast
counterpart of test_rows.py. See setup.cfg [mutmut].
"""

import json

import pytest

from xtune.errors import ProjectError
from xtune.results import best_trial, pareto_front, search_results, trial_rows
from xtune.results._rows import tie_breaker
from xtune.search import load_project
from xtune.spaces import count_flops, count_params, load_space

from ..search.projects import VALUES, held_lock, new_project, write_trial
from ..search.test_ranking_mutants import ACC, BOOM

CONFIG = load_space("small").default_config().replace(**VALUES)  # what VALUES builds in the "small" space


@pytest.fixture
def rows_project(tmp_path):
    p = new_project(tmp_path / "rows", class_names=("a", "b", "c"))
    write_trial(p, "0000", score=0.8, history=[ACC(1, 0.5, 0.9), ACC(2, 0.8, 0.4)], best_epoch=2, params=5000,
                flops=7000, seconds=12.5)
    write_trial(p, "0001", score=0.9, bracket=1, round=1, epochs=4, initial_epoch=2, parent="0009",
                history=[ACC(3, 0.9, 0.3)], best_epoch=3)  # sizes not recorded: computed
    # Failed at its second epoch: its first is on record, and trial.json holds a score.
    write_trial(p, "0002", "FAILED", score=0.95, message=BOOM, history=[ACC(1, 0.95, 0.1)], best_epoch=1)
    write_trial(p, "0003", "FAILED", message=BOOM, reason="out of memory")  # our record's reason comes first
    write_trial(p, "0004", "RUNNING", backup_epochs=1)
    # Its failed first run left a message in trial.json; it runs again, so it has no reason.
    write_trial(p, "0005", "INVALID", epochs=4, initial_epoch=2, seconds_before=3.0, seconds_run=1.5, message=BOOM)
    write_trial(p, "0006", score=None)  # completed without a score: unranked
    write_trial(p, "0008", "FAILED")  # no message, no reason
    write_trial(p, "0009", "FAILED", message="Error:\n" + "x" * 400)  # a long reason is cut
    write_trial(p, "0010", score=0.6, bracket=2, record=False)  # no record: trial.json says it all
    folder = write_trial(p, "0007", score=0.7, bracket=2, history=[ACC(1, 0.7, 0.6)], best_epoch=1)
    trial = json.loads((folder / "trial.json").read_text())
    trial["hyperparameters"]["values"] = {**VALUES, "tuner/epochs": 2}  # no bracket or round: the record's
    (folder / "trial.json").write_text(json.dumps(trial))
    return p


def _row(**fields):
    row = {"rank": None, "trial_id": None, "status": "COMPLETED", "bracket": 0, "round": 0, "initial_epoch": 0,
           "epochs": 2, "best_epoch": None, "objective": "val_accuracy", "score": None, "tie_breaker": None,
           "params": count_params(CONFIG, (32, 32, 3), 3), "flops": count_flops(CONFIG, (32, 32, 3), 3),
           "seconds": None, "parent": None, "reason": None, "values": VALUES}
    return {**row, **fields}


def test_rows_rank_completed_trials_then_list_the_others(rows_project):
    rows = trial_rows(load_project(rows_project))
    assert rows == [
        _row(rank=1, trial_id="0001", bracket=1, round=1, initial_epoch=2, epochs=4, best_epoch=3, score=0.9,
             tie_breaker=0.3, parent="0009"),
        _row(rank=2, trial_id="0000", best_epoch=2, score=0.8, tie_breaker=0.4, params=5000, flops=7000,
             seconds=12.5),
        _row(rank=3, trial_id="0007", bracket=2, best_epoch=1, score=0.7, tie_breaker=0.6),
        _row(rank=4, trial_id="0010", bracket=2, score=0.6),  # sizes from trial.json's values
        # Interrupted (the search is not running): the epochs their backups saved.
        _row(trial_id="0004", status="INTERRUPTED", epochs=1),
        _row(trial_id="0005", status="INTERRUPTED", initial_epoch=2, epochs=2, seconds=4.5),
        # Failed: a reason, and no score, best epoch or tie-breaker even when some are on record.
        _row(trial_id="0002", status="FAILED", reason="ValueError: boom"),
        _row(trial_id="0003", status="FAILED", reason="out of memory"),
        _row(trial_id="0008", status="FAILED"),
        _row(trial_id="0009", status="FAILED", reason="x" * 300),
        _row(trial_id="0006"),  # completed, no score: after everything else
    ]


def test_while_the_search_runs_its_unfinished_trials_are_running(rows_project):
    with held_lock(rows_project):
        rows = trial_rows(load_project(rows_project))
    assert [(r["trial_id"], r["status"], r["epochs"]) for r in rows[4:6]] == [("0004", "RUNNING", 1),
                                                                            ("0005", "RUNNING", 2)]


@pytest.mark.parametrize("class_names, classes", [((), 2), (("a", "b", "c", "d", "e"), 5)])
def test_sizes_not_recorded_are_computed_at_the_searchs_image_size_and_classes(tmp_path, class_names, classes):
    p = new_project(tmp_path / "p", class_names=class_names, image_size=48)
    write_trial(p, "0000", score=0.5, history=[ACC(1, 0.5)], best_epoch=1)
    write_trial(p, "0001", score=0.6, history=[ACC(1, 0.6)], best_epoch=1, params=1234, flops=4321)
    rows = {r["trial_id"]: r for r in trial_rows(load_project(p))}
    assert (rows["0000"]["params"], rows["0000"]["flops"]) == (count_params(CONFIG, (48, 48, 3), classes),
                                                               count_flops(CONFIG, (48, 48, 3), classes))
    assert (rows["0001"]["params"], rows["0001"]["flops"]) == (1234, 4321)  # recorded: as recorded


def test_the_front_of_a_loss_objective_and_trials_equal_on_everything(tmp_path):
    p = new_project(tmp_path / "loss", objective="val_loss")
    trials = {  # id: (val_loss, params, flops)
        "0000": (0.20, 900, 900),   # on the front
        "0001": (0.30, 100, 100),   # the smallest: on the front
        "0002": (0.30, 200, 100),   # as good as 0001, as many FLOPs, more parameters: dominated
        "0003": (0.25, 900, 900),   # a higher loss than 0000, as big: dominated
        "0004": (0.15, 950, 950),   # 0004 and 0005 are equal: neither beats the other, both on the front
        "0005": (0.15, 950, 950),
    }
    for trial_id, (loss, params, flops) in trials.items():
        write_trial(p, trial_id, score=loss, history=[ACC(1, 0.5, loss)], best_epoch=1, params=params, flops=flops)
    write_trial(p, "0006", score=0.5, history=[ACC(1, 0.5, 0.5)], best_epoch=1)  # sizes computed: dominated
    state = load_project(p)
    assert sorted(t.trial_id for t in pareto_front(state)) == ["0000", "0001", "0004", "0005"]
    rows = search_results(p, pareto=True).rows
    assert [r["trial_id"] for r in rows] == ["0001", "0000", "0004", "0005"]  # smallest first
    assert all(r["tie_breaker"] == 0.5 for r in rows)  # a loss objective: ties go to the validation accuracy


def test_the_tie_breaker_is_the_other_validation_metric():
    assert tie_breaker("val_accuracy") == "val_loss"
    assert tie_breaker("val_loss") == "val_accuracy"


def test_no_completed_trial_is_an_error_that_says_how_to_go_on(tmp_path):
    p = new_project(tmp_path / "p")
    with pytest.raises(ProjectError) as error:
        best_trial(load_project(p))
    assert str(error.value) == f"the search in {p} has no completed trial yet; run or resume it with: " \
                               f"tune search --project {p}"
    write_trial(p, "0000", "FAILED")
    write_trial(p, "0001", "FAILED")
    write_trial(p, "0002", "RUNNING")
    with pytest.raises(ProjectError) as error:
        best_trial(load_project(p))
    assert str(error.value) == f"the search in {p} has no completed trial yet (2 failed); run or resume it with: " \
                               f"tune search --project {p}"


def test_results_and_the_best_configuration(rows_project):
    results = search_results(rows_project, top=2)
    assert [r["trial_id"] for r in results.rows] == ["0001", "0000"]
    problems = ["trial 0006 is completed but has no score; it is left out of the ranking"]
    assert (results.project, results.state, results.objective, results.tie_breaker, results.problems,
            results.warm_start) == (rows_project, "interrupted", "val_accuracy", "val_loss", problems, None)
    assert results.best == {
        "trial_id": "0001", "objective": "val_accuracy", "score": 0.9, "best_epoch": 3, "epochs": 4,
        "params": count_params(CONFIG, (32, 32, 3), 3), "config": CONFIG.to_dict(), "widths": list(CONFIG.widths),
        "input_shape": [32, 32, 3], "num_classes": 3, "class_names": ["a", "b", "c"]}
    assert results.to_dict() == {
        "project": str(rows_project), "state": "interrupted", "objective": "val_accuracy", "tie_breaker": "val_loss",
        "trials": results.rows, "best": results.best, "problems": problems, "warm_start": None}
    assert len(search_results(rows_project).rows) == 11  # no `top`: every trial


def test_results_name_where_a_warm_start_came_from(tmp_path):
    warm = {"from": "runs/earlier", "top": 5, "configurations": [{"num_stages": 2}]}
    p = new_project(tmp_path / "warm", run_extra={"warm_start": warm})
    assert search_results(p).warm_start == warm and search_results(p).to_dict()["warm_start"] == warm

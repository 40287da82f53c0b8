"""The accuracy-vs-size front: exactly the trials no other beats on the objective and on size."""

import json

from click.testing import CliRunner

from xtune.cli import tune
from xtune.results import pareto_front, search_results
from xtune.search import load_project
from xtune.search._project import SearchSettings, write_run
from xtune.spaces import load_space


def _trial(project, trial_id, score, params, flops, stages=2):
    folder = project / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    values = {"num_stages": stages, "tuner/bracket": 0, "tuner/round": 0, "tuner/epochs": 2, "tuner/initial_epoch": 0}
    (folder / "trial.json").write_text(json.dumps({"trial_id": trial_id, "status": "COMPLETED", "score": score,
                                                   "hyperparameters": {"space": [], "values": values}}))
    (folder / "xtune.json").write_text(json.dumps({
        "trial_id": trial_id, "values": {"num_stages": stages}, "status": "COMPLETED", "best_epoch": 1,
        "params": params, "flops": flops, "history": [{"epoch": 1, "val_accuracy": score, "val_loss": 1 - score}]}))


def test_the_front_is_exactly_the_non_dominated_trials(tmp_path):
    write_run(tmp_path, SearchSettings(data="generated"), load_space("small").to_dict(), None)
    trials = {  # id: (score, params, flops)
        "0000": (0.90, 50_000, 9e6),   # the most accurate: on the front
        "0001": (0.85, 10_000, 2e6),   # smaller, less accurate: on the front
        "0002": (0.85, 20_000, 3e6),   # as accurate as 0001 and bigger: dominated by 0001
        "0003": (0.70, 2_000, 5e5),    # the smallest: on the front
        "0004": (0.70, 2_000, 6e5),    # equal on score and params, more FLOPs: dominated by 0003
        "0005": (0.60, 60_000, 1e7),   # worse and bigger than everything: dominated
        "0006": (0.88, 10_000, 8e6),   # better than 0001 but more FLOPs, fewer params than 0000: on the front
    }
    for trial_id, (score, params, flops) in trials.items():
        _trial(tmp_path, trial_id, score, params, int(flops))
    state = load_project(tmp_path)
    front = {t.trial_id for t in pareto_front(state)}
    assert front == {"0000", "0001", "0003", "0006"}
    # By brute force: a trial is on the front iff nothing is at least as good everywhere and better somewhere.
    def dominated(a):
        sa = trials[a]
        return any(sb[0] >= sa[0] and sb[1] <= sa[1] and sb[2] <= sa[2] and sb != sa for b, sb in trials.items())
    assert front == {t for t in trials if not dominated(t)}

    rows = search_results(tmp_path, pareto=True).rows
    assert [r["trial_id"] for r in rows] == ["0003", "0001", "0006", "0000"]  # smallest first
    result = CliRunner().invoke(tune, ["results", "--project", str(tmp_path), "--pareto", "--format", "json"])
    assert [r["trial_id"] for r in json.loads(result.output)["trials"]] == ["0003", "0001", "0006", "0000"]
    table = CliRunner().invoke(tune, ["results", "--project", str(tmp_path), "--pareto"])
    assert table.exit_code == 0 and "accuracy-vs-size front" in table.output and "FLOPs" in table.output

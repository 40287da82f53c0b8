"""What TensorBoard's HParams dashboard shows of a search, read through its own HTTP data API."""

import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from xtune.results import search_results
from xtune.search import load_project
from xtune.search._board import run_name

pytestmark = pytest.mark.slow


def _post(port, path, body):
    request = urllib.request.Request(f"http://localhost:{port}/data/plugin/hparams/{path}",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def board(finished):
    project = finished[0]
    proc = subprocess.Popen([sys.executable, "-m", "xtune", "board", "--project", str(project), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        for line in proc.stdout:
            found = re.search(r"TensorBoard for .*: http://[^:]+:(\d+)/", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "tune board did not start"
        deadline = time.monotonic() + 60
        while True:  # the logs are read in the background: wait until every trial is there
            try:
                groups = _post(port, "session_groups", {"experimentName": "", "startIndex": 0, "sliceSize": 1000,
                                                        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"]})
                if groups.get("totalSize") == len(load_project(project).trials):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "TensorBoard never listed every trial"
            time.sleep(1)
        yield project, port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_every_trial_is_a_row_with_every_column_and_the_score_results_ranks_by(board):
    project, port = board
    experiment = _post(port, "experiment", {"experimentName": ""})
    groups = _post(port, "session_groups", {"experimentName": "", "startIndex": 0, "sliceSize": 1000,
                                            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"]})["sessionGroups"]
    state = load_project(project)
    assert sorted(g["name"] for g in groups) == sorted(run_name(t.trial_id, t.bracket, t.round) for t in state.trials)
    columns = [h["name"] for h in experiment["hparamInfos"]]
    for group in groups:  # no trial is dropped from parallel coordinates for a missing value
        assert set(group["hparams"]) == set(columns), group["name"]
    # The columns shown by default (the first five) are the architecture's; integers read as integers.
    shown = [h["displayName"] for h in experiment["hparamInfos"][:5]]
    assert shown == ["num_stages", "base_width", "width_growth", "conv_type", "residual"]
    widths = next(h for h in experiment["hparamInfos"] if h["displayName"] == "base_width")["domainDiscrete"]
    assert sorted(widths, key=int) == ["8", "16", "32"]  # the small space's widths, as integers
    # The first metric (what the dashboard sorts and colors by) is the score `tune results` ranks by.
    assert experiment["metricInfos"][0]["name"] == {"tag": "val_accuracy", "group": ""}
    scores = {r["trial_id"]: r["score"] for r in search_results(project).rows}
    for group in groups:
        trial_id = group["name"][len("trial_"):len("trial_") + 4]
        value = next(m["value"] for m in group["metricValues"] if m["name"] == {"tag": "val_accuracy", "group": ""})
        assert value == pytest.approx(scores[trial_id], abs=1e-6), trial_id

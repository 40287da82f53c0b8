"""A chief serves its own search only: one chief per port, the search's id and token on every call.

Loopback, no training: a real oracle behind the real gRPC service, called as a worker calls it.
"""

import json
import os
import socket
import stat

import grpc
import pytest

from xtune.errors import ProjectError, UsageError
from xtune.search import _kt, hyperband_plan
from xtune.search._chief import SEARCH_KEY, TOKEN_KEY, ensure_token, make_server, read_token
from xtune.search._worker import RemoteOracle, _channel, _connect, _refusal

from .test_oracle import make_oracle


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """A started chief for search "A" on a free port: (oracle, project, port)."""
    oracle = make_oracle(tmp_path, hyperband_plan(10, 4, 3), name="A")
    project = tmp_path / "A"
    project.mkdir(exist_ok=True)
    server, _servicer, port = make_server(oracle, project, "search-A", "127.0.0.1", 0)
    server.start()
    yield oracle, project, port
    server.stop(grace=0).wait()


def calls(port, search, token):
    return _kt.OracleCalls(_channel("127.0.0.1", port, ((SEARCH_KEY, search), (TOKEN_KEY, token))), timeout=5)


def test_the_token_is_the_projects_own_secret(tmp_path):
    token = ensure_token(tmp_path)
    path = tmp_path / "cluster" / "token"
    assert len(token) == 32 and read_token(tmp_path) == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # readable by its owner only
    assert ensure_token(tmp_path) == token  # made once: a restarted chief keeps it


def test_a_second_chief_on_a_busy_port_is_one_clear_error(served, tmp_path):
    _oracle, _project, port = served
    other = make_oracle(tmp_path, hyperband_plan(10, 4, 3), name="B")
    with pytest.raises(UsageError, match=rf"cannot listen on 127.0.0.1:{port} \(in use"):
        make_server(other, tmp_path / "B", "search-B", "127.0.0.1", port)


def test_a_worker_with_the_token_runs_trials_as_before(served):
    oracle, project, port = served
    trial = calls(port, "search-A", read_token(project)).create_trial("worker-1")
    assert trial.status == "RUNNING" and trial.trial_id == "0000"
    assert oracle.ongoing_trials["worker-1"].trial_id == "0000"


def test_a_client_without_the_token_is_refused_and_changes_nothing(served):
    oracle, project, port = served
    for token in ("", "0" * 32):
        with pytest.raises(grpc.RpcError) as info:
            calls(port, "search-A", token).create_trial("intruder")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        error = _refusal(info.value, "127.0.0.1", port, project, "search-A")
        assert isinstance(error, ProjectError) and "refused this worker's token" in str(error)
    assert not oracle.trials and not oracle.ongoing_trials


def test_a_worker_of_another_search_is_refused_naming_both(served, tmp_path):
    oracle, _project, port = served
    other = tmp_path / "B"
    (other / "cluster").mkdir(parents=True)
    ensure_token(other)
    run = {"search_id": "search-B", "settings": {"data": "demo"}}
    with pytest.raises(ProjectError) as info:
        _connect("127.0.0.1", port, other, run, __import__("threading").Event(), lambda: None)
    message = str(info.value)
    assert "\n" not in message
    assert f"the chief at 127.0.0.1:{port} serves another search (A on {socket.gethostname()}, search search-A)" in message
    assert f"not {other} (search search-B)" in message
    assert not oracle.trials


def test_a_worker_waits_for_a_chief_that_is_not_up_yet(tmp_path):
    import threading

    project = tmp_path / "A"
    ensure_token(project)
    waits, stop = [], threading.Event()
    threading.Timer(1.0, stop.set).start()
    from xtune.search._callbacks import SearchInterrupted

    with pytest.raises(SearchInterrupted):
        _connect("127.0.0.1", free_port(), project, {"search_id": "search-A"}, stop, lambda: waits.append(1))
    assert waits == [1]


def test_the_remote_oracle_carries_the_identity_on_every_call(served):
    import threading

    import keras_tuner

    oracle, project, port = served
    remote = RemoteOracle(calls(port, "search-A", read_token(project)), keras_tuner.Objective("val_accuracy", "max"),
                          threading.Event())
    space = remote.get_space()
    assert "num_stages" in space.values or space.space  # the chief's registered space came back
    trial = remote.create_trial("worker-2")
    trial.status = "COMPLETED"
    remote.update_trial(trial.trial_id, {"val_accuracy": 0.5, "params": 10.0})
    remote.end_trial(trial)
    assert oracle.get_trial(trial.trial_id).status == "COMPLETED" and oracle.end_order == [trial.trial_id]
    assert json.loads((project / f"trial_{trial.trial_id}" / "trial.json").read_text())["score"] == 0.5


def test_a_stopping_worker_gives_up_on_a_chief_that_is_gone_in_seconds_not_the_full_timeout():
    """A stopping worker's last calls (its trial is resumable anyway) wait at most STOPPING_RPC_TIMEOUT.

    Killed with its chief, a worker had waited RPC_TIMEOUT (30 s) for it, and the next
    `tune search` waits for that worker before it starts.
    """
    import threading
    import time

    import keras_tuner

    from xtune.search._callbacks import ChiefLost
    from xtune.search._worker import RPC_TIMEOUT, STOPPING_RPC_TIMEOUT

    nobody = calls(free_port(), "search-A", "token")
    nobody.timeout = RPC_TIMEOUT
    stopping = threading.Event()
    stopping.set()
    remote = RemoteOracle(nobody, keras_tuner.Objective("val_accuracy", "max"), stopping)
    started = time.monotonic()
    with pytest.raises(ChiefLost, match="DEADLINE_EXCEEDED"):
        remote.update_trial("0000", {"val_accuracy": 0.5})
    assert time.monotonic() - started < STOPPING_RPC_TIMEOUT + 5 < RPC_TIMEOUT

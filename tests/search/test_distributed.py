"""Distributed search on loopback: a chief and workers, SIGKILL, Ctrl-C, single-process resume."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from xtune.cli import tune
from xtune.search import load_project

from .conftest import search_args

pytestmark = pytest.mark.slow

# A trial's per-epoch backup writes pause this long (the fault hook of xtune._atomic), so a
# kill after its first epoch lands before the trial ends.
_PAUSE = "2"


def _spawn(args, env=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "xtune", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


class _Output:
    """Lines of a process's output, read in a thread; wait for one that matches."""

    def __init__(self, proc):
        self.lines, self.proc = [], proc
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, pattern, timeout=240):
        regex, seen = re.compile(pattern), 0
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._cond.wait(0.5)):
                    raise AssertionError(f"no line matching {pattern!r}:\n" + "".join(self.lines[-30:]))
                self._cond.wait(min(left, 0.5))

    @property
    def text(self):
        return "".join(self.lines)


def _epochs_once(state):
    """Every trial trained each of its epochs exactly once (a resumed one went on, not over)."""
    for t in state.trials:
        assert [h["epoch"] for h in t.record.history] == list(range(t.initial_epoch + 1, t.epochs + 1)), t


def _first_round(state):
    return sorted((t.bracket, json.dumps(t.values, sort_keys=True)) for t in state.trials if t.round == 0)


def test_two_workers_finish_the_single_process_plan_and_a_killed_worker_loses_nothing(
        finished, image_folder, data_dir, tmp_path):
    single = load_project(finished[0])
    project = tmp_path / "two-workers"
    proc = _spawn(search_args(image_folder, project, data_dir, "--workers", "2", "--verbose"),
                  env={"XTUNE_FAULT_PAUSE_WRITE": _PAUSE, "XTUNE_FAULT_PAUSE_WRITE_MATCH": "trial_0000/backup/state"})
    out = _Output(proc)
    try:
        pids = {m[0]: int(m[1]) for m in re.findall(r"(worker-\d) \(pid (\d+)\)",
                                                    out.wait_for(r"^Workers: .*").group(0))}
        victim = out.wait_for(r"trial 0000 epoch 1/2 \[(worker-\d)\]").group(1)
        os.kill(pids[victim], signal.SIGKILL)  # inside epoch 2 (or its paused backup write)
        assert proc.wait(timeout=300) == 0, out.text
    finally:
        proc.kill()
    out.wait_for("Search finished")
    assert re.search(rf"{victim} \(pid {pids[victim]}\) died \(SIGKILL\) during trial 0000; restarted", out.text)

    state = load_project(project)
    assert len(state.trials) == state.plan.total_trials == 10
    assert all(t.status == "COMPLETED" for t in state.trials)
    assert (project / "finished.json").exists()
    # The same plan as one process with the same seed: the same brackets, rounds and epochs, and the
    # same architectures drawn for each bracket. (Ids may differ: with two workers, bracket 0 opens
    # while bracket 1's first round still runs, so its draws get earlier ids.)
    def shape(s):
        return sorted((t.bracket, t.round, t.initial_epoch, t.epochs) for t in s.trials)
    assert shape(state) == shape(single)
    assert _first_round(state) == _first_round(single)
    # Promotions by the same rule: each parent is a best of its round.
    for t in state.trials:
        if t.parent is not None:
            parent = state.trials[int(t.parent)]
            others = [o for o in state.trials if o.bracket == t.bracket and o.round == t.round - 1
                      and o.trial_id not in {p.parent for p in state.trials if p.round == t.round}]
            assert all(parent.score >= o.score for o in others) and parent.values == t.values
    # No trial ran twice; the killed one went on from its saved epoch.
    _epochs_once(state)
    assert state.trials[0].record.resumed_at_epochs == [1]
    assert all(t.record.resumed_at_epochs == [] for t in state.trials[1:])
    oracle = json.loads((project / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and sorted(oracle["end_order"]) == [t.trial_id for t in state.trials]
    assert all(v == 1 for v in oracle["run_times"].values())


def test_chief_and_workers_across_machines_then_a_single_process_resumes(image_folder, data_dir, tmp_path):
    project = tmp_path / "shared"
    args = ["search", "--data", str(image_folder), "--project", str(project), "--data-dir", str(data_dir),
            "--image-size", "16", "--batch-size", "8", "--space", "small", "--max-trials", "4",
            "--max-epochs", "2", "--factor", "2", "--seed", "5"]
    chief = _spawn([*args, "--chief", "--host", "127.0.0.1", "--port", "0", "--verbose"])
    out = _Output(chief)
    workers = []
    try:
        address = out.wait_for(r"tune worker --chief (\S+) --project (\S+)").group(1)
        # Two chiefs on one project are refused, and so is a launcher.
        for extra in (["--chief", "--port", "0"], ["--workers", "2"]):
            result = CliRunner().invoke(tune, ["search", "--project", str(project), *extra])
            assert result.exit_code == 1, result.output
            assert "is being searched by another tune process" in result.output
        # A trial's checkpoint write pauses: the chief reports epoch 1 once its backup is on disk,
        # and the kill below must land before the trial's last epoch ends it (that epoch writes
        # no backup, so nothing else would hold the trial open).
        # 6 s: the epoch line reaches this test through the chief's poll and the supervisor,
        # seconds late on a loaded machine.
        slow = {"XTUNE_FAULT_PAUSE_WRITE": "6", "XTUNE_FAULT_PAUSE_WRITE_MATCH": "checkpoint.weights"}
        workers = {w: _spawn(["worker", "--chief", address, "--project", str(project), "--worker-id", w,
                              "--strategy", "mirrored"], env=slow)  # one replica on a CPU, but the same code path
                   for w in ("a", "b")}
        match = out.wait_for(r"trial (\d+) epoch 1/2 \[worker-(a|b)\]")
        killed_trial, victim = match.group(1), match.group(2)
        workers[victim].send_signal(signal.SIGKILL)
        survivor = workers["b" if victim == "a" else "a"]
        survivor.send_signal(signal.SIGINT)
        survivor_out, _ = survivor.communicate(timeout=120)
        assert survivor.returncode in (0, 130), survivor_out
        chief.send_signal(signal.SIGINT)
        assert chief.wait(timeout=120) == 130, out.text
    finally:
        for p in [chief, *workers.values()]:
            p.kill()
    out.wait_for(rf"Resume with: tune search --project {re.escape(str(project))}")
    assert "Interrupted during trial" in out.text
    killed = load_project(project).trial(killed_trial)
    assert killed.status == "RUNNING" and killed.epochs_saved == 1, "the kill came after the trial ended"

    # The search resumes in one process: the killed worker's trial goes on from its saved epoch.
    result = CliRunner().invoke(tune, ["search", "--project", str(project), "--workers", "1"])
    assert result.exit_code == 0, result.output
    state = load_project(project)
    assert len(state.trials) == state.plan.total_trials == 4
    assert all(t.status == "COMPLETED" for t in state.trials)
    _epochs_once(state)
    assert state.trials[int(killed_trial)].record.resumed_at_epochs == [1]
    assert len({json.dumps(t.values, sort_keys=True) for t in state.trials}) == 4


def test_a_worker_never_makes_or_deletes_a_search(tmp_path):
    folder = tmp_path / "not-a-search"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(tune, ["worker", "--chief", "127.0.0.1:9", "--project", str(folder)])
    assert result.exit_code == 1
    assert "is not a tune search (no run.json)" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["precious.txt"]
    missing = tmp_path / "missing"
    result = CliRunner().invoke(tune, ["worker", "--chief", "127.0.0.1:9", "--project", str(missing)])
    assert result.exit_code == 1 and not missing.exists()


@pytest.mark.parametrize("args, message", [
    (["worker", "--chief", "localhost", "--project", "x"], "--chief must be HOST:PORT"),
    (["worker", "--chief", "h:1", "--project", "x", "--worker-id", "my-chief"], "--worker-id must be"),
    (["search", "--project", "x", "--chief", "--workers", "2"], "the chief trains nothing"),
    (["search", "--project", "x", "--port", "8000"], "--host and --port are for --chief"),
    (["search", "--project", "x", "--gpus", "0,0"], "--gpus must be distinct"),
])
def test_bad_distributed_options_are_one_line_usage_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "run.json").write_text(json.dumps({"settings": {"data": "demo"}}))
    result = CliRunner().invoke(tune, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


class _Recorder(threading.Event):
    def __init__(self):
        super().__init__()
        self.waits = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return self.is_set()


class _IdleThenTrial:
    """A stand-in for KerasTuner's OracleClient: IDLE a few times, then a trial."""

    def __init__(self, idle, error=None):
        from keras_tuner.engine import trial as trial_module

        self.module, self.idle, self.error, self.calls = trial_module, idle, error, 0

    def create_trial(self, tuner_id):
        self.calls += 1
        if self.error is not None:
            raise self.error
        status = "IDLE" if self.calls <= self.idle else "RUNNING"
        return self.module.Trial(None, trial_id="0007", status=status)


def _remote(calls, event, on_wait=None):
    import keras_tuner

    from xtune.search._worker import RemoteOracle

    return RemoteOracle(calls, keras_tuner.Objective("val_accuracy", "max"), event, on_wait)


def test_a_waiting_worker_sleeps_longer_and_longer_instead_of_spinning():
    calls, event, waits = _IdleThenTrial(idle=6), _Recorder(), []
    client = _remote(calls, event, on_wait=lambda: waits.append(1))
    assert client.create_trial("worker-1").trial_id == "0007"
    assert calls.calls == 7 and event.waits == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5] and waits == [1]
    assert client.current_trial == "0007"


def test_a_worker_stops_cleanly_when_asked_or_when_the_chief_is_gone():
    import grpc

    from xtune.search._callbacks import ChiefLost, SearchInterrupted

    event = _Recorder()
    event.set()
    with pytest.raises(SearchInterrupted):
        _remote(_IdleThenTrial(idle=100), event).create_trial("worker-1")

    class Unavailable(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

    with pytest.raises(ChiefLost, match="UNAVAILABLE"):
        _remote(_IdleThenTrial(0, Unavailable()), _Recorder()).create_trial("worker-1")


@pytest.mark.parametrize("cores, gpus, memory, size, workers", [
    (2, 0, 24, 32, 2),    # this machine: one worker per core
    (1, 0, 24, 32, 1),    # one core: one process
    (16, 0, 64, 180, 4),  # many cores: four workers, four threads each
    (8, 0, 4, 32, 2),     # little memory: about 2 GB per worker
    (16, 1, 64, 32, 2),   # one GPU, small models: two trials share it
    (16, 1, 64, 180, 1),  # one GPU, big models: one
    (16, 4, 64, 180, 4),  # several GPUs: one worker each
])
def test_the_machine_picks_how_many_trials_run_at_once(cores, gpus, memory, size, workers):
    from xtune.search._launch import auto_workers

    assert auto_workers(size, cores=cores, gpus=gpus, memory_gb=memory)[0] == workers


def test_by_default_trials_run_side_by_side_it_says_so_and_workers_restart_when_their_memory_grows(
        image_folder, data_dir, tmp_path, monkeypatch):
    """The default command on this machine (one worker per core; two workers on one core).

    As a single search process does: past XTUNE_RECYCLE_MB of growth a worker ends between
    trials and its supervisor starts it again under the same id; every trial still runs once.
    (One search for both promises: each costs three TensorFlow processes' start-up.)
    """
    project = tmp_path / "default"
    one_core = (os.cpu_count() or 1) < 2
    args = ["search", "--data", str(image_folder), "--project", str(project), "--data-dir", str(data_dir),
            "--image-size", "16", "--batch-size", "8", "--space", "small", "--max-trials", "4", "--max-epochs", "2",
            "--factor", "2", "--seed", "5", *(["--workers", "2"] if one_core else [])]
    monkeypatch.setenv("XTUNE_RECYCLE_MB", "0")  # the workers' memory limit: 0, after every trial
    out = CliRunner().invoke(tune, args)
    assert out.exit_code == 0, out.output
    if not one_core:
        first = " ".join(out.stdout.split("Workers:")[0].split())
        assert "trials at once" in first and "chosen for" in first and "--workers 1 for one process" in first
    state = load_project(project)
    assert len(state.trials) == state.plan.total_trials == 4 and all(t.status == "COMPLETED" for t in state.trials)
    assert {t.record.runs[0].get("from_epoch") for t in state.trials} == {0}
    _epochs_once(state)  # no trial ran twice
    # A worker ends itself after each of its trials but the last one of the plan.
    recycled = re.findall(r"^(worker-\d): Continuing in a fresh process to release memory", out.stdout, re.M)
    assert len(recycled) >= len(state.trials) - 2 and set(recycled) <= {"worker-1", "worker-2"}
    assert "Traceback" not in out.output


def test_workers_grace_period_does_not_keep_tune_search_alive(tmp_path):
    """Workers still waiting when the chief finishes get a grace period to hear it; that
    wait must not hold the process (a timer thread kept every default `tune search` alive
    for 30 s after it printed its result)."""
    from types import SimpleNamespace

    from xtune.search._launch import SearchRequest, _Launch

    launch = _Launch(SearchRequest(str(tmp_path), workers=2), None, threading.Event(), None)
    launch.primary = SimpleNamespace(outcome=SimpleNamespace(status="finished"))
    launch.workers = [SimpleNamespace(done=False)]
    launch.address = "127.0.0.1:1"  # the chief served them
    before = set(threading.enumerate())
    launch._on_done(launch.primary)
    started = set(threading.enumerate()) - before
    assert started  # the grace period is running
    assert all(t.daemon for t in started)  # and does not keep the interpreter alive at exit

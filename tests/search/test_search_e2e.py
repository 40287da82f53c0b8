"""`tune search` end to end on generated images: plan, TensorBoard, resume, refusals."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from xtune.cli import tune
from xtune.search import load_project, search_status
from xtune.search._project import ProjectLock

from .conftest import search_args

pytestmark = pytest.mark.slow


def _event_files(folder: Path):
    return sorted(folder.rglob("events.out.tfevents.*"))


def test_trials_equal_the_plan_and_each_has_a_score(finished):
    project, output = finished
    state = load_project(project)
    assert state.plan.total_trials == 10
    assert len(state.trials) == 10
    assert all(t.status == "COMPLETED" and t.score is not None for t in state.trials)
    assert [(t.bracket, t.round, t.epochs) for t in state.trials] == [(1, 0, 2)] * 5 + [(1, 1, 4)] * 2 + [(0, 0, 4)] * 3
    # One numbering: the trial's id, then how many of the plan's trials have ended.
    assert "trial 0000  1/10  b1 r0" in output and "trial 0009  10/10  b0 r0" in output
    assert "Search finished: 10 trials (10 completed, 0 failed)" in output
    assert (project / "finished.json").exists()


def test_promoted_trials_continue_from_their_parent(finished):
    project, _ = finished
    state = load_project(project)
    promoted = [t for t in state.trials if t.parent is not None]
    # The plan's promotions (every round after a bracket's first) all happened.
    assert len(promoted) == sum(r.trials for b in state.plan.brackets for r in b.rounds[1:]) > 0
    for t in promoted:
        parent = state.trials[int(t.parent)]
        assert parent.values == t.values and parent.round == t.round - 1 and parent.bracket == t.bracket
        assert t.initial_epoch == parent.epochs  # from the parent's weights, not from scratch
        assert [h["epoch"] for h in t.record.history] == list(range(parent.epochs + 1, t.epochs + 1))


def test_tensorboard_events_parse_with_hparams(finished):
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.plugins.hparams import metadata as hparams_metadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    from xtune.search._board import run_name

    project, _ = finished
    for t in load_project(project).trials:
        logdir = project / "logs" / run_name(t.trial_id, t.bracket, t.round)
        scalars = set()
        for f in _event_files(logdir / "validation"):
            for event in event_file_loader.EventFileLoader(str(f)).Load():
                scalars |= {v.tag for v in event.summary.value}
        assert "epoch_accuracy" in scalars
        hparams = {}
        for f in _event_files(logdir):
            if f.parent != logdir:
                continue
            for event in event_file_loader.EventFileLoader(str(f)).Load():
                for value in event.summary.value:
                    if value.tag == hparams_metadata.SESSION_START_INFO_TAG:
                        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                        hparams = dict(data.session_start_info.hparams.items())
        # Every column has a value in every trial (an inactive one, bn_momentum without batch norm, a placeholder).
        from xtune.search._board import INACTIVE, columns, label
        from xtune.spaces import SearchSpace

        state = load_project(project)
        shown = {name: display for name, display, _, _ in columns(SearchSpace.from_dict(state.run["space"]), state.plan)}
        assert set(hparams) == set(shown) and set(t.values) <= set(shown.values()) | {"bracket", "round"}
        assert not any(k.startswith("tuner/") for k in hparams)
        by_display = {display: hparams[name] for name, display in shown.items()}
        assert by_display["round"].string_value == str(t.round)
        for hp, value in by_display.items():  # every column has a value; an inactive one says so
            if hp in t.values:
                expected = label(t.values[hp])
                assert (value.bool_value if isinstance(expected, bool) else value.string_value) == expected, hp
            elif hp not in ("bracket", "round"):
                assert value.string_value == INACTIVE, hp


def test_a_finished_search_says_so(finished):
    project, _ = finished
    result = CliRunner().invoke(tune, ["search", "--project", str(project)])
    assert result.exit_code == 0
    assert f"The search in {project} is finished" in result.output


def test_a_conflicting_flag_is_refused_in_one_line(finished):
    project, _ = finished
    result = CliRunner().invoke(tune, ["search", "--project", str(project), "--image-size", "32"])
    assert result.exit_code == 2
    assert "--image-size 32 conflicts with this search's 16" in result.output
    assert "--overwrite" in result.output and "Traceback" not in result.output
    # The same value as stored is no conflict.
    result = CliRunner().invoke(tune, ["search", "--project", str(project), "--image-size", "16"])
    assert result.exit_code == 0, result.output


def test_status_of_a_finished_search(finished):
    project, _ = finished
    info = search_status(project)
    assert info["state"] == "finished" and info["trials_ended"] == info["plan_trials"] == 10
    result = CliRunner().invoke(tune, ["status", "--project", str(project)])
    assert result.exit_code == 0 and "finished" in result.output


def _search_process(image_folder, project, data_dir, *extra, env=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    # Its own process group, as a terminal gives a command: Ctrl-C reaches the group.
    return subprocess.Popen([sys.executable, "-m", "xtune", *search_args(image_folder, project, data_dir, "--verbose", *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def _read_until(proc, predicate, timeout=240):
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if predicate(line, lines):
            return lines
    raise AssertionError("did not happen:\n" + "".join(lines[-20:]))


def test_ctrl_c_then_sigkill_then_resume_loses_nothing(image_folder, data_dir, tmp_path):
    project = tmp_path / "killed"
    small = ("--max-trials", "6", "--max-epochs", "2")  # six trials of two epochs
    # Ctrl-C after the first trial's first epoch: it stops at the next batch, says how to resume.
    # The epoch's line is printed before its backup is written, and that write (the fault hook
    # of xtune._atomic) pauses, so the signal lands before epoch 2 starts however slow the
    # machine: without the pause, an epoch 2 that ends first moves the Ctrl-C to trial 0001.
    pause = {"XTUNE_FAULT_PAUSE_WRITE": "3", "XTUNE_FAULT_PAUSE_WRITE_MATCH": "trial_0000/backup/state"}
    proc = _search_process(image_folder, project, data_dir, *small, env=pause)
    _read_until(proc, lambda line, _: " epoch 1/" in line)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Interrupted during trial 0000" in out and f"Resume with: tune search --project {project}" in out
    status = search_status(project)
    assert status["state"] == "interrupted" and status["interrupted"][0]["trial_id"] == "0000"

    # SIGKILL after three completed trials.
    proc = _search_process(image_folder, project, data_dir, *small)
    _read_until(proc, lambda line, lines: sum(l.startswith("trial ") for l in lines) >= 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.trial_id: t for t in load_project(project).trials if t.status == "COMPLETED"}
    assert len(before) >= 3
    stamps = {i: (project / f"trial_{i}" / "checkpoint.weights.h5").stat().st_mtime_ns for i in before}

    result = CliRunner().invoke(tune, search_args(image_folder, project, data_dir, *small))
    assert result.exit_code == 0, result.output
    assert "Resuming" in result.output
    after = load_project(project)
    assert len(after.trials) == after.plan.total_trials == 6
    assert all(t.status == "COMPLETED" for t in after.trials)
    for trial_id, t in before.items():  # kept, never re-run
        assert after.trials[int(trial_id)].record.history == t.record.history
        assert (project / f"trial_{trial_id}" / "checkpoint.weights.h5").stat().st_mtime_ns == stamps[trial_id]
    assert after.trials[0].record.resumed_at_epochs == [1]  # the Ctrl-C'd trial went on from epoch 1


def test_a_second_search_on_a_locked_project_is_refused(finished, image_folder, data_dir):
    project, _ = finished
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from xtune.search import ProjectLock;"
                               f"ProjectLock({str(project)!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # Not even --overwrite gets past a running search.
        result = CliRunner().invoke(tune, search_args(image_folder, project, data_dir, "--overwrite"))
        assert result.exit_code == 1
        assert f"is being searched by another tune process (pid {holder.pid}" in result.output
        assert search_status(project)["state"] == "running"
    finally:
        holder.kill()
        holder.wait()
    # A lock left by a killed process does not block.
    with ProjectLock(project):
        pass
    assert search_status(project)["state"] == "finished"


def test_a_failing_trial_is_recorded_and_the_search_goes_on(image_folder, data_dir, tmp_path, monkeypatch):
    from xtune.search import run_search
    from xtune.spaces import _hypermodel

    real = _hypermodel.build_model

    def flaky(config, *args, **kwargs):
        if config.conv_type == "standard":
            raise ValueError(f"{config.num_stages} stages are too deep for this test")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(_hypermodel, "build_model", flaky)
    given = {"data": str(image_folder), "image_size": 16, "batch_size": 8, "max_trials": 4, "max_epochs": 2,
             "factor": 2, "seed": 3}
    outcome = run_search(tmp_path / "flaky", given, space_ref="small", data_dir=data_dir)
    assert outcome.status == "finished"
    state = load_project(tmp_path / "flaky")
    failed = [t for t in state.trials if t.status == "FAILED"]
    assert failed and outcome.failed == len(failed) and outcome.completed > 0
    for t in failed:
        assert t.values["conv_type"] == "standard"
        assert "too deep for this test" in t.record.reason

    # All failing: the search stops after --max-failures in a row, resumably.
    monkeypatch.setattr(_hypermodel, "build_model", lambda *a, **k: (_ for _ in ()).throw(MemoryError("OOM")))
    outcome = run_search(tmp_path / "doomed", {**given, "max_consecutive_failures": 2}, space_ref="small", data_dir=data_dir)
    assert outcome.status == "stopped"
    assert "2 trials failed in a row" in outcome.message and "out of memory" in outcome.message


def test_board_serves_tensorboard(finished):
    project, _ = finished
    # --port 0: TensorBoard binds a free port itself and the line names it (a port found free
    # here and closed again could be taken by another process before TensorBoard binds it).
    proc = subprocess.Popen([sys.executable, "-m", "xtune", "board", "--project", str(project), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = _read_until(proc, lambda l, _: "TensorBoard for" in l, timeout=60)[-1]
        url = re.search(r"(http://\S+?:(\d+)/)", line)
        assert url and int(url.group(2)) > 0, line
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url.group(1)}data/runs", timeout=5) as r:
                    runs = json.loads(r.read())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert any(run.startswith("trial_0000-b1r0") for run in runs)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_transient_failure_runs_once_more(image_folder, data_dir, tmp_path, monkeypatch):
    from xtune.search import run_search
    from xtune.spaces import _hypermodel

    real, calls = _hypermodel.build_model, []

    def once(config, *args, **kwargs):
        calls.append(config)
        if len(calls) == 2:
            raise RuntimeError("could not create a primitive descriptor")  # a runtime hiccup
        return real(config, *args, **kwargs)

    monkeypatch.setattr(_hypermodel, "build_model", once)
    events = []
    given = {"data": str(image_folder), "image_size": 16, "batch_size": 8, "max_trials": 2, "max_epochs": 2, "seed": 3}
    outcome = run_search(tmp_path / "hiccup", given, space_ref="small", data_dir=data_dir, progress=events.append,
                         tensorboard=False)
    assert outcome.status == "finished" and outcome.failed == 0 and outcome.completed == 2
    from xtune._events import TrialRetry

    retries = [e for e in events if isinstance(e, TrialRetry)]
    assert [e.trial_id for e in retries] == ["0001"]
    assert "could not create a primitive descriptor" in retries[0].reason
    assert calls[1] == calls[2]  # the same trial, run again


def test_a_full_disk_stops_cleanly_and_the_search_resumes(image_folder, data_dir, tmp_path, monkeypatch):
    from xtune.errors import ProjectError
    from xtune.search import run_search

    project = tmp_path / "full"
    given = {"data": str(image_folder), "image_size": 16, "batch_size": 8, "max_trials": 2, "max_epochs": 3, "seed": 3}
    # The disk fills up while the first trial backs up its second epoch.
    monkeypatch.setenv("XTUNE_FAULT_ENOSPC", "epoch-0002.npz")
    with pytest.raises(ProjectError) as info:
        run_search(project, given, space_ref="small", data_dir=data_dir, tensorboard=False)
    message = str(info.value)
    assert "disk full while running trial 0000" in message and "run the same command to resume" in message
    assert "\n" not in message
    state = load_project(project)  # everything on disk still loads
    assert not state.problems and state.trials[0].status == "RUNNING"
    assert state.trials[0].backup["epochs_done"] == 1
    assert not list(project.rglob("*.tmp-*"))

    monkeypatch.delenv("XTUNE_FAULT_ENOSPC")  # space is free again
    outcome = run_search(project, {}, data_dir=data_dir, tensorboard=False)
    assert outcome.status == "finished" and outcome.completed == 2
    assert load_project(project).trials[0].record.resumed_at_epochs == [1]


def test_a_trial_that_crashes_the_process_is_resumed_then_failed(image_folder, data_dir, tmp_path):
    """A native crash kills the process: `tune search` restarts it; a trial that kills it
    twice from the same epoch is failed, with the reason, and the search goes on."""
    project = tmp_path / "crashy"
    env = dict(os.environ, XTUNE_FAULT_ABORT="0000:2", TF_CPP_MIN_LOG_LEVEL="3")
    args = ["search", "--data", str(image_folder), "--project", str(project), "--data-dir", str(data_dir),
            "--image-size", "16", "--batch-size", "8", "--space", "small", "--max-trials", "2",
            "--max-epochs", "2", "--seed", "3", "--workers", "1"]
    out = subprocess.run([sys.executable, "-m", "xtune", *args], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    # Dies in epoch 2 (epoch 1 saved), then twice more from epoch 1; the next start fails it.
    assert out.stderr.count("The search process died (SIGABRT); resuming from the last saved epoch.") == 3
    assert "I0000" not in out.stderr  # TensorFlow's start-up chatter is filtered
    assert "Search finished: 2 trials (1 completed, 1 failed)" in out.stdout
    first = load_project(project).trials[0]
    assert first.status == "FAILED"
    assert "the process died 2 times while training this trial from epoch 1" in first.record.reason


def test_a_search_whose_memory_grows_continues_in_a_fresh_process(image_folder, data_dir, tmp_path):
    """TensorFlow keeps memory of every model a process trains: past XTUNE_RECYCLE_MB of
    growth, the search ends its process between trials and goes on in a fresh one."""
    project = tmp_path / "recycled"
    env = dict(os.environ, XTUNE_RECYCLE_MB="0", TF_CPP_MIN_LOG_LEVEL="3")  # 0: after every trial
    args = ["search", "--data", str(image_folder), "--project", str(project), "--data-dir", str(data_dir),
            "--image-size", "16", "--batch-size", "8", "--space", "small", "--max-trials", "3",
            "--max-epochs", "2", "--seed", "3", "--workers", "1"]
    out = subprocess.run([sys.executable, "-m", "xtune", *args], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    state = load_project(project)
    recycles = out.stdout.count("Continuing in a fresh process to release memory")
    # Every trial but the last ends its process; each trial ran once, in order.
    assert recycles == len(state.trials) - 1 >= 1, out.stdout
    assert out.stdout.count("Resuming ") == recycles
    assert all(t.status == "COMPLETED" for t in state.trials)
    assert [t.trial_id for t in state.trials] == sorted({t.trial_id for t in state.trials})
    assert f"Search finished: {len(state.trials)} trials ({len(state.trials)} completed, 0 failed)" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr

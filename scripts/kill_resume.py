"""Kill a running `tune search` with SIGKILL at many moments, resume it, check nothing is lost.

    python scripts/kill_resume.py --kills 30 [--workdir DIR] [--max-trials 20] [--seed 7]

1. Generates a tiny two-class image folder (16 px) and runs the search once without
   interruption, as one process: the reference.
2. Runs the same search in a subprocess and kills it with SIGKILL, over and over,
   aiming at: the first trial, the moments between trials, the inside of an epoch
   that follows a saved one of the same trial, and the inside of a state write
   (writes are slowed down with the fault hook ``XTUNE_FAULT_PAUSE_WRITE`` for that,
   and the kill lands while a temporary file exists). A kill fires only once the
   project on disk is in the phase it aims at (a trial's end line that comes while a
   write is under way waits for the next one), so each kill is of the kind its report
   line says. After every kill, every state file must still load; then it resumes.
3. At the end: every trial of the plan completed exactly once, no trial id or
   architecture twice, and the same trials (architecture, bracket, round) as the
   reference; every trial interrupted after a completed epoch resumed from that epoch.

Prints a JSON report; exits 1 if a check fails. The test suite runs it with fewer kills.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from xtune.data._synthetic import make_image_folder

PHASES = ("first trial", "between trials", "inside an epoch", "during a state write")
_EPOCH_DONE = re.compile(r"^\s+trial \S+ epoch (?P<epoch>\d+)/(?P<epochs>\d+)\b")  # --verbose, one per epoch


def make_images(folder: Path, per_class: int = 24, size: int = 16, seed: int = 0) -> Path:
    """Two learnable classes of small PNGs (a bright band at the top or at the bottom)."""
    return make_image_folder(folder, per_class=per_class, size=size, seed=seed)


def search_command(data: Path, project: Path, data_dir: Path, args, workers: int | None = None) -> list[str]:
    workers = workers or getattr(args, "workers", None)
    return [sys.executable, "-m", "xtune", "search", "--data", str(data), "--project", str(project),
            "--data-dir", str(data_dir), "--image-size", "16", "--batch-size", "8", "--space", "small",
            "--max-trials", str(args.max_trials), "--max-epochs", str(args.max_epochs), "--seed", str(args.seed),
            "--verbose", *(["--workers", str(workers)] if workers else [])]


def _env(pause_writes: bool) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("XTUNE_FAULT_PAUSE_WRITE", None)
    if pause_writes:
        env["XTUNE_FAULT_PAUSE_WRITE"] = "0.15"
    return env


def trials_on_disk(project: Path) -> dict:
    """trial id -> (status, space values, bracket, round); raises if any state file fails to load."""
    from xtune.search import load_project

    state = load_project(project)
    if state.problems:
        raise AssertionError(f"unloadable state after a kill: {state.problems}")
    if (project / "oracle.json").exists():
        json.loads((project / "oracle.json").read_text())  # must parse
    out = {}
    for t in state.trials:
        json.loads((project / f"trial_{t.trial_id}" / "trial.json").read_text())
        out[t.trial_id] = {"status": t.status, "values": t.values, "bracket": t.bracket, "round": t.round,
                           "parent": t.parent, "initial_epoch": t.initial_epoch,
                           "epochs_saved": (t.backup or {}).get("epochs_done"), "record": t.record.to_dict()}
    return out


def _phase_now(project: Path, saw_epoch_end: bool, stale: set) -> str:
    ended = []
    for path in project.glob("trial_*/xtune.json"):
        try:
            if json.loads(path.read_text()).get("status") in ("COMPLETED", "FAILED"):
                ended.append(path)
        except (OSError, ValueError):
            continue
    if not ended:
        return "first trial"
    if set(project.rglob("*.tmp-*")) - stale:
        return "during a state write"
    return "inside an epoch" if saw_epoch_end else "between trials"


def kill_once(cmd, project: Path, target: str, rng: random.Random, timeout: float = 300) -> dict:
    """Start the search, SIGKILL it at a moment of kind ``target``; return what happened."""
    import queue
    import threading

    # Only a write of this run counts: not a temporary file an earlier kill left behind, nor a
    # write of the earlier run's workers, still stopping (the new run's first line comes once they
    # are gone: it waits for them before it starts).
    stale: set | None = None
    at_launch = set(project.rglob("*.tmp-*"))
    launched = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(target == "during a state write"), start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l.rstrip("\n")) for l in proc.stdout], daemon=True).start()
    seen, killed_at, deadline = [], None, time.monotonic() + timeout
    epochs_seen, trial_goes_on = 0, False
    wait_epochs = rng.randint(1, 3)
    while time.monotonic() < deadline:
        new = []
        while not lines.empty():
            new.append(lines.get())
        seen.extend(new)
        # An epoch that is not its trial's last ("    trial 0004 epoch 2/3 [worker-2]  ..."): a
        # kill soon after lands inside the trial's next epoch, with a saved epoch to resume from.
        ends = [_EPOCH_DONE.search(l) for l in new]
        ends = [m for m in ends if m]
        epochs_seen += len(ends)
        if ends:
            trial_goes_on = int(ends[-1]["epoch"]) < int(ends[-1]["epochs"])
        if proc.poll() is not None and lines.empty():
            break
        fire = False
        if target == "first trial":
            # Soon after the first trial's folder appears: waiting for its first epoch line
            # races with its end when two workers train side by side.
            if any(project.glob("trial_*/")):
                time.sleep(rng.uniform(0.2, 1.0))
                fire = True
        elif target == "between trials":
            fire = any(l.startswith("trial ") for l in new)
        elif target == "inside an epoch":
            if epochs_seen >= wait_epochs and trial_goes_on:
                time.sleep(rng.uniform(0.05, 0.4))
                fire = True
        elif target == "during a state write":
            if stale is None and any(not l.startswith("Waiting for pid") for l in seen):
                stale = set(project.rglob("*.tmp-*"))
            fire = stale is not None and bool(set(project.rglob("*.tmp-*")) - stale)
        if fire:
            killed_at = _phase_now(project, target == "inside an epoch", at_launch if stale is None else stale)
            if killed_at != target and target in ("between trials", "inside an epoch"):
                # Not yet the moment aimed at (no trial has ended, or the other worker is
                # writing): wait for the next one rather than count a kill of another kind.
                # On a fast machine, a trial's end line often comes while a write is under way.
                killed_at = None
                time.sleep(0.01)
                continue
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.01)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError("the search neither finished nor reached a kill point in time:\n" + "\n".join(seen[-20:]))
    finished = killed_at is None
    if finished and proc.returncode != 0:
        raise AssertionError(f"the search failed (exit {proc.returncode}):\n" + "\n".join(seen[-30:]))
    return {"target": target, "killed_at": killed_at, "finished": finished, "output": seen,
            "seconds": round(time.monotonic() - launched, 1)}


def run(args) -> dict:
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="xtune-kill-"))
    data = make_images(work / "images")
    data_dir = work / "data"
    started = time.monotonic()

    # The reference runs beside the killed runs (its data is prepared first, once), as one
    # process: the default's plan and trials are one process's (tests/search/test_distributed.py),
    # and two more TensorFlow processes would only slow the killed runs down.
    reference = work / "reference"
    subprocess.run([sys.executable, "-m", "xtune", "data", "prepare", str(data), "--data-dir", str(data_dir)],
                   check=True, capture_output=True, env=_env(False))
    ref_proc = subprocess.Popen(search_command(data, reference, data_dir, args, workers=1), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=_env(False))

    project = work / "killed"
    kills, interrupted_epochs = [], {}
    targets = list(getattr(args, "targets", None) or ())
    if not targets:  # the first trial, then the later phases in turn, shuffled
        later = PHASES[1:]
        tail = [later[i % len(later)] for i in range(args.kills - 1)]
        rng.shuffle(tail)
        targets = ["first trial", *tail]
    finished = False
    for target in targets:
        result = kill_once(search_command(data, project, data_dir, args), project, target, rng)
        if result["finished"]:
            finished = True
            break
        on_disk = trials_on_disk(project)  # raises if anything is unloadable
        for trial_id, t in on_disk.items():
            if t["status"] == "RUNNING" and t["epochs_saved"] and t["epochs_saved"] > t["initial_epoch"]:
                interrupted_epochs.setdefault(trial_id, set()).add(t["epochs_saved"])
        kills.append({"target": target, "killed_at": result["killed_at"], "seconds": result["seconds"],
                      "trials_on_disk": len(on_disk),
                      "running": {i: t["epochs_saved"] for i, t in on_disk.items() if t["status"] == "RUNNING"},
                      "last_lines": result["output"][-12:]})
    final_started = time.monotonic()
    if not finished:
        final = subprocess.run(search_command(data, project, data_dir, args), capture_output=True, text=True, env=_env(False))
        if final.returncode != 0:
            raise SystemExit(f"final resume failed:\n{final.stdout[-3000:]}\n{final.stderr[-2000:]}")
    final_seconds = time.monotonic() - final_started
    got = trials_on_disk(project)
    ref_out, _ = ref_proc.communicate()
    if ref_proc.returncode != 0:
        raise SystemExit(f"reference search failed:\n{ref_out[-3000:]}")
    expected = trials_on_disk(reference)

    checks = {}
    checks["all trials completed"] = all(t["status"] == "COMPLETED" for t in got.values())
    checks["same number of trials as the reference"] = len(got) == len(expected)
    # Architectures and brackets depend only on the seed (each first-round slot draws its
    # own); which trial a promotion continues depends on scores, which float arithmetic
    # may change after a resume. Trial ids may differ where trials ran side by side.
    def shape(trials):
        return sorted((t["bracket"], t["round"], json.dumps(t["values"], sort_keys=True) if t["round"] == 0 else "")
                      for t in trials.values())

    checks["same architectures and brackets as the reference"] = shape(got) == shape(expected)
    same_promotions = all(got.get(i, {}).get("parent") == t["parent"] for i, t in expected.items())
    first_round = [json.dumps(t["values"], sort_keys=True) for t in got.values() if t["round"] == 0]
    checks["no architecture twice"] = len(first_round) == len(set(first_round))
    checks["no trial id twice"] = len(set(got)) == len(got)
    # A killed search's workers stop at their next batch, so one may still finish the
    # epoch it is in and save it after the kill was observed: a trial may go on from a
    # later epoch than the one seen on disk, never from an earlier one, and its runs
    # never go back (a run from an earlier epoch is an epoch trained twice, a backup lost).
    resumed_ok = {}
    for trial_id, epochs in interrupted_epochs.items():
        record = got[trial_id]["record"]
        starts = [r.get("from_epoch", 0) for r in record.get("runs", [])]
        resumed = record.get("resumed_at_epochs", [])
        # (One run only: the stopping worker finished the trial itself.)
        resumed_ok[trial_id] = starts == sorted(starts) and (len(starts) == 1 or max(starts) >= max(epochs))
        if not resumed_ok[trial_id]:
            print(f"trial {trial_id}: saved epochs {sorted(epochs)} at kills, resumed at {resumed}; "
                  f"runs {record.get('runs')}", file=sys.stderr)
    checks["interrupted trials went on from their saved epoch, never back"] = all(resumed_ok.values())
    from xtune.search import load_project

    plan_total = load_project(project).plan.total_trials
    checks["trials equal the plan"] = len(got) == plan_total
    report = {
        "kills": len(kills),
        "kills_by_phase": {p: sum(k["killed_at"] == p for k in kills) for p in PHASES},
        "kill_log": [{k: kill[k] for k in ("target", "killed_at", "seconds", "trials_on_disk")} for kill in kills],
        "seconds_per_kill": [k["seconds"] for k in kills],
        "plan_trials": plan_total,
        "trials_completed": sum(t["status"] == "COMPLETED" for t in got.values()),
        "trials_resumed_mid_trial": len(interrupted_epochs),
        "same_promotions_as_reference": same_promotions,
        "checks": checks,
        "seconds": round(time.monotonic() - started, 1),
        "seconds_final_resume": round(final_seconds, 1),
        "workdir": str(work),
    }
    if not args.workdir and all(checks.values()):
        shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--max-trials", type=int, default=20)
    parser.add_argument("--max-epochs", type=int, default=4)  # with 20: a plan of 20 trials
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", help="keep everything here (default: a temporary folder, removed on success)")
    parser.add_argument("--workers", type=int, help="--workers of every run (default: tune search's own choice)")
    args = parser.parse_args(argv)
    report = run(args)
    print(json.dumps(report, indent=2))
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

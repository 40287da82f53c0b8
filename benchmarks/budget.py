"""What a size budget costs and saves: the same search with and without ``--max-params``.

    python -m benchmarks budget
    python -m benchmarks.budget [--max-params 50000] [--max-trials 12] [--max-epochs 8] [--seed 1337]

On the demo digits (1,797 images, 10 classes, 32 px), in one run, one after the other:

- unbudgeted: ``tune search --data demo --image-size 32 --space small --seed 1337
  --max-trials 12 --max-epochs 8 --workers 1 --quiet``;
- budgeted: the same command with ``--max-params 50000``;

each followed by ``tune export --format json`` (test accuracy and the exported model's
parameters from the model card) and ``tune results --format json`` (every trial's
parameters). Recorded for each: test accuracy, parameters of the exported model, search
and export wall time, the trials' parameters; and the ratios budgeted / unbudgeted. The
benchmark checks that every trial of the budgeted search has at most ``--max-params``
parameters (one line says so; a trial over it fails the benchmark, after the results are
written). One worker process, so that the two wall times are not also a matter of how
trials fell on workers. Load averages before and after each step and the git commit are
recorded: the machine is shared and the times are noisy.

Projects and the prepared data live in ``benchmarks/.budget-work/`` (git-ignored,
rebuilt on each run). Writes ``benchmarks/results/budget.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import machine, write_result

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).resolve().parent / ".budget-work"  # git-ignored (benchmarks/.gitignore)
IMAGE_SIZE = 32
SPACE = "small"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def git_state() -> dict:
    """The checkout the benchmark ran: HEAD, the tree of src/, and whether src/ had uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "src_tree": git("rev-parse", "HEAD:src"),
            "src_dirty": bool(git("status", "--porcelain", "--", "src"))}


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def tune(*args: str, what: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``tune ARGS`` (this interpreter's xtune); return it and its wall time. A failure stops the benchmark."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "xtune", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True)
    wall = time.monotonic() - start
    if proc.returncode:
        sys.exit(f"{what} failed (exit {proc.returncode}): tune {' '.join(args)}\n"
                 f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc, wall


def _json(proc: subprocess.CompletedProcess, what: str) -> dict:
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        sys.exit(f"{what} did not print JSON:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def one_search(name: str, common: list[str], extra: list[str], data_dir: Path) -> dict:
    """Search, export and read the results of one variant."""
    project = WORK / name
    load_before = loadavg()
    log(f"{name}: tune search {' '.join(common + extra)}")
    search, search_s = tune("search", "--project", str(project), "--data-dir", str(data_dir), *common, *extra,
                            "--overwrite", what=f"{name} search")
    load_after_search = loadavg()
    log(f"{name}: search took {search_s:.0f} s: {' '.join(search.stdout.split())[:300]}")
    results = _json(tune("results", "--project", str(project), "--format", "json", what=f"{name} results")[0],
                    "tune results")
    proc, export_s = tune("export", "--project", str(project), "--data-dir", str(data_dir), "--format", "json",
                          "--quiet", "--overwrite", what=f"{name} export")
    card = _json(proc, "tune export")
    load_after = loadavg()
    trials = [{"trial_id": t["trial_id"], "status": t["status"], "bracket": t["bracket"], "round": t["round"],
               "epochs": t["epochs"], "params": t["params"], "score": t["score"],
               "seconds": None if t.get("seconds") is None else round(t["seconds"], 1), "reason": t.get("reason")}
              for t in results["trials"]]
    completed = [t for t in trials if t["status"] == "COMPLETED"]
    selection = card["training"].get("selection") or {}
    out = {
        "test_accuracy": round(card["test"]["accuracy"], 4),
        "params": card["model"]["params"],
        "search_s": round(search_s, 1), "export_s": round(export_s, 1),
        "exported_trial": card["model"].get("trial_id"), "shipped": selection.get("shipped"),
        "export_epochs": card["training"]["epochs"],
        "best_val_accuracy": results["best"]["score"] if results.get("best") else None,
        "trials_total": len(trials), "trials_completed": len(completed),
        "trials_failed": sum(t["status"] == "FAILED" for t in trials),
        "distinct_architectures_params": sorted({t["params"] for t in trials if t["params"] is not None}),
        "largest_trial_params": max((t["params"] for t in trials if t["params"] is not None), default=None),
        "search_summary": search.stdout.strip().splitlines()[:2],
        "load_before": load_before, "load_after_search": load_after_search, "load_after": load_after,
        "trials": trials,
    }
    log(f"{name}: test accuracy {out['test_accuracy']:.4f}, {out['params']:,} parameters (trial "
        f"{out['exported_trial']}, {out['shipped']}), export {export_s:.0f} s; {len(completed)}/{len(trials)} "
        f"trials completed, largest {out['largest_trial_params']:,} parameters")
    return out


def budget_check(runs: dict, max_params: int) -> dict:
    """Every trial of the budgeted search within the budget (and how many of the unbudgeted were not)."""
    over = [t for t in runs["budgeted"]["trials"] if t["params"] is None or t["params"] > max_params]
    check = {
        "max_params": max_params, "budgeted_trials": len(runs["budgeted"]["trials"]),
        "budgeted_trials_over": len(over), "budgeted_largest": runs["budgeted"]["largest_trial_params"],
        "passed": not over and bool(runs["budgeted"]["trials"]),
        "unbudgeted_trials_over": sum((t["params"] or 0) > max_params for t in runs["unbudgeted"]["trials"]),
        "unbudgeted_trials": len(runs["unbudgeted"]["trials"]),
    }
    if check["passed"]:
        print(f"BUDGET CHECK PASSED: all {check['budgeted_trials']} trials of the budgeted search have <= "
              f"{max_params:,} parameters (largest {check['budgeted_largest']:,}); the unbudgeted search had "
              f"{check['unbudgeted_trials_over']} of {check['unbudgeted_trials']} over it", flush=True)
    else:
        print(f"BUDGET CHECK FAILED: {len(over)} of {check['budgeted_trials']} trials of the budgeted search are "
              f"over {max_params:,} parameters: " + ", ".join(f"trial {t['trial_id']} ({t['params']})" for t in over),
              flush=True)
    return check


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-params", type=int, default=50000)
    parser.add_argument("--max-trials", type=int, default=12)
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/.budget-work afterwards")
    args = parser.parse_args(argv)

    info = machine()  # its load_before: before anything ran
    git = git_state()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    data_dir = WORK / "data"
    _, prepare_s = tune("data", "prepare", "demo", "--data-dir", str(data_dir), "--format", "json",
                        what="tune data prepare")
    log(f"prepared the demo digits in {prepare_s:.0f} s (not counted)")
    common = ["--data", "demo", "--image-size", str(IMAGE_SIZE), "--space", SPACE, "--seed", str(args.seed),
              "--max-trials", str(args.max_trials), "--max-epochs", str(args.max_epochs), "--workers", "1",
              "--quiet"]
    runs = {}
    try:
        runs["unbudgeted"] = one_search("unbudgeted", common, [], data_dir)
        runs["budgeted"] = one_search("budgeted", common, ["--max-params", str(args.max_params)], data_dir)
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    check = budget_check(runs, args.max_params)
    b, u = runs["budgeted"], runs["unbudgeted"]
    ratios = {"search_s": round(b["search_s"] / u["search_s"], 3), "export_s": round(b["export_s"] / u["export_s"], 3),
              "params": round(b["params"] / u["params"], 3),
              "test_accuracy": round(b["test_accuracy"] / u["test_accuracy"], 3)}
    git_after = git_state()
    payload = {
        "machine": info,
        "git": {**git, "src_dirty_after": git_after["src_dirty"],
                "src_tree_after": git_after["src_tree"]},
        "plan": {"data": "demo", "image_size": IMAGE_SIZE, "space": SPACE, "seed": args.seed,
                 "max_trials": args.max_trials, "max_epochs": args.max_epochs, "workers": 1,
                 "max_params": args.max_params, "order": list(runs)},
        "command": f"tune search {' '.join(common)} [--max-params {args.max_params}]",
        "prepare_s": round(prepare_s, 1),
        "budget_check": check,
        "ratio_budgeted_over_unbudgeted": ratios,
        "runs": runs,
    }
    path = write_result("budget", payload)
    for name, r in runs.items():
        print(f"{name:>10}: test accuracy {r['test_accuracy']:.4f}  params {r['params']:>8,}  search "
              f"{r['search_s']:6.1f} s  export {r['export_s']:5.1f} s  load {r['load_before'][0]} -> {r['load_after'][0]}")
    print(f"budgeted / unbudgeted: search time {ratios['search_s']}x, export time {ratios['export_s']}x, params "
          f"{ratios['params']}x, test accuracy {ratios['test_accuracy']}x")
    print(f"wrote {path}")
    if not check["passed"]:
        sys.exit(1)
    return payload


if __name__ == "__main__":
    main()

"""Trials per hour of one search with 1 and 2 worker processes on this machine.

    python -m benchmarks.distributed [--repeats 2] [--max-trials 10] [--max-epochs 4]

The same tiny plan (two classes of generated 32 px images, the small space, seed 3)
runs under ``start_search`` with ``--workers N`` (what ``tune search --workers N`` does) with 1 worker of
all the cores' threads and with 2 workers splitting them (TensorFlow intra- and
inter-op threads and OpenMP threads, per worker), alternating, each ``--repeats``
times; the best run of each counts (other jobs share the machine). Trials per hour
are measured from the launch (process start-up included) to the end, and over the
trial phase only (first trial handed out to last trial ended). Writes
``benchmarks/results/distributed.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from xtune.data._synthetic import make_image_folder

RESULT = Path(__file__).parent / "results" / "distributed.json"


def make_images(folder: Path, per_class: int = 48, size: int = 32, seed: int = 0) -> Path:
    """Two learnable classes of small PNGs (a bright band at the top or at the bottom)."""
    return make_image_folder(folder, per_class=per_class, size=size, seed=seed)


def machine() -> dict:
    cpu = platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}


def one_run(workdir: Path, images: Path, data_dir: Path, given: dict, workers: int, threads: int, tag: str) -> dict:
    from xtune._events import TrialEnded, TrialStarted
    from xtune.search import SearchRequest, start_search

    marks = {"first_start": None, "last_end": None, "ended": 0}

    def progress(event):
        now = time.monotonic()
        if isinstance(event, TrialStarted) and marks["first_start"] is None:
            marks["first_start"] = now
        if isinstance(event, TrialEnded):
            marks["last_end"], marks["ended"] = now, marks["ended"] + 1

    load = os.getloadavg()[0]
    start = time.monotonic()
    request = SearchRequest(str(workdir / tag), given, "small", str(data_dir), workers=workers)
    env = {name: str(threads) for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the launcher passes its own split to workers; this sets the 1-worker case
    try:
        outcome = start_search(request, progress)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    wall = time.monotonic() - start
    trial_phase = marks["last_end"] - marks["first_start"]
    return {"workers": workers, "threads_per_worker": threads, "status": outcome.status,
            "trials": marks["ended"], "wall_s": round(wall, 1), "trial_phase_s": round(trial_phase, 1),
            "trials_per_hour": round(marks["ended"] / wall * 3600),
            "trials_per_hour_trial_phase": round(marks["ended"] / trial_phase * 3600),
            "load_average_before": round(load, 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--max-epochs", type=int, default=4)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from xtune.data import prepare_data

    cores = os.cpu_count() or 1
    given = {"data": None, "image_size": 32, "batch_size": 8, "max_trials": args.max_trials,
             "max_epochs": args.max_epochs, "factor": 3, "seed": 3}
    runs = []
    with tempfile.TemporaryDirectory(prefix="xtune-bench-dist-") as tmp:
        tmp = Path(tmp)
        images = make_images(tmp / "images")
        given["data"] = str(images)
        prepare_data(str(images), data_dir=tmp / "data")  # outside the timings
        for r in range(args.repeats):
            for workers in (1, 2):
                threads = max(1, cores // workers)
                run = one_run(tmp, images, tmp / "data", given, workers, threads, f"r{r}-w{workers}")
                print(json.dumps(run), flush=True)
                runs.append(run)
    best = {w: max((r for r in runs if r["workers"] == w), key=lambda r: r["trials_per_hour"]) for w in (1, 2)}
    summary = {
        "plan": {"max_trials": args.max_trials, "max_epochs": args.max_epochs, "factor": 3, "image_size": 32,
                 "images": 96, "batch_size": 8, "space": "small", "seed": 3, "trials": best[1]["trials"]},
        "threads": {f"{w} worker(s)": f"{best[w]['threads_per_worker']} thread(s) each "
                                      "(TF_NUM_INTRAOP_THREADS = TF_NUM_INTEROP_THREADS = OMP_NUM_THREADS)"
                    for w in (1, 2)},
        "trials_per_hour": {str(w): best[w]["trials_per_hour"] for w in (1, 2)},
        "trials_per_hour_trial_phase": {str(w): best[w]["trials_per_hour_trial_phase"] for w in (1, 2)},
        "ratio_2_to_1": round(best[2]["trials_per_hour"] / best[1]["trials_per_hour"], 2),
        "ratio_2_to_1_trial_phase": round(best[2]["trials_per_hour_trial_phase"]
                                          / best[1]["trials_per_hour_trial_phase"], 2),
    }
    payload = {"benchmark": "distributed", "machine": machine(), **summary, "runs": runs}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(payload, indent=2) + "\n")
    for w in (1, 2):
        b = best[w]
        print(f"{w} worker(s) x {b['threads_per_worker']} thread(s): {b['trials_per_hour']} trials/hour "
              f"({b['trials']} trials in {b['wall_s']} s; trial phase alone: {b['trials_per_hour_trial_phase']}/hour)")
    print(f"2 workers / 1 worker: {summary['ratio_2_to_1']}x (trial phase alone: {summary['ratio_2_to_1_trial_phase']}x)")
    print(f"wrote {RESULT}")
    return payload


if __name__ == "__main__":
    main()

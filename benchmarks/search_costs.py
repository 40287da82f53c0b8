"""What the search costs beyond training: loop overhead, bookkeeping, memory, backups.

    python -m benchmarks.search_costs [--only loop,overhead,default,backups] [--trials 30] [--repeats 1]
                                      [--default-sizes 32,64]

On the demo digits (1,797 real images, 32 px), all in one run:

- loop: images/s of training inside ``tune search`` (per-epoch backups, best-epoch
  checkpoints, TensorBoard, progress) against a bare ``model.fit`` of the same model
  on the same cached tf.data pipeline, alternated; epochs after the first (which
  traces the graph) are compared. Goal: ratio >= 0.95.
- overhead: a 30-trial search; the share of its wall time outside training epochs,
  and where it goes (building, graph tracing, per-epoch saves, bookkeeping between
  trials, start-up). Goal: under 10 %. Memory: RSS after each trial; goal: the last
  trial's within 20 % of the fifth's.
- memory: the same 30-trial search through the `tune search` command, whose process
  restarts itself between trials once TensorFlow's memory has grown by
  XTUNE_RECYCLE_MB (default 256 MB); RSS after each trial read from the trial records,
  against the in-process run of "overhead" (no restarts). Goal: the last trial's RSS
  within 20 % of the fifth's.
- default: the same 30-trial search through the launcher, with the default command
  (on this machine two workers, one thread each) and with ``--workers 1`` (one search
  process, all the threads), alternated, ``--repeats`` times. The share of the
  launch-to-end wall time in which no process is inside a training epoch (the union of
  every process's epochs; a run's first epoch counts as long as its trial's later ones,
  the rest of it is graph tracing), and beside it the share of each process's time
  outside its epochs. Goal (issue #17): the first <= 25 % with the default command.
  ``--default-sizes 32,64`` runs this part at each image size (default: 32 px only);
  64 px trains about 3x longer per epoch while the fixed costs stay, so its share is lower.
- keras_memory: the baseline for "memory": RSS after each of 30 cycles of a bare
  Keras build + fit (2 epochs) + ``clear_session()`` + ``gc.collect()`` of the same
  space's models, no xtune search code: how much TensorFlow itself keeps per model.
- backups: the same small plan with and without per-epoch backups, alternated; the
  ratio of wall times is what mid-trial resume costs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import dump, median, rss_mb, write_result

IMAGE_SIZE = 32
PARTS = ("loop", "overhead", "default", "memory", "keras_memory", "backups")
BATCH = 32


def _splits(data_dir: Path):
    from xtune.data import load_splits, prepare_data

    prepared = prepare_data("demo", data_dir=data_dir)
    return prepared, load_splits(prepared, image_size=IMAGE_SIZE, batch_size=BATCH, seed=1)


class _Recorder:
    """Collects a search's progress events (with their timestamps) and RSS per trial."""

    def __init__(self):
        self.events = []
        self.rss = []

    def __call__(self, event):
        event = {**event.to_dict(), "time": time.monotonic()}
        self.events.append(event)
        if event["event"] == "trial_end":
            self.rss.append(round(rss_mb(), 1))


def _search(project: Path, splits, data_info, given: dict, space, **kwargs) -> tuple[_Recorder, float]:
    from xtune.search import run_search

    recorder = _Recorder()
    start = time.monotonic()
    run_search(project, {"data": "demo", "image_size": IMAGE_SIZE, "batch_size": BATCH, **given},
               space_ref=space, splits=splits, data_info=data_info, progress=recorder, **kwargs)
    return recorder, time.monotonic() - start


def _rss_growth(rss: list[float]) -> dict:
    """The memory goal's figures: the last and the highest RSS over the fifth's."""
    fifth = rss[4] if len(rss) >= 5 else rss[0]
    return {"rss_last_over_fifth": round(rss[-1] / fifth, 3), "rss_max_over_fifth": round(max(rss[4:] or rss) / fifth, 3),
            "rss_goal": "last within 20 % of the fifth"}


def _epoch_cycles(events) -> list[float]:
    """Wall time between consecutive epoch ends of a trial (epochs after its first)."""
    cycles, last = [], {}
    for e in events:
        if e["event"] == "epoch_end":
            if e["trial_id"] in last:
                cycles.append(e["time"] - last[e["trial_id"]])
            last[e["trial_id"]] = e["time"]
    return cycles


def training_loop(splits, data_info, work: Path, rounds: int = 3, epochs: int = 6) -> dict:
    """Images/s inside the search vs. a bare model.fit of the same model, alternated."""
    import keras

    from xtune.spaces import PRESETS, build_model, compile_model, narrow_space

    config = PRESETS["small"]
    # A space of this one architecture (two learning rates, so Hyperband has two
    # configurations to draw): one bracket of 2 trials x `epochs` with --factor 10.
    fixed = {k: v for k, v in config.to_dict().items() if k != "learning_rate"}
    space = narrow_space({**fixed, "learning_rate": [1e-3, 3e-3]}, name="one architecture")

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_epoch_end(self, epoch, logs=None):
            self.ends.append(time.monotonic())

    n = splits.sizes["train"]
    bare, inside, no_refresh = [], [], []
    for r in range(rounds):
        keras.backend.clear_session()
        keras.utils.set_random_seed(r)
        model = compile_model(build_model(config, (IMAGE_SIZE, IMAGE_SIZE, 3), len(splits.class_names)), config)
        clock = Clock()
        model.fit(splits.train(), steps_per_epoch=splits.steps_per_epoch, validation_data=splits.validation,
                  epochs=epochs, callbacks=[clock], verbose=0)
        bare += [n / (b - a) for a, b in zip(clock.ends, clock.ends[1:])]
        project = work / f"loop-{r}"
        recorder, _ = _search(project, splits, data_info, {"max_trials": 2, "max_epochs": epochs, "factor": 10},
                              space)
        inside += [n / c for c in _epoch_cycles(recorder.events)]
        shutil.rmtree(project, ignore_errors=True)
        # The same search without the batch-norm re-estimation before each validation:
        # what scoring the model as export ships it costs, apart from the rest of the loop.
        recorder, _ = _search(project, splits, data_info, {"max_trials": 2, "max_epochs": epochs, "factor": 10},
                              space, refresh_batch_norm=False)
        no_refresh += [n / c for c in _epoch_cycles(recorder.events)]
        shutil.rmtree(project, ignore_errors=True)
    return {
        "model": "preset small", "image_size": IMAGE_SIZE, "batch_size": BATCH, "train_images": n,
        "rounds": rounds, "epochs_per_fit": epochs,
        "bare_fit_images_per_s": round(median(bare), 1),
        "search_images_per_s": round(median(inside), 1),
        "ratio": round(median(inside) / median(bare), 3),
        "goal": ">= 0.95",
        "search_without_bn_refresh_images_per_s": round(median(no_refresh), 1),
        "ratio_without_bn_refresh": round(median(no_refresh) / median(bare), 3),
    }


def search_overhead(splits, data_info, work: Path, trials: int = 30) -> dict:
    """A `trials`-trial search: time outside training epochs, and RSS per trial."""
    project = work / "overhead"
    recorder, wall = _search(project, splits, data_info, {"max_trials": trials, "max_epochs": 4}, "small")
    events = recorder.events
    by_trial = {}
    for e in events:
        if "trial_id" in e:
            by_trial.setdefault(e["trial_id"], []).append(e)
    build = tracing = saves = after = 0.0
    training = 0.0
    for trial_events in by_trial.values():
        start = next(e for e in trial_events if e["event"] == "trial_start")
        end = next(e for e in trial_events if e["event"] == "trial_end")
        epochs = [e for e in trial_events if e["event"] == "epoch_end"]
        steady = median([e["seconds"] for e in epochs[1:]]) if len(epochs) > 1 else epochs[0]["seconds"]
        first_begin = epochs[0]["time"] - epochs[0]["seconds"]
        build += first_begin - start["time"]
        tracing += max(epochs[0]["seconds"] - steady, 0.0)
        training += sum(e["seconds"] for e in epochs) - max(epochs[0]["seconds"] - steady, 0.0)
        for a, b in itertools.pairwise(epochs):
            saves += (b["time"] - b["seconds"]) - a["time"]
        after += end["time"] - epochs[-1]["time"]
    starts = [e for e in events if e["event"] == "trial_start"]
    ends = [e for e in events if e["event"] == "trial_end"]
    between = sum(s["time"] - e["time"] for e, s in zip(ends, starts[1:]))
    search_start = next(e for e in events if e["event"] == "search_start")
    startup = starts[0]["time"] - search_start["time"]
    outside = wall - training
    parts = {"building and compiling models": build, "graph tracing (first epoch of each trial)": tracing,
             "saves between epochs (backup, checkpoint, TensorBoard)": saves,
             "end of trial (last saves, records, oracle)": after, "tuner bookkeeping between trials": between,
             "start-up (tuner, state)": startup}
    rss = recorder.rss
    shutil.rmtree(project, ignore_errors=True)
    return {
        "trials": len(ends), "image_size": IMAGE_SIZE, "space": "small", "wall_s": round(wall, 1),
        "training_epochs_s": round(training, 1),
        "overhead_share": round(outside / wall, 3),
        "overhead_s": {k: round(v, 1) for k, v in parts.items()},
        "unaccounted_s": round(outside - sum(parts.values()), 1),
        "goal": "< 0.10",
        "rss_mb_after_each_trial": rss,
        **_rss_growth(rss),
    }


def _training_intervals(epochs: list[tuple[str, str, float, float]]) -> dict[str, list[tuple[float, float]]]:
    """(process, trial, time received, seconds) of every epoch -> each process's training intervals.

    A trial run's first epoch also traces the graph: it counts as long as the run's later
    epochs (their median), at its end; a run of one epoch counts whole.
    """
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for process, trial, at, seconds in epochs:
        runs.setdefault((process, trial), []).append((at, seconds))
    out: dict[str, list[tuple[float, float]]] = {}
    for (process, _), run in runs.items():
        steady = median([sec for _, sec in run[1:]]) if len(run) > 1 else run[0][1]
        for k, (at, seconds) in enumerate(run):
            out.setdefault(process, []).append((at - (min(seconds, steady) if k == 0 else seconds), at))
    return out


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def default_command(data_dir: Path, work: Path, trials: int = 30, repeats: int = 1,
                    image_size: int = IMAGE_SIZE) -> dict:
    """The share of wall time with no training epoch running: default command vs one process."""
    from xtune._events import EpochEnded, TrialEnded
    from xtune.search import SearchRequest, _launch, start_search

    received: list[tuple[str, str, float, float]] = []
    ended: list = []
    original = _launch._Launch._on_event

    def spy(self, child, event):  # every process's own epochs (the chief's view has no durations)
        if isinstance(event, EpochEnded) and event.seconds is not None and event.trial_id is not None:
            received.append((child.name, event.trial_id, time.monotonic(), event.seconds))
        return original(self, child, event)

    given = {"data": "demo", "image_size": image_size, "batch_size": BATCH, "max_trials": trials, "max_epochs": 4}
    runs = []
    _launch._Launch._on_event = spy
    try:
        for r in range(repeats):
            for workers in (None, 1):
                received.clear()
                ended.clear()
                project = work / f"default-{image_size}-{r}-{workers}"
                start = time.monotonic()
                start_search(SearchRequest(str(project), given, "small", str(data_dir), workers=workers),
                             lambda e: ended.append(e) if isinstance(e, TrialEnded) else None)
                wall = time.monotonic() - start
                by_process = _training_intervals(received)
                union = _union_seconds([i for spans in by_process.values() for i in spans])
                per_process = sum(_union_seconds(spans) for spans in by_process.values())
                runs.append({"command": "default" if workers is None else "--workers 1",
                             "processes_training": len(by_process), "trials": len(ended), "wall_s": round(wall, 1),
                             "training_union_s": round(union, 1),
                             "outside_training_share": round(1 - union / wall, 3),
                             "per_process_outside_training_share": round(1 - per_process / (len(by_process) * wall), 3),
                             "trials_per_hour": round(len(ended) / wall * 3600)})
                print(runs[-1], flush=True)
                shutil.rmtree(project, ignore_errors=True)
    finally:
        _launch._Launch._on_event = original
    best = {c: min((r for r in runs if r["command"] == c), key=lambda r: r["outside_training_share"])
            for c in ("default", "--workers 1")}
    return {"trials": trials, "image_size": image_size, "space": "small", "repeats": repeats, "runs": runs,
            "outside_training_share": {c: b["outside_training_share"] for c, b in best.items()},
            "trials_per_hour_ratio": round(best["default"]["trials_per_hour"] / best["--workers 1"]["trials_per_hour"], 2),
            "goal": "default <= 0.25"}


def supervised_memory(data_dir: Path, work: Path, trials: int = 30) -> dict:
    """RSS per trial of `tune search` (supervised: restarts itself when memory grows)."""
    import subprocess
    import sys

    from xtune.search import load_project

    project = work / "memory"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "xtune", "search", "--data", "demo", "--data-dir", str(data_dir),
                           "--project", str(project), "--image-size", str(IMAGE_SIZE), "--batch-size", str(BATCH),
                           "--space", "small", "--max-trials", str(trials), "--max-epochs", "4", "--quiet"],
                          capture_output=True, text=True)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"tune search failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    records = [t.record.to_dict() for t in load_project(project).trials]
    ended = sorted((r for r in records if r.get("rss_mb_after")), key=lambda r: r["trial_id"])
    rss = [r["rss_mb_after"] for r in ended]
    shutil.rmtree(project, ignore_errors=True)
    return {
        "trials": len(rss), "wall_s": round(wall, 1),
        "restarts": done.stdout.count("Continuing in a fresh process"),
        "recycle_mb": float(os.environ.get("XTUNE_RECYCLE_MB", 256)),
        "rss_mb_after_each_trial": rss, **_rss_growth(rss),
    }


def keras_memory(splits, cycles: int = 30) -> dict:
    """RSS after each bare build + fit + clear_session + gc of the small space's models."""
    import gc

    import keras
    import keras_tuner

    from xtune.spaces import MiniXceptionHyperModel, load_space, sample_config

    space = load_space("small")
    hypermodel = MiniXceptionHyperModel((IMAGE_SIZE, IMAGE_SIZE, 3), len(splits.class_names), space)
    rss = []
    for i in range(cycles):
        keras.backend.clear_session()
        gc.collect()
        hp = keras_tuner.HyperParameters()
        if i:  # a random member, as a search draws them (the first: the space's default)
            sample_config(hp, space)  # registers the space, as the search does, without building a model
            for p in hp.space:
                hp.values[p.name] = p.random_sample(i)
        model = hypermodel.build(hp)
        model.fit(splits.train(), steps_per_epoch=splits.steps_per_epoch, validation_data=splits.validation,
                  epochs=2, verbose=0)
        del model
        gc.collect()
        rss.append(round(rss_mb(), 1))
    return {"cycles": cycles, "epochs_each": 2, "rss_mb_after_each_cycle": rss, **_rss_growth(rss)}


def backup_cost(splits, data_info, work: Path, rounds: int = 2) -> dict:
    """Wall time of the same plan with and without per-epoch backups, alternated."""
    with_b, without = [], []
    for r in range(rounds):
        for backups, sink in ((True, with_b), (False, without)):
            project = work / f"backups-{backups}-{r}"
            _, wall = _search(project, splits, data_info, {"max_trials": 10, "max_epochs": 4}, "small",
                              epoch_backups=backups)
            sink.append(wall)
            shutil.rmtree(project, ignore_errors=True)
    return {
        "plan": "10 trials, max 4 epochs, space small, 32 px", "rounds": rounds,
        "with_backups_s": [round(v, 1) for v in with_b], "without_backups_s": [round(v, 1) for v in without],
        "ratio": round(statistics.mean(with_b) / statistics.mean(without), 3),
    }


_MACHINE_KEYS = ("cpu", "cores", "memory_gb", "gpus", "versions", "date")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS))
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each command in part 'default'")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--default-sizes", default=str(IMAGE_SIZE), help="image sizes of part 'default' (32,64)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="xtune-bench-"))
    data_dir = args.data_dir or work / "data"
    prepared, splits = _splits(data_dir)
    data_info = prepared.to_dict()
    wanted = set(args.only.split(","))
    result = {}
    try:
        if "loop" in wanted:
            result["training_loop"] = training_loop(splits, data_info, work)
        if "overhead" in wanted:
            result["search_overhead"] = search_overhead(splits, data_info, work, args.trials)
        if "default" in wanted:
            for size in (int(x) for x in args.default_sizes.split(",")):
                key = "default_command" if size == IMAGE_SIZE else f"default_command_{size}px"
                result[key] = default_command(data_dir, work, args.trials, args.repeats, size)
        if "memory" in wanted:
            result["supervised_memory"] = supervised_memory(data_dir, work, args.trials)
        if "keras_memory" in wanted:
            result["keras_memory"] = keras_memory(splits, args.trials)
        if "backups" in wanted:
            result["epoch_backups"] = backup_cost(splits, data_info, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from benchmarks._common import machine

    here = machine()
    for part in result.values():  # each part says where it ran: a partial run keeps older parts
        part["measured_on"] = {k: here.get(k) for k in _MACHINE_KEYS}
    if wanted != set(PARTS):  # a partial run keeps the other parts' figures
        import json

        previous = Path(__file__).parent / "results" / "search_costs.json"
        if previous.exists():
            kept = json.loads(previous.read_text())
            before = {k: (kept.get("machine") or {}).get(k) for k in _MACHINE_KEYS}
            kept = {k: {"measured_on": before, **v} for k, v in kept.items() if k not in ("benchmark", "machine")}
            result = {**kept, **result}
    write_result("search_costs", result)
    dump(result)
    return result


if __name__ == "__main__":
    main()

"""Small-data quality: xtune's search + export against the book's model and AutoKeras.

    python -m benchmarks quality                       # everything (long: hours on 2 cores)
    python -m benchmarks.quality --tools xtune,seed    # re-run xtune's side only (new code)
    python -m benchmarks.quality --sets sub120,sub300 --seeds 1 --tools autokeras
    python -m benchmarks.quality --quick               # the harness end to end in minutes
    python -m benchmarks.quality --setup-autokeras     # build the AutoKeras venv (then run)

Data (built once under the work folder, the same for every seed and tool):

- ``demo``: the demo digits (1,797 images, 10 classes, 8x8 upscaled to 32x32 PNG) in
  the split ``tune data prepare demo`` makes (train 1,259 / validation 269 / test 269);
- ``sub120``, ``sub300``: a stratified subsample of exactly 120 and 300 of those
  *training* images (12 and 30 per class, drawn once with a fixed generator), with the
  same validation and test images as ``demo``.

Each set is written as an xtune pre-split folder (``train/ validation/ test/
<class>/*.png``), so ``tune search --data SET`` uses exactly these splits, and as
numpy arrays (32x32x3 uint8, decoded with PIL, resized bilinear when not already 32 px)
for AutoKeras.

Tools, each set x seed, each in its own process, timed in wall-clock seconds:

- ``xtune``: ``tune search --data SET --image-size 32 --max-trials 30 --max-epochs 20
  --seed S --quiet`` then ``tune export --format json`` (test accuracy from the model
  card; the search's best validation score and every trial's score from ``tune results
  --format json``; a trial "at chance" scored exactly 1/classes, within 1e-9);
- ``seed``: the book's model, ``tune export --preset seed --epochs E`` in the same
  project (same data and settings; E = the searched export's epochs);
- ``autokeras``: ``ak.ImageClassifier(max_trials=10, seed=S)`` with ``fit(x_train,
  y_train, validation_data=(x_val, y_val), epochs=5)`` (AutoKeras then retrains the best
  for 5 epochs), evaluated on test, in the venv that ``benchmarks/autokeras_env.sh``
  builds (skipped with a line if it is missing). See ``benchmarks/_autokeras_run.py``.

Results merge into ``benchmarks/results/quality.json``: one entry per set x seed x tool,
replaced when that part is run again, each with when it ran, the git commit of the
checkout, the load average before and after, and its budget, so a re-run of one tool
keeps the others and "same run" can be checked. ``--quick`` writes elsewhere (the work
folder), never into the results.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
DEFAULT_WORK = HERE / ".quality-work"  # git-ignored (benchmarks/.gitignore)
DEFAULT_AK_VENV = Path(os.environ.get("XTUNE_AUTOKERAS_VENV", "/work/venvs/autokeras"))
SETS = {"demo": None, "sub120": 120, "sub300": 300}
TOOLS = ("xtune", "seed", "autokeras")
SUBSAMPLE_SEED = 20240  # the one draw of the subsamples; never change it (the sets would change)
IMAGE_SIZE = 32
FULL = {"max_trials": 30, "max_epochs": 20, "ak_trials": 10, "ak_epochs": 5}
QUICK = {"max_trials": 3, "max_epochs": 2, "ak_trials": 2, "ak_epochs": 1}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def git_commit() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "src_tree": git("rev-parse", "HEAD:src"),
            "src_dirty": bool(git("status", "--porcelain", "--", "src"))}


_TREES: dict[str, str] = {}


def src_tree(entry: dict) -> str:
    """The git tree of src/ an entry ran (what "same code" means; harness-only commits share it)."""
    if entry.get("src_tree"):
        return entry["src_tree"][:10]
    commit = entry.get("commit", "")
    if commit not in _TREES:
        out = subprocess.run(["git", "rev-parse", f"{commit}:src"], cwd=ROOT, capture_output=True, text=True)
        _TREES[commit] = out.stdout.strip() or commit
    return _TREES[commit][:10]


# ---------------------------------------------------------------- the data

def _xtune_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _tune(*args: str, capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xtune", *args], cwd=ROOT, env=_xtune_env(),
                          capture_output=capture, text=True)


def _prepared_demo(work: Path) -> Path:
    data_dir = work / "data"
    done = sorted(p.parent for p in (data_dir / "prepared").glob("demo-digits-*/prepared.json"))
    if not done:
        proc = _tune("data", "prepare", "demo", "--data-dir", str(data_dir))
        if proc.returncode:
            raise SystemExit(f"tune data prepare demo failed:\n{proc.stdout}\n{proc.stderr}")
        done = sorted(p.parent for p in (data_dir / "prepared").glob("demo-digits-*/prepared.json"))
    return done[0]


def _images(folder: Path) -> dict[str, list[Path]]:
    return {c.name: sorted(p for p in c.iterdir() if p.is_file() and not p.name.startswith("."))
            for c in sorted(folder.iterdir(), key=lambda p: (len(p.name), p.name)) if c.is_dir()}


def _stratified(by_class: dict[str, list[Path]], n: int) -> dict[str, list[Path]]:
    """Exactly ``n`` files, each class's share proportional to its size (largest remainders)."""
    import numpy as np

    total = sum(len(v) for v in by_class.values())
    exact = {c: n * len(v) / total for c, v in by_class.items()}
    counts = {c: int(e) for c, e in exact.items()}
    for c in sorted(exact, key=lambda c: (counts[c] - exact[c], c))[: n - sum(counts.values())]:
        counts[c] += 1
    rng = np.random.default_rng(SUBSAMPLE_SEED)
    out = {}
    for c, files in by_class.items():  # fixed class order, so the draw is reproducible
        pick = sorted(rng.permutation(len(files))[: counts[c]])
        out[c] = [files[i] for i in pick]
    return out


def _to_array(paths: list[Path]):
    import numpy as np
    from PIL import Image

    out = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            out[i] = np.asarray(image)
    return out


def build_sets(work: Path, names) -> dict[str, dict]:
    """Write each set (pre-split PNG folder + arrays.npz) once; return their descriptions."""
    import hashlib

    import numpy as np

    prepared = _prepared_demo(work)
    splits = {s: _images(prepared / s) for s in ("train", "validation", "test")}
    info = {}
    for name in names:
        folder = work / "sets" / name
        manifest = folder / "set.json"
        if not manifest.exists():
            chosen = dict(splits)
            if SETS[name] is not None:
                chosen["train"] = _stratified(splits["train"], SETS[name])
            tmp = folder.with_name(f".tmp-{name}")
            shutil.rmtree(tmp, ignore_errors=True)
            arrays, files = {}, {}
            classes = list(splits["train"])
            for split, by_class in chosen.items():
                paths, labels = [], []
                for label, c in enumerate(classes):
                    (tmp / split / c).mkdir(parents=True)
                    for path in by_class[c]:
                        shutil.copy2(path, tmp / split / c / path.name)
                        paths.append(path)
                        labels.append(label)
                key = {"train": "train", "validation": "val", "test": "test"}[split]
                arrays[f"x_{key}"] = _to_array(paths)
                arrays[f"y_{key}"] = np.asarray(labels, np.int64)
                files[split] = [f"{c}/{p.name}" for c in classes for p in by_class[c]]
            np.savez_compressed(tmp / "arrays.npz", **arrays)
            digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
            desc = {"name": name, "classes": classes,
                    "images": {s: len(v) for s, v in files.items()},
                    "per_class_train": {c: len(chosen["train"][c]) for c in classes},
                    "per_class_validation": {c: len(chosen["validation"][c]) for c in classes},
                    "per_class_test": {c: len(chosen["test"][c]) for c in classes},
                    "files_sha256": digest, "source": f"tune data prepare demo ({prepared.name})",
                    "subsample": None if SETS[name] is None else
                    f"stratified {SETS[name]} of the demo's training split, numpy default_rng({SUBSAMPLE_SEED})"}
            (tmp / "set.json").write_text(json.dumps(desc, indent=2))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        info[name] = json.loads(manifest.read_text())
    return info


# ---------------------------------------------------------------- the runs

def _json_out(proc: subprocess.CompletedProcess, what: str) -> dict:
    if proc.returncode:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    return json.loads(proc.stdout)


def _architecture(v: dict) -> str:
    """A short form of a trial's hyperparameters (close to the one `tune search` prints)."""
    if not v:
        return ""
    bn = f"bn{v.get('bn_momentum')}" if v.get("batch_norm") else "nobn"
    return (f"{v.get('num_stages')}x{v.get('base_width')}*{v.get('width_growth')} {str(v.get('conv_type'))[:3]} "
            f"{'res' if v.get('residual') else 'nores'} {bn} c{v.get('convs_per_stage')}k{v.get('kernel_size')} "
            f"stem{v.get('stem_filters')}/{v.get('stem_kernel')} drop{v.get('dropout')} "
            f"{v.get('flip')}/{v.get('rotation')}/{v.get('zoom')} {v.get('optimizer')}@{v.get('learning_rate')}")


def _trial_rows(results: dict, info: dict) -> list[dict]:
    """Every trial of ``tune results --format json``, with two "chance" flags.

    ``at_chance``: the score is exactly 1/classes (within 1e-9), the issue's definition.
    ``one_class``: the score is what predicting a single class gives on this validation
    split (that class's share, within 1e-6: scores are float32). The validation split has
    269 images (26-28 per class), so no score can be exactly 1/10; a model that collapsed
    to one class scores 26/269, 27/269 or 28/269.
    """
    val = info["images"]["validation"]
    shares = sorted({n / val for n in info.get("per_class_validation", {}).values()})
    classes = len(info["classes"])
    rows = []
    for r in results["trials"]:
        score = r.get("score")
        rows.append({"trial": r.get("trial_id"), "status": r.get("status"), "score": score,
                     "bracket": r.get("bracket"), "round": r.get("round"), "initial_epoch": r.get("initial_epoch"),
                     "epochs": r.get("epochs"), "best_epoch": r.get("best_epoch"), "params": r.get("params"),
                     "seconds": None if r.get("seconds") is None else round(r["seconds"], 1),
                     "architecture": _architecture(r.get("values") or {}),
                     "at_chance": score is not None and abs(float(score) - 1.0 / classes) <= 1e-9,
                     "one_class": score is not None and any(abs(float(score) - s) <= 1e-6 for s in shares),
                     "reason": r.get("reason")})
    return rows


def run_xtune(set_dir: Path, info: dict, seed: int, budget: dict, work: Path) -> dict:
    project = work / "projects" / f"{info['name']}-s{seed}"
    data_dir = work / "data"
    start = time.monotonic()
    proc = _tune("search", "--data", str(set_dir), "--project", str(project), "--data-dir", str(data_dir),
                 "--image-size", str(IMAGE_SIZE), "--max-trials", str(budget["max_trials"]),
                 "--max-epochs", str(budget["max_epochs"]), "--seed", str(seed), "--quiet", "--overwrite")
    search_s = time.monotonic() - start
    if proc.returncode:
        raise RuntimeError(f"tune search failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    start = time.monotonic()
    card = _json_out(_tune("export", "--project", str(project), "--data-dir", str(data_dir), "--format", "json",
                           "--overwrite", "--quiet"), "tune export")
    export_s = time.monotonic() - start
    results = _json_out(_tune("results", "--project", str(project), "--format", "json"), "tune results")
    trials = _trial_rows(results, info)
    scores = [t["score"] for t in trials if t["status"] == "COMPLETED" and t["score"] is not None]
    best_val = max(scores) if scores else None
    test = card["test"]["accuracy"]
    return {
        "test_accuracy": round(test, 4), "wall_s": round(search_s + export_s, 1),
        "search_s": round(search_s, 1), "export_s": round(export_s, 1),
        "best_val_accuracy": best_val, "gap_val_minus_test": None if best_val is None else round(best_val - test, 4),
        "exported_trial": card["model"].get("trial_id"), "epochs": card["training"]["epochs"],
        "params": card["model"].get("params"), "config": card["model"].get("config"),
        "export_card_extra": {k: card[k] for k in ("export", "source", "selection", "checkpoint") if k in card},
        "trials_total": len(trials), "trials_completed": len(scores),
        "trials_failed": sum(t["status"] == "FAILED" for t in trials),
        "trials_at_chance": sum(t["at_chance"] for t in trials),
        "trials_one_class": sum(t["one_class"] for t in trials),
        "ties_at_best": sum(s == best_val for s in scores) if scores else 0,
        "trials": trials, "project": str(project.relative_to(work)),
    }


def run_seed(info: dict, seed: int, work: Path, xtune_entry: dict | None) -> dict:
    project = work / "projects" / f"{info['name']}-s{seed}"
    searched_card = project / "export" / "model_card.json"
    if not searched_card.exists():
        raise RuntimeError(f"no searched export in {project}: run --tools xtune for this set and seed first")
    epochs = json.loads(searched_card.read_text())["training"]["epochs"]
    start = time.monotonic()
    card = _json_out(_tune("export", "--project", str(project), "--data-dir", str(work / "data"), "--preset", "seed",
                           "--epochs", str(epochs), "--format", "json", "--overwrite", "--quiet"),
                     "tune export --preset seed")
    wall = time.monotonic() - start
    return {"test_accuracy": round(card["test"]["accuracy"], 4), "wall_s": round(wall, 1), "epochs": epochs,
            "params": card["model"].get("params"),
            "paired_xtune_ran_at": (xtune_entry or {}).get("ran_at"), "project": str(project.relative_to(work))}


def run_autokeras(set_dir: Path, seed: int, budget: dict, work: Path, venv: Path) -> dict:
    out = work / "autokeras" / f"{set_dir.name}-s{seed}.json"
    scratch = work / "autokeras" / f"{set_dir.name}-s{seed}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    shutil.rmtree(scratch, ignore_errors=True)
    start = time.monotonic()
    proc = subprocess.run([str(venv / "bin" / "python"), str(HERE / "_autokeras_run.py"),
                           "--npz", str(set_dir / "arrays.npz"), "--seed", str(seed),
                           "--max-trials", str(budget["ak_trials"]), "--epochs", str(budget["ak_epochs"]),
                           "--directory", str(scratch), "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.monotonic() - start
    if not out.exists():
        raise RuntimeError(f"AutoKeras run wrote nothing (exit {proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(out.read_text())
    (scratch.parent / f"{set_dir.name}-s{seed}.log").write_text(proc.stdout + proc.stderr)
    shutil.rmtree(scratch, ignore_errors=True)  # models of 10 trials: not worth keeping
    if result.get("error"):
        raise RuntimeError(f"AutoKeras run failed: {result['error']}\n{result.get('traceback', '')[-1500:]}")
    test = result.get("test_accuracy")
    best_val = result.get("best_val_accuracy")
    return {"test_accuracy": None if test is None else round(test, 4), "wall_s": round(wall, 1),
            "best_val_accuracy": best_val,
            "gap_val_minus_test": None if test is None or best_val is None else round(best_val - test, 4),
            **{k: v for k, v in result.items() if k not in ("test_accuracy", "best_val_accuracy")}}


# ---------------------------------------------------------------- results

def _stats(values) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": round(statistics.mean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def _one_class_shares(info: dict | None) -> list[float]:
    if not info or "per_class_validation" not in info:
        return []
    return sorted({n / info["images"]["validation"] for n in info["per_class_validation"].values()})


def summarize(entries: list[dict], budget: dict, sets: dict | None = None) -> dict:
    """Per set: mean and sd of test accuracy and wall time per tool, gaps, chance trials, failures."""
    sets = sets or {}
    summary = {}
    for name in SETS:
        mine = [e for e in entries if e["set"] == name and e.get("budget") == budget]
        if not mine:
            continue
        per = {}
        for tool in TOOLS:
            runs = sorted((e for e in mine if e["tool"] == tool), key=lambda e: e["seed"])
            if not runs:
                continue
            per[tool] = {"seeds": [e["seed"] for e in runs],
                         "test_accuracy": _stats([e["result"].get("test_accuracy") for e in runs]),
                         "wall_s": _stats([e["result"].get("wall_s") for e in runs]),
                         "commits": sorted({e["commit"][:10] for e in runs}),
                         "src_trees": sorted({src_tree(e) for e in runs}),
                         "ran": [min(e["ran_at"] for e in runs), max(e["ran_at"] for e in runs)]}
            if tool in ("xtune", "autokeras"):
                per[tool]["gap_val_minus_test"] = _stats([e["result"].get("gap_val_minus_test") for e in runs])
            if tool == "xtune":
                per[tool]["trials_at_chance"] = {e["seed"]: e["result"]["trials_at_chance"] for e in runs}
                per[tool]["trials_one_class"] = {e["seed"]: e["result"]["trials_one_class"] for e in runs}
                per[tool]["trials"] = {e["seed"]: e["result"]["trials_total"] for e in runs}
                per[tool]["ties_at_best"] = {e["seed"]: e["result"]["ties_at_best"] for e in runs}
            if tool == "autokeras":
                per[tool]["failed_trials"] = {e["seed"]: e["result"].get("failed_trials") for e in runs}
                per[tool]["failed_weights_download"] = {e["seed"]: e["result"].get("failed_weights_download")
                                                        for e in runs}
                shares = _one_class_shares(sets.get(name))
                per[tool]["trials_one_class"] = {  # val_accuracy = one class's share, as for xtune
                    e["seed"]: sum(any(abs(t["val_accuracy"] - sh) <= 1e-6 for sh in shares)
                                   for t in e["result"].get("trials", []) if t.get("val_accuracy") is not None)
                    for e in runs}
        xt = {e["seed"]: e["result"]["test_accuracy"] for e in mine if e["tool"] == "xtune"}
        book = {e["seed"]: e["result"]["test_accuracy"] for e in mine if e["tool"] == "seed"}
        both = sorted(set(xt) & set(book))
        if both:
            per["xtune_ge_book"] = {s: xt[s] >= book[s] for s in both}
        summary[name] = per
    return summary


def table_rows(summary: dict, budget: dict) -> list[dict]:
    rows = []

    def acc(s):
        return f"{s['mean']:.3f} ± {s['sd']:.3f}" if s else "-"

    def secs(s):
        return f"{s['mean']:.0f} ± {s['sd']:.0f} s" if s else "-"

    for name, per in summary.items():
        label = {"demo": "demo digits (1,259 train)", "sub120": "120 training digits",
                 "sub300": "300 training digits"}[name]
        x, b, a = per.get("xtune"), per.get("seed"), per.get("autokeras")
        if x and b:
            ge = per.get("xtune_ge_book", {})
            rows.append({"what": f"quality, {label} (val/test 269 each, 32 px, seeds {','.join(map(str, x['seeds']))}): "
                                 f"test accuracy, xtune search ({budget['max_trials']} trials, max "
                                 f"{budget['max_epochs']} ep) + export vs the book's model, same epochs",
                         "figure": acc(x["test_accuracy"]), "baseline": acc(b["test_accuracy"]),
                         "ratio": f"{x['test_accuracy']['mean'] / b['test_accuracy']['mean']:.3f} "
                                  f"(>= on {sum(ge.values())}/{len(ge)} seeds)",
                         "goal": ">= on every seed"})
        commits = {t: v["src_trees"] for t, v in (("xtune", x), ("book", b)) if v}
        if len({c for v in commits.values() for c in v}) > 1:  # not one run: say which code each side ran
            rows.append({"what": f"quality, {label}: xtune's figures come from different versions of src/ "
                                 "(git tree)",
                         "figure": "; ".join(f"{t} at {', '.join(v)}" for t, v in commits.items()),
                         "baseline": "-", "ratio": "-", "goal": "-"})
        if x and a and a.get("test_accuracy"):
            fails = sum(v or 0 for v in a["failed_trials"].values())
            ntr = budget["ak_trials"] * len(a["seeds"])
            rows.append({"what": f"quality, {label}: xtune (search + export) vs AutoKeras ImageClassifier "
                                 f"({budget['ak_trials']} trials x {budget['ak_epochs']} ep; {fails}/{ntr} trials "
                                 "failed): test accuracy, wall time",
                         "figure": f"{acc(x['test_accuracy'])}, {secs(x['wall_s'])}",
                         "baseline": f"{acc(a['test_accuracy'])}, {secs(a['wall_s'])}",
                         "ratio": f"acc {x['test_accuracy']['mean'] / a['test_accuracy']['mean']:.3f}, "
                                  f"time {x['wall_s']['mean'] / a['wall_s']['mean']:.2f}",
                         "goal": "acc >= 1, time <= 1" if name != "demo" else "-"})
        if x:
            chance = sum(x["trials_at_chance"].values())
            one = sum(x["trials_one_class"].values())
            total = sum(x["trials"].values())
            gap = x.get("gap_val_minus_test")
            rows.append({"what": f"quality, {label}: xtune search trials scoring exactly 1/10 / a one-class score "
                                 "(one class's share of the 269 validation images); search's best val accuracy "
                                 "- exported test accuracy",
                         "figure": f"{chance}/{total} / {one}/{total} trials",
                         "baseline": (f"AutoKeras: {sum(a['trials_one_class'].values())}/"
                                      f"{budget['ak_trials'] * len(a['seeds'])} at a one-class score")
                                     if a and "trials_one_class" in a else "-",
                         "ratio": f"gap {gap['mean']:+.3f} ± {gap['sd']:.3f}" if gap else "-",
                         "goal": "fewer at chance"})
    return rows


def merge_and_write(path: Path, new_entries: list[dict], sets_info: dict, budget: dict, machine: dict) -> dict:
    """Merge entries into the results file, under a lock (two runs, e.g. one per set, may share it)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _merge_and_write(path, new_entries, sets_info, budget, machine)


def _merge_and_write(path: Path, new_entries: list[dict], sets_info: dict, budget: dict, machine: dict) -> dict:
    from xtune import _atomic

    old = json.loads(path.read_text()) if path.exists() else {}
    if "entries" not in old:  # the earlier format (in-process, 10 trials x 5 epochs): in git history
        old = {}
    entries = [e for e in old.get("entries", [])
               if not any((e["set"], e["seed"], e["tool"]) == (n["set"], n["seed"], n["tool"]) and
                          e.get("budget") == n.get("budget") for n in new_entries)]
    entries = sorted(entries + new_entries, key=lambda e: (list(SETS).index(e["set"]), TOOLS.index(e["tool"]), e["seed"]))
    all_sets = {**old.get("sets", {}), **sets_info}
    summary = summarize(entries, budget, all_sets)
    ak = next((e["result"]["versions"]["autokeras"] for e in entries if e["result"].get("versions")), None)
    if ak:  # the README's machine line lists it with the project's libraries
        machine = {**machine, "versions": {**machine.get("versions", {}), "autokeras (benchmark venv)": ak}}
    payload = {"benchmark": "quality", "machine": machine,
               "description": "xtune search + export vs the book's model (tune export --preset seed) and AutoKeras "
                              "ImageClassifier, on the demo digits and stratified 120/300-image training subsets "
                              "with fixed validation/test splits, 32 px",
               "budget": budget, "sets": all_sets,
               "summary": summary, "table": table_rows(summary, budget), "entries": entries}
    _atomic.write_json(path, payload)
    return payload


def setup_autokeras(venv: Path) -> int:
    return subprocess.run(["bash", str(HERE / "autokeras_env.sh"), str(venv)]).returncode


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", default=",".join(TOOLS), help="xtune,seed,autokeras")
    parser.add_argument("--sets", default="sub120,sub300,demo", help="demo,sub120,sub300")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--quick", action="store_true",
                        help="tiny budget (1 seed, 3 trials x 2 epochs, AutoKeras 2 x 1) to check the harness; "
                             "results go to the work folder, not benchmarks/results")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="data, projects, AutoKeras scratch")
    parser.add_argument("--autokeras-venv", type=Path, default=DEFAULT_AK_VENV)
    parser.add_argument("--setup-autokeras", action="store_true", help="build the AutoKeras venv and exit")
    parser.add_argument("--summarize", action="store_true",
                        help="only recompute the summary and table of the results file (runs nothing)")
    parser.add_argument("--results", type=Path, default=None, help="the results file (default: results/quality.json)")
    args = parser.parse_args(argv)
    if args.setup_autokeras:
        sys.exit(setup_autokeras(args.autokeras_venv))
    if args.summarize:
        path = args.results or HERE / "results" / "quality.json"
        data = json.loads(path.read_text())
        payload = merge_and_write(path, [], data["sets"], data["budget"], data["machine"])
        print(json.dumps({"summary": payload["summary"], "table": payload["table"]}, indent=2))
        return payload
    tools = [t for t in args.tools.split(",") if t]
    names = [s for s in args.sets.split(",") if s]
    for t in tools:
        if t not in TOOLS:
            parser.error(f"unknown tool {t!r} (choose from {', '.join(TOOLS)})")
    for s in names:
        if s not in SETS:
            parser.error(f"unknown set {s!r} (choose from {', '.join(SETS)})")
    seeds = [int(s) for s in args.seeds.split(",")]
    budget = dict(QUICK if args.quick else FULL)
    work = args.work / "quick" if args.quick else args.work
    if args.quick and args.seeds == "1,2,3":
        seeds = [1]
    results_path = args.results or (work / "quality-quick.json" if args.quick else HERE / "results" / "quality.json")
    from benchmarks._common import machine as machine_info

    machine = machine_info()
    if "autokeras" in tools and not (args.autokeras_venv / "bin" / "python").exists():
        log(f"AutoKeras skipped: no venv at {args.autokeras_venv} (optional benchmark dependency; build it with "
            "`python -m benchmarks.quality --setup-autokeras` or `bash benchmarks/autokeras_env.sh`)")
        tools.remove("autokeras")
    log(f"load average at start: {machine['load_before']}; tools {tools}, sets {names}, seeds {seeds}, budget {budget}")
    sets_info = build_sets(work, names)
    git = git_commit()
    payload = {}
    xtune_done: dict = {}
    for name in names:
        set_dir = work / "sets" / name
        for seed in seeds:
            for tool in tools:
                before = loadavg()
                ran_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
                log(f"{name} seed {seed}: {tool} ...")
                try:
                    if tool == "xtune":
                        result = run_xtune(set_dir, sets_info[name], seed, budget, work)
                    elif tool == "seed":
                        result = run_seed(sets_info[name], seed, work, xtune_done.get((name, seed)))
                    else:
                        result = run_autokeras(set_dir, seed, budget, work, args.autokeras_venv)
                except RuntimeError as error:
                    log(f"{name} seed {seed}: {tool} FAILED: {error}")
                    result = {"error": str(error)[-3000:], "test_accuracy": None, "wall_s": None}
                entry = {"set": name, "seed": seed, "tool": tool, "budget": budget, "ran_at": ran_at, **git,
                         "load_before": before, "load_after": loadavg(), "result": result}
                if tool == "xtune":
                    xtune_done[(name, seed)] = entry
                extra = ""
                if tool == "xtune" and "trials_at_chance" in result:
                    extra = (f", best val {result['best_val_accuracy']}, {result['trials_at_chance']}/"
                             f"{result['trials_total']} trials at exactly 1/10, {result['trials_one_class']} "
                             "at a one-class score")
                if tool == "autokeras" and "failed_trials" in result:
                    extra = f", {result['failed_trials']}/{result['trials_run']} trials failed"
                log(f"{name} seed {seed}: {tool} test accuracy {result.get('test_accuracy')} in "
                    f"{result.get('wall_s')} s{extra} (load {before} -> {entry['load_after']})")
                machine["load_after"] = loadavg()
                payload = merge_and_write(results_path, [entry], sets_info, budget, machine)
    log(f"load average at end: {loadavg()}; wrote {results_path}")
    print(json.dumps({"summary": payload.get("summary"), "table": payload.get("table")}, indent=2))
    return payload


if __name__ == "__main__":
    main()

"""Does the search earn its keep? The searched model against the book's, same data and epochs.

    python -m benchmarks quality [--seeds 1,2,3] [--max-trials 10] [--max-epochs 5] [--space small]

On the demo digits (1,797 real images, 10 classes, 32 px; the only real dataset this
project can use offline), for each seed: `tune search` with the given budget, then
`tune export` (retrain the best from scratch, test it) and `tune export --preset seed`
(the book's model) for the same number of epochs on the same split. Reports test
accuracy (mean and spread over seeds), parameter counts, the search's compute as a
multiple of one full training, and wall times. The default budget, 10 trials of at
most 5 epochs, is the size of the AutoKeras 3.0 run DESIGN.md cites as the bar on small
data (10 trials, 5 epochs: 0.91-1.00 test accuracy in 4-7 minutes on this machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import dump, write_result


def one_seed(seed: int, args, work: Path, data_dir: Path) -> dict:
    from xtune.results import export_model
    from xtune.search import load_project, run_search

    project = work / f"seed-{seed}"
    start = time.monotonic()
    outcome = run_search(project, {"data": "demo", "image_size": args.image_size, "batch_size": 32,
                                   "max_trials": args.max_trials, "max_epochs": args.max_epochs, "seed": seed},
                         space_ref=args.space, data_dir=data_dir, tensorboard=False)
    search_s = time.monotonic() - start
    start = time.monotonic()
    best = export_model(project, data_dir=data_dir, overwrite=True).card
    export_s = time.monotonic() - start
    epochs = best["training"]["epochs"]
    start = time.monotonic()
    book = export_model(project, preset="seed", epochs=epochs, data_dir=data_dir, overwrite=True).card
    seed_s = time.monotonic() - start
    plan = load_project(project).plan
    return {
        "seed": seed, "trials": outcome.completed + outcome.failed, "failed": outcome.failed,
        "search_s": round(search_s, 1), "search_full_trainings": round(plan.full_trainings, 2),
        "searched": {"test_accuracy": round(best["test"]["accuracy"], 4), "params": best["model"]["params"],
                     "epochs": epochs, "trial": best["model"]["trial_id"], "export_s": round(export_s, 1),
                     "config": best["model"]["config"]},
        "book_seed_model": {"test_accuracy": round(book["test"]["accuracy"], 4), "params": book["model"]["params"],
                            "epochs": epochs, "export_s": round(seed_s, 1)},
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--space", default="small")
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="xtune-quality-"))
    runs = []
    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            runs.append(one_seed(seed, args, work, work / "data"))
            print(f"seed {seed}: {runs[-1]['searched']['test_accuracy']} vs {runs[-1]['book_seed_model']['test_accuracy']}",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def stats(values):
        return {"mean": round(statistics.mean(values), 4),
                "stdev": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values)}

    searched = stats([r["searched"]["test_accuracy"] for r in runs])
    book = stats([r["book_seed_model"]["test_accuracy"] for r in runs])
    search_s = statistics.mean(r["search_s"] for r in runs)
    to_model_s = statistics.mean(r["search_s"] + r["searched"]["export_s"] for r in runs)
    budget = f"{args.max_trials} trials, max {args.max_epochs} epochs, space {args.space}, {args.image_size} px"
    result = {
        "dataset": "demo digits (1,797 images, 10 classes)", "budget": budget, "runs": runs,
        "searched_test_accuracy": searched, "book_seed_test_accuracy": book,
        "mean_search_s": round(search_s, 1), "mean_search_plus_export_s": round(to_model_s, 1),
        "table": [
            {"what": f"search quality on demo digits ({budget}; {len(runs)} seeds): test accuracy of the searched "
                     "model vs the book's model, same split and epochs",
             "figure": f"{searched['mean']:.3f} ± {searched['stdev']:.3f}",
             "baseline": f"{book['mean']:.3f} ± {book['stdev']:.3f}",
             "ratio": f"{searched['mean'] / book['mean']:.3f}", "goal": "> 1"},
            {"what": "the same search: wall time to a tested model (search + export) vs the AutoKeras bar on small "
                     "data (DESIGN.md: 0.91-1.00 accuracy in 4-7 min)",
             "figure": f"{to_model_s / 60:.1f} min, accuracy {searched['mean']:.3f}",
             "baseline": "4-7 min, 0.91-1.00", "ratio": f"{to_model_s / 60 / 5.5:.2f} (vs 5.5 min)", "goal": "<= 1"},
        ],
    }
    write_result("quality", result)
    dump({k: v for k, v in result.items() if k != "runs"})
    return result


if __name__ == "__main__":
    main()

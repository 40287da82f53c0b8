"""Is the input pipeline ever the bottleneck? Images/s delivered vs. consumed, in one run.

Generates a folder of realistic JPEGs (smooth scenes with noise, 200-500 px, quality
90), prepares it with ``xtune.data.prepare_data``, then for each image size measures:

- delivered, first epoch: images/s from ``load_splits(...).train()`` through the
  first epoch, decoding and resizing included (the split is decoded on first use);
- delivered, cached epochs: images/s over the following epochs (from the cache);
- consumed: images/s of the seed model's training step (``build_model(PRESETS['seed'])``
  compiled with ``compile_model``) fed from in-memory tensors at the same size.

ratio = delivered / consumed: above 1, the pipeline keeps up with training.

    python -m benchmarks.pipeline [--images 600] [--sizes 64,180] [--repeat 3] [--out benchmarks/results/pipeline.json]

Each figure is the best of ``--repeat`` runs (other processes add noise, never speed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks._common import machine, write_result

RESULTS = Path(__file__).parent / "results" / "pipeline.json"


def make_jpegs(folder: Path, count: int, seed: int = 0) -> dict:
    """``count`` JPEGs in two class folders; sizes 200-500 px, like the dogs-vs-cats photos."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    total = 0
    for i in range(count):
        cls = ("cat", "dog")[i % 2]
        w, h = (int(v) for v in rng.integers(200, 501, 2))
        coarse = rng.integers(0, 256, (max(h // 40, 2), max(w // 40, 2), 3), dtype=np.uint8)
        scene = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        pixels = np.clip(scene + rng.normal(0, 12, scene.shape), 0, 255).astype(np.uint8)
        path = folder / cls / f"{cls}.{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return {"images": count, "pixels": "200-500 x 200-500", "mean_kb": round(total / count / 1024, 1)}


def delivered(splits, epochs: int) -> tuple[float, float]:
    """(first epoch, later epochs) images/s from train(), decoding included in the first."""
    n, steps = splits.sizes["train"], splits.steps_per_epoch
    start = time.perf_counter()
    iterator = iter(splits.train())
    for _ in range(steps):
        next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps * epochs):
        next(iterator)
    later = time.perf_counter() - start
    return n / first, n * epochs / later


def consumed(size: int, batch_size: int, steps: int, repeat: int = 1) -> float:
    """Images/s of the seed model's training step at ``size``, data already in memory."""
    import keras
    import numpy as np

    from xtune.spaces import PRESETS, build_model, compile_model

    keras.utils.set_random_seed(0)
    config = PRESETS["seed"]
    model = compile_model(build_model(config, (size, size, 3), 2), config)
    x = keras.ops.convert_to_tensor(np.random.default_rng(0).uniform(0, 255, (batch_size, size, size, 3)).astype("float32"))
    y = keras.ops.convert_to_tensor(np.arange(batch_size, dtype="int32") % 2)
    for _ in range(2):  # build, trace, warm up
        model.train_on_batch(x, y)
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        best = max(best, batch_size * steps / (time.perf_counter() - start))
    keras.backend.clear_session()
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600, help="JPEGs to generate (70%% are the training split)")
    parser.add_argument("--sizes", default="64,180", help="image sizes, comma-separated")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="cached epochs to time after the first")
    parser.add_argument("--steps", default="8,3", help="training steps to time per size (comma-separated)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs of each measurement "
                                                              "(other processes on the machine add noise)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    steps += [steps[-1]] * (len(sizes) - len(steps))

    import tensorflow as tf  # noqa: F401  (before timing: import cost is not the pipeline's)

    from xtune.data import load_splits, prepare_data

    report = {"benchmark": "pipeline", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
              "batch_size": args.batch_size, "repeat": args.repeat, "cached_epochs": args.epochs, "results": []}
    with tempfile.TemporaryDirectory(prefix="xtune-bench-") as tmp:
        folder = Path(tmp) / "jpegs"
        report["dataset"] = make_jpegs(folder, args.images)
        start = time.perf_counter()
        prepared = prepare_data(folder, data_dir=Path(tmp) / "data")
        elapsed = time.perf_counter() - start
        report["prepare"] = {"seconds": round(elapsed, 2), "images_per_s": round(args.images / elapsed, 1),
                             "sizes": prepared.sizes}
        delivered(load_splits(prepared, image_size=16, batch_size=args.batch_size), 1)  # warm up tf.data
        for size, n_steps in zip(sizes, steps):
            row = {"image_size": size, "train_images": prepared.sizes["train"]}
            for cache in ("memory", "disk"):
                first = later = 0.0
                for _ in range(args.repeat):  # a fresh Splits each time: the first epoch decodes again
                    splits = load_splits(prepared, image_size=size, batch_size=args.batch_size, cache=cache)
                    f, c = delivered(splits, args.epochs)
                    first, later = max(first, f), max(later, c)
                    del splits
                row[f"delivered_first_epoch_{cache}"] = round(first, 1)
                row[f"delivered_cached_{cache}"] = round(later, 1)
            row["consumed_train_step"] = round(consumed(size, args.batch_size, n_steps, args.repeat), 1)
            row["ratio_first_epoch"] = round(row["delivered_first_epoch_memory"] / row["consumed_train_step"], 1)
            row["ratio_cached"] = round(row["delivered_cached_memory"] / row["consumed_train_step"], 1)
            report["results"].append(row)
            print(f"size {size}: {row}", file=sys.stderr)
    if args.out == RESULTS:
        write_result("pipeline", report)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    _print_table(report)
    return report


def _print_table(report: dict) -> None:
    m = report["machine"]
    print(f"{m['cpu']}, {m['cores']} cores, {m['gpus'] or 'no GPU'}; TF {m['tensorflow']}; "
          f"batch {report['batch_size']}; {report['dataset']['images']} JPEGs "
          f"({report['dataset']['pixels']} px, {report['dataset']['mean_kb']} KB mean)")
    print(f"prepare (scan + copy): {report['prepare']['images_per_s']} images/s")
    header = ("size", "1st epoch img/s", "cached img/s", "cached (disk) img/s", "train step img/s", "ratio 1st", "ratio cached")
    print("  ".join(header))
    for r in report["results"]:
        cells = (r["image_size"], r["delivered_first_epoch_memory"], r["delivered_cached_memory"],
                 r["delivered_cached_disk"], r["consumed_train_step"], r["ratio_first_epoch"], r["ratio_cached"])
        print("  ".join(str(c).rjust(len(h)) for c, h in zip(cells, header)))


if __name__ == "__main__":
    main()

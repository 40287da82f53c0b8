"""GPU throughput on a machine with no TensorFlow: Keras 3 on JAX, generated data.

    KERAS_BACKEND=jax python -m benchmarks.gpu_jax [--image-size 180] [--batches 32,64,128] [--steps 30]

Measures the seed model's (the book's) training throughput in images/s at 180x180 for
each batch size, float32 against mixed bfloat16, then runs a short Hyperband search
(xtune.search.run_search with in-memory data: spaces/ and search/ are pure Keras and
KerasTuner). Writes benchmarks/results/gpu_jax.json.

On the lent GPU machine (JAX with CUDA, numpy, h5py, rich and protobuf installed; no
TensorFlow, no network), carry keras, keras-tuner, six, optree, namex and kt-legacy as
wheels (see /work/.library/device/README.md) and run:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
    PYTHONPATH=/tmp/site:src KERAS_BACKEND=jax python3 -m benchmarks.gpu_jax --out $OUT/gpu_jax.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")


class ArraySplits:
    """In-memory stand-in for ``xtune.data.Splits`` (numpy batches; any Keras backend)."""

    def __init__(self, n_train: int, n_val: int, size: int, batch_size: int, classes: int = 2, seed: int = 0):
        import numpy as np

        rng = np.random.default_rng(seed)
        self.class_names = tuple(str(i) for i in range(classes))
        self.image_size, self.batch_size = size, batch_size
        self.sizes = {"train": n_train, "validation": n_val, "test": n_val}
        self.steps_per_epoch = -(-n_train // batch_size)
        self._y = rng.integers(0, classes, n_train).astype("int32")
        self._x = rng.uniform(0, 255, (n_train, size, size, 3)).astype("float32")
        self._x[self._y == 1, : size // 2] *= 0.5  # something to learn
        self.validation = (self._x[:n_val], self._y[:n_val])
        self.seed = seed

    def train(self, start_epoch: int = 0):
        import numpy as np

        def batches():
            epoch = start_epoch
            while True:
                order = np.random.default_rng((self.seed, epoch)).permutation(len(self._y))
                for i in range(0, len(order), self.batch_size):
                    idx = np.sort(order[i:i + self.batch_size])
                    yield self._x[idx], self._y[idx]
                epoch += 1

        return batches()


def throughput(size: int, batch: int, policy: str, steps: int) -> float:
    """Images/s of the seed model's training at ``size``, data on the host, after warm-up."""
    import keras
    import numpy as np

    from xtune.spaces import PRESETS, build_model, compile_model

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    config = PRESETS["seed"]
    model = compile_model(build_model(config, (size, size, 3), 2), config)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch * 4, size, size, 3)).astype("float32")
    y = rng.integers(0, 2, batch * 4).astype("int32")
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # compile
    reps = max(1, steps // 4)
    xs, ys = np.concatenate([x] * reps), np.concatenate([y] * reps)
    start = time.perf_counter()
    model.fit(xs, ys, batch_size=batch, epochs=1, verbose=0)
    elapsed = time.perf_counter() - start
    keras.mixed_precision.set_global_policy("float32")
    return len(ys) / elapsed


def short_search(size: int, batch: int, work: Path) -> dict:
    from xtune.search import load_project, run_search

    splits = ArraySplits(n_train=batch * 16, n_val=batch * 4, size=size, batch_size=batch)
    start = time.perf_counter()
    outcome = run_search(work / "search", {"data": "generated", "image_size": size, "batch_size": batch,
                                          "max_trials": 10, "max_epochs": 4},
                         space_ref="default", splits=splits, data_info={"source": "generated in memory"},
                         tensorboard=False)
    state = load_project(work / "search")
    return {"trials": len(state.trials), "completed": outcome.completed, "failed": outcome.failed,
            "seconds": round(time.perf_counter() - start, 1), "best": outcome.best and outcome.best["score"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=180)
    parser.add_argument("--batches", default="32,64,128")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per measurement")
    parser.add_argument("--search-size", type=int, default=64, help="image size of the short search")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_jax.json")
    args = parser.parse_args(argv)
    import jax
    import keras

    devices = [str(d) for d in jax.devices()]
    result = {"benchmark": "gpu_jax", "backend": keras.backend.backend(), "devices": devices,
              "image_size": args.image_size, "throughput_images_per_s": {}}
    for batch in (int(b) for b in args.batches.split(",")):
        row = {}
        for policy in ("float32", "mixed_bfloat16"):
            row[policy] = round(throughput(args.image_size, batch, policy, args.steps), 1)
        row["speedup_bf16"] = round(row["mixed_bfloat16"] / row["float32"], 3)
        result["throughput_images_per_s"][str(batch)] = row
        print(f"batch {batch}: {row}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result["short_search"] = short_search(args.search_size, 32, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

"""Test accuracy of a trained model before and after re-estimating its batch-norm statistics.

With few steps per epoch, batch norm's moving statistics lag the weights and the
model predicts one class in inference mode (docs/ENGINE.md, "Batch norm on small
datasets"). `tune export` re-estimates them over the training data
(``xtune.results.reestimate_batch_norm``); this measures what that changes.

Data: generated 32x32 images of striped patches whose direction is the class, at
random places, sizes, periods and colours over a noisy background: small,
learnable, not trivial. Each model trains from scratch as `tune export` does (same builder,
compile, seed), then is tested in inference mode as trained ("before"), after a
re-estimation over one epoch of unaugmented training images, and after the
re-estimation `tune export` does (the trained model in training mode, its
augmentation active, over 1-5 epochs of batches).

    python -m benchmarks.bn_reestimation [--presets seed,small] [--train 120,270] [--seeds 1,2,3]

Writes benchmarks/results/bn_reestimation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def shapes(n: int, size: int, classes: int, seed: int):
    """``n`` images (float32, [0, 255]) of striped patches, balanced, and their labels.

    The class is the stripes' direction (horizontal, vertical, diagonal); the
    patch's place, size, colours and stripe period vary, over a noisy background.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size, 3), np.float32)
    for i, label in enumerate(labels):
        background = rng.uniform(0, 255, 3)
        image = np.clip(background + rng.normal(0, 25, (size, size, 3)), 0, 255)
        half = rng.uniform(size * 0.25, size * 0.45)
        cy, cx = rng.uniform(half, size - half, 2)
        patch = (abs(yy - cy) <= half) & (abs(xx - cx) <= half)
        coordinate = (yy, xx, (yy + xx) / np.sqrt(2))[label]
        period = rng.uniform(3.0, 6.0)
        on = patch & (np.sin(2 * np.pi * coordinate / period + rng.uniform(0, 2 * np.pi)) > 0)
        image[on] = rng.uniform(0, 255, 3)
        images[i] = image
    return images, labels.astype("int32")


def measure(preset: str, train: int, test: int, epochs: int, classes: int, size: int, batch: int, seed: int) -> dict:
    import keras
    import numpy as np

    from xtune.results import classification_metrics, reestimate_batch_norm
    from xtune.results._candidates import _inference_model
    from xtune.spaces import PRESETS, build_model, compile_model
    from xtune.spaces._batchnorm import reestimation_steps

    x, y = shapes(train, size, classes, seed)
    xt, yt = shapes(test, size, classes, seed + 1000)
    names = [f"stripes{i}" for i in range(classes)]
    config = PRESETS[preset]
    shape = (size, size, 3)
    keras.utils.set_random_seed(seed)
    model = compile_model(build_model(config, shape, classes), config)
    started = time.monotonic()
    history = model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, shuffle=True)
    seconds = time.monotonic() - started

    def scores(inference):
        tested = classification_metrics(inference.predict(xt, verbose=0), yt, names)
        trained = classification_metrics(inference.predict(x, verbose=0), y, names)
        return {"test_accuracy": tested["accuracy"], "test_loss": round(tested["loss"], 4),
                "train_accuracy": round(trained["accuracy"], 4),
                "predicted_test_classes": np.asarray(tested["confusion_matrix"]).sum(axis=0).tolist()}

    def epoch_batches(rng):
        order = rng.permutation(len(x))
        return [(x[order[i:i + batch]], y[order[i:i + batch]]) for i in range(0, len(x), batch)]

    steps = -(-len(x) // batch)
    before = _inference_model(model, config, shape, classes)
    row = {
        "preset": preset, "bn_momentum": config.bn_momentum, "augmentation": config.augmentation,
        "classes": classes, "image_size": size, "train_images": train, "test_images": test,
        "batch_size": batch, "epochs": epochs, "steps": epochs * steps, "seed": seed,
        "train_seconds": round(seconds, 1),
        "final_training_accuracy (training mode)": round(float(history.history["accuracy"][-1]), 4),
        # The ceiling: test images normalized with batch statistics, as in training.
        "test_accuracy_with_batch_statistics": classification_metrics(
            np.concatenate([np.asarray(before(xt[i:i + batch], training=True)) for i in range(0, len(xt), batch)]),
            yt, names)["accuracy"],
        "before": scores(before),
    }
    # Unaugmented images, one epoch (the simplest re-estimation).
    plain = _inference_model(model, config, shape, classes)
    reestimate_batch_norm(plain, epoch_batches(np.random.default_rng(seed)))
    row["after, no augmentation, 1 epoch"] = scores(plain)
    # What `tune export` does: the trained model, augmentation active, 1-5 epochs.
    count = reestimation_steps(steps)
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    reestimate_batch_norm(model, (b for _ in range(count // steps + 1) for b in epoch_batches(rng)), steps=count)
    row[f"after, as tune export (augmentation on, {count} batches)"] = scores(
        _inference_model(model, config, shape, classes))
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="seed,small")
    parser.add_argument("--train", default="120,270", help="training-set sizes, comma-separated")
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args(argv)
    from benchmarks._common import write_result

    rows = []
    for train in map(int, args.train.split(",")):
        for preset in args.presets.split(","):
            for seed in map(int, args.seeds.split(",")):
                row = measure(preset, train, args.test, args.epochs, args.classes, args.image_size,
                              args.batch_size, seed)
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {"results": rows}
    print(f"wrote {write_result('bn_reestimation', result)}")
    return result


if __name__ == "__main__":
    main()

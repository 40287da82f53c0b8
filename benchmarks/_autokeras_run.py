"""One AutoKeras ImageClassifier run, for ``benchmarks/quality.py`` (run by the AutoKeras venv's python).

    /work/venvs/autokeras/bin/python benchmarks/_autokeras_run.py --npz SET.npz --seed 1 \
        --max-trials 10 --epochs 5 --directory TMP --out RESULT.json

Imports nothing from xtune: it runs in its own virtual environment (AutoKeras is an
optional benchmark dependency, not a package dependency; ``benchmarks/autokeras_env.sh``
builds it). Trains on ``x_train``, gives ``(x_val, y_val)`` as ``validation_data``, and
evaluates the model AutoKeras exports on ``x_test``. Writes the test accuracy, the
time of each phase, every trial's status and score, and the reason each failed trial
failed (e.g. ImageNet weights that cannot be downloaded offline).

Two fixes for AutoKeras 3.0.0 with Keras 3.15, applied here at run time (site-packages
is never edited):

- ``autokeras.graph.Graph.set_io_shapes`` stores the data's shapes as numpy integers;
  the classification head later passes one as ``units`` to ``keras.layers.Dense``,
  which Keras 3.15 rejects before any trial runs. The patch casts them to Python ints.
- KerasTuner imports ``tensorboard.plugins.hparams`` in every trial. When tensorboard
  is not installed, a stand-in module is registered (KerasTuner only uses it for its
  TensorBoard HParams logging, which this run never turns on).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _stand_in_tensorboard_hparams() -> str:
    """Register a stand-in ``tensorboard.plugins.hparams`` if tensorboard is missing; say which."""
    try:
        import tensorboard
        import tensorboard.plugins.hparams.api

        return f"tensorboard {tensorboard.__version__} installed"
    except ImportError:
        pass
    import types

    class _Anything:
        """Accepts any construction and attribute access; does nothing."""

        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, *args, **kwargs):
            return _Anything()

        def __getattr__(self, name):
            return _Anything()

    names = ["tensorboard", "tensorboard.plugins", "tensorboard.plugins.hparams",
             "tensorboard.plugins.hparams.api"]
    modules = {name: types.ModuleType(name) for name in names}
    for parent, child in itertools.pairwise(names):
        setattr(modules[parent], child.rsplit(".", 1)[1], modules[child])
    hparams = modules["tensorboard.plugins.hparams"]
    api = modules["tensorboard.plugins.hparams.api"]
    hparams.api = api
    api.__getattr__ = lambda name: _Anything  # module-level __getattr__ (PEP 562)
    for name, module in modules.items():
        module.__path__ = []  # a package, so submodule imports resolve to these
        sys.modules[name] = module
    return "stand-in tensorboard.plugins.hparams (tensorboard not installed)"


def _patch_set_io_shapes() -> None:
    """Cast the shapes ``Graph.set_io_shapes`` stores to Python ints (Keras 3.15 refuses numpy ints)."""
    import autokeras.graph as graph

    original = graph.Graph.set_io_shapes

    def to_python(shape):
        if shape is None:
            return None
        return tuple(None if d is None else int(d) for d in shape)

    def set_io_shapes(self, shapes):
        original(self, shapes)  # inputs: node.shape; outputs: the head's shape (node.in_blocks[0])
        for node in self.inputs:
            node.shape = to_python(node.shape)
        for node in self.outputs:
            node.in_blocks[0].shape = to_python(node.in_blocks[0].shape)

    graph.Graph.set_io_shapes = set_io_shapes


def _best(trial, name: str):
    try:
        value = trial.metrics.get_best_value(name)
    except Exception:  # metric never recorded (a failed trial)
        return None
    return None if value is None else float(value)


def _trials(tuner) -> list[dict]:
    """Every trial: status, AutoKeras's objective (val_loss), best val_accuracy, failure reason."""
    best_ids = {t.trial_id for t in tuner.oracle.get_best_trials(1)} if tuner.oracle.trials else set()
    out = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        message = getattr(trial, "message", None) or ""
        reason = ""
        if message:
            lines = [line for line in str(message).strip().splitlines() if line.strip()]
            reason = lines[-1][:300] if lines else ""
        values = trial.hyperparameters.values
        out.append({"trial": trial_id, "status": str(trial.status), "objective_score": None if trial.score is None else float(trial.score),
                    "val_accuracy": _best(trial, "val_accuracy"), "chosen": trial_id in best_ids,
                    "block_type": values.get("image_block_1/block_type"),
                    "pretrained": next((v for k, v in values.items() if k.endswith("/pretrained")), None),
                    "version": next((v for k, v in values.items() if k.endswith("/version")), None),
                    "reason": reason})
    return out


def _downloads_weights(reason: str) -> bool:
    words = ("download", "url fetch", "urlopen", "name resolution", "connection", "storage.googleapis")
    return any(w in reason.lower() for w in words)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--directory", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    started = time.monotonic()
    result: dict = {"max_trials": args.max_trials, "epochs": args.epochs, "seed": args.seed}
    try:
        result["tensorboard"] = _stand_in_tensorboard_hparams()
        import autokeras as ak
        import keras
        import keras_tuner
        import numpy as np
        import tensorflow as tf

        _patch_set_io_shapes()
        result["versions"] = {"autokeras": ak.__version__, "tensorflow": tf.__version__,
                              "keras": keras.__version__, "keras-tuner": keras_tuner.__version__,
                              "numpy": np.__version__}
        data = np.load(args.npz)
        x_train, y_train = data["x_train"], data["y_train"]
        x_val, y_val = data["x_val"], data["y_val"]
        x_test, y_test = data["x_test"], data["y_test"]
        result["images"] = {"train": len(x_train), "validation": len(x_val), "test": len(x_test)}
        keras.utils.set_random_seed(args.seed)
        result["import_s"] = round(time.monotonic() - started, 1)

        clf = ak.ImageClassifier(max_trials=args.max_trials, seed=args.seed, overwrite=True,
                                 directory=args.directory, project_name="ak")
        start = time.monotonic()
        fit_error = None
        try:
            clf.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=args.epochs, verbose=0)
        except Exception as error:  # e.g. too many failed trials in a row
            fit_error = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
        result["fit_s"] = round(time.monotonic() - start, 1)
        trials = _trials(clf.tuner)
        failed = [t for t in trials if t["status"] != "COMPLETED"]
        result["trials"] = trials
        result["trials_run"] = len(trials)
        result["failed_trials"] = len(failed)
        result["failed_weights_download"] = sum(_downloads_weights(t["reason"]) for t in failed)
        result["objective"] = str(getattr(clf.tuner.oracle.objective, "name", clf.tuner.oracle.objective))
        completed = [t for t in trials if t["status"] == "COMPLETED" and t["val_accuracy"] is not None]
        # The analogue of xtune's "search's best validation score": the best val_accuracy of any trial.
        result["best_val_accuracy"] = max((t["val_accuracy"] for t in completed), default=None)
        result["chosen_val_accuracy"] = next((t["val_accuracy"] for t in trials if t["chosen"]), None)
        if fit_error is not None:
            result["fit_error"] = fit_error
        start = time.monotonic()
        if fit_error is None:
            loss, accuracy = clf.evaluate(x_test, y_test, verbose=0)[:2]
            result["test_accuracy"] = float(accuracy)
            result["test_loss"] = float(loss)
            model = clf.export_model()
            result["params"] = int(model.count_params())
        else:
            result["test_accuracy"] = None
        result["evaluate_s"] = round(time.monotonic() - start, 1)
    except Exception as error:  # recorded, not raised: the harness reports it
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()[-3000:]
    result["runner_s"] = round(time.monotonic() - started, 1)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())

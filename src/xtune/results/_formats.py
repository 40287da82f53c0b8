"""The exported formats: write ``model.keras``, ``saved_model/`` and ``model.tflite``, read them back.

An export is installed only once every format, reloaded from disk, gives the trained
model's outputs (``verify_formats``): a converter or serializer that silently changes
the model fails the export instead of shipping it. ``tflite_latency`` times the
TFLite model on this machine for the card.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from xtune import _atomic
from xtune.errors import ProjectError

# Every reloaded format must give the trained model's probabilities within this
# (max absolute difference over CHECK_IMAGES test images), or the export fails.
TOLERANCE = 1e-4
CHECK_IMAGES = 32


def write_formats(model, folder: Path) -> None:
    """Write the three formats of ``model`` into ``folder``; the TFLite model is converted from saved_model/."""
    import tensorflow as tf

    model.optimizer.build(model.trainable_variables)  # saved with its variables: reloads without warnings
    model.save(folder / "model.keras")
    with contextlib.redirect_stdout(io.StringIO()):  # model.export prints its signature
        model.export(os.fspath(folder / "saved_model"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(os.fspath(folder / "saved_model"))
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # the converter raises its own ConverterError and others
        raise ProjectError(f"TFLite conversion failed: {_first_line(error)}") from None
    _atomic.write_bytes(folder / "model.tflite", flatbuffer)


def verify_formats(folder: Path, images: np.ndarray, reference: np.ndarray, tolerance: float = TOLERANCE) -> dict:
    """Reload every exported format and compare its predictions with ``reference``.

    Args:
        folder: An export folder (``model.keras``, ``saved_model/``, ``model.tflite``).
        images: A batch of images, ``(n, height, width, 3)`` float32 in [0, 255].
        reference: The trained model's outputs on ``images``.
        tolerance: The largest allowed absolute difference of any output.

    Returns:
        ``{"tolerance", "images", "model.keras": {"max_abs_diff"}, "saved_model":
        {...}, "model.tflite": {...}}``.

    Raises:
        ProjectError: A format does not reload, or differs by more than ``tolerance``.
    """
    folder = Path(folder)
    images = np.asarray(images, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    loaders = {"model.keras": _predict_keras, "saved_model": _predict_saved_model, "model.tflite": _predict_tflite}
    report: dict[str, Any] = {"tolerance": tolerance, "images": len(images)}
    for fmt, predict in loaders.items():
        try:
            outputs = np.asarray(predict(folder, images), dtype=np.float32)
        except Exception as error:
            raise ProjectError(f"export failed: {fmt} does not reload ({_first_line(error)}); nothing was written") from None
        if outputs.shape != reference.shape:
            raise ProjectError(f"export failed: {fmt} gives outputs of shape {outputs.shape}, the trained model "
                               f"{reference.shape}; nothing was written")
        diff = float(np.max(np.abs(outputs - reference))) if reference.size else 0.0
        if not diff <= tolerance:
            raise ProjectError(f"export failed: {fmt} predicts up to {diff:.2g} away from the trained model "
                               f"(tolerance {tolerance:g}); nothing was written")
        report[fmt] = {"max_abs_diff": diff}
    return report


def _predict_keras(folder: Path, images):
    import keras

    model = keras.models.load_model(folder / "model.keras")
    return model(images, training=False)


def _predict_saved_model(folder: Path, images):
    import tensorflow as tf

    loaded = tf.saved_model.load(os.fspath(folder / "saved_model"))
    return loaded.serve(tf.constant(images)).numpy()


def _predict_tflite(folder: Path, images):
    interpreter = tflite_interpreter(folder / "model.tflite")
    return run_tflite(interpreter, images)


def tflite_latency(path: Path, image: np.ndarray, repeats: int = 50, warmup: int = 5) -> dict:
    """Median seconds of one TFLite inference of one image on one CPU thread, over ``repeats`` runs."""
    import platform
    import statistics

    interpreter = tflite_interpreter(path, threads=1)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(image.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], np.asarray(image, dtype=inp["dtype"]))
    times = []
    for k in range(warmup + repeats):
        start = time.perf_counter()
        interpreter.invoke()
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return {"median_ms": round(statistics.median(times) * 1000, 3), "threads": 1, "repeats": repeats,
            "batch": int(image.shape[0]), "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "what": "TFLite interpreter, one thread, one image, median of repeated runs after warm-up"}


def tflite_interpreter(path: Path, threads: int | None = None):
    """A TFLite interpreter for ``path`` (TensorFlow's; its deprecation notice silenced)."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_path=os.fspath(path), num_threads=threads)


def run_tflite(interpreter, images: np.ndarray) -> np.ndarray:
    """Run a TFLite interpreter on a batch (resizing its batch dimension to fit)."""
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], np.asarray(images, dtype=inp["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]

"""`tune predict`: classify image files with an exported model."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from xtune import _atomic
from xtune.errors import ProjectError
from xtune.results._card import CARD_FILE
from xtune.results._metrics import class_probabilities, predicted_classes

_BATCH = 32


def read_card(model_dir: Path) -> dict:
    """The model card of an export folder.

    Raises:
        ProjectError: ``model_dir`` is not an export folder (or its card is damaged).
    """
    model_dir = Path(model_dir)
    path = model_dir / CARD_FILE
    if not path.is_file() or not (model_dir / "model.keras").is_file():
        raise ProjectError(f"{model_dir} is not a tune export (no {CARD_FILE} and model.keras); "
                           "make one with: tune export --project runs/NAME")
    try:
        card = _atomic.read_json(path)
    except ValueError as error:
        raise ProjectError(f"{error}; export again with: tune export --project runs/NAME --overwrite") from None
    names = card.get("class_names") if isinstance(card, dict) else None
    shape = (card.get("model") or {}).get("input_shape") if isinstance(card, dict) else None
    if not (isinstance(names, list) and len(names) >= 2 and isinstance(shape, list) and len(shape) == 3):
        raise ProjectError(f"{path} is damaged (no class_names or input_shape); export again with: "
                           "tune export --project runs/NAME --overwrite")
    return card


def load_model(model_dir: Path):
    """``model.keras`` of an export folder; ProjectError (one line) when it does not load."""
    import keras

    path = Path(model_dir) / "model.keras"
    again = "export again with: tune export --project runs/NAME --overwrite"
    if not zipfile.is_zipfile(path):  # Keras would say "File not found" of a file that is there
        raise ProjectError(f"{path} is damaged (not a Keras archive: a .keras file is a zip); {again}")
    try:
        return keras.models.load_model(path)
    except Exception as error:  # Keras raises many kinds on a damaged archive ("File not found", zip errors...)
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
        raise ProjectError(f"{path} does not load as a Keras model ({detail}); {again}") from None


def load_image(path: Path, image_size: tuple[int, int]) -> np.ndarray:
    """Decode an image file exactly as a training image reaches the model.

    The data preparation's check (``xtune.data._scan.check_image``: CMYK, RGBA,
    16-bit, GIF, TIFF, WebP, ... become 8-bit RGB, transparency over white), then the
    pipeline's decoding (``xtune.data._pipeline``: RGB, bilinear resize, rounded to
    whole values): float32 in [0, 255], shape ``(height, width, 3)``.

    Raises:
        ValueError: The file cannot be read or is not a usable image (says why).
    """
    import tensorflow as tf

    from xtune.data._read import read_regular_file
    from xtune.data._scan import check_image

    try:
        raw = read_regular_file(path)  # a pipe, a device or a huge file is refused unread
    except OSError as error:
        raise ValueError(error.strerror or str(error)) from None
    verdict = check_image(raw)
    if verdict.action == "skip":
        raise ValueError(verdict.reason)
    payload = verdict.payload if verdict.action == "convert" else raw
    try:
        image = tf.io.decode_image(payload, channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        lines = [line for line in str(error.message).splitlines() if line.strip()]
        raise ValueError(f"cannot decode ({lines[0] if lines else 'unknown error'})") from None
    image = tf.image.resize(image, image_size, method="bilinear")
    return tf.clip_by_value(tf.round(image), 0.0, 255.0).numpy().astype(np.float32)


def predict_images(model_dir: Path, paths: list[Path]) -> list[dict]:
    """Classify images with an export folder's ``model.keras``.

    Every path gets a record, in order; an unreadable image gets an ``error``
    instead of a prediction and does not stop the others.

    Args:
        model_dir: An export folder (``tune export``).
        paths: Image files (JPEG, PNG, GIF, BMP).

    Returns:
        ``{"path", "class", "probability", "probabilities": {class: p}}`` per
        image, or ``{"path", "error"}`` for one that cannot be read.

    Raises:
        ProjectError: ``model_dir`` is not an export folder.
    """
    card = read_card(model_dir)
    names = list(card["class_names"])
    height, width = card["model"]["input_shape"][:2]
    records: list[dict] = []
    images, where = [], []
    for path in paths:
        try:
            images.append(load_image(path, (height, width)))
            where.append(len(records))
            records.append({"path": os.fspath(path)})
        except ValueError as error:
            records.append({"path": os.fspath(path), "error": str(error)})
    if images:
        model = load_model(model_dir)
        batch = np.stack(images)
        outputs = np.concatenate([np.asarray(model.predict_on_batch(batch[i:i + _BATCH]))
                                  for i in range(0, len(batch), _BATCH)])
        probabilities = class_probabilities(outputs)
        for index, p, best in zip(where, probabilities, predicted_classes(outputs)):
            records[index].update({
                "class": names[best],
                "probability": float(p[best]),
                "probabilities": {name: float(v) for name, v in zip(names, p)},
            })
    return records

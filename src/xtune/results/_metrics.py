"""Classification metrics from predicted probabilities (numpy only)."""

from __future__ import annotations

import numpy as np

# Keras clips probabilities by its epsilon before taking logs; so do we.
_EPSILON = 1e-7


def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """Class indices: ``p > 0.5`` for one sigmoid unit (as Keras' accuracy), else argmax."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[-1] == 1:
        return (probabilities[:, 0] > 0.5).astype(np.int64)
    return np.argmax(probabilities, axis=-1).astype(np.int64)


def class_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Per-class probabilities ``(n, num_classes)``; one sigmoid unit becomes ``[1 - p, p]``."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[-1] == 1:
        return np.concatenate([1.0 - probabilities, probabilities], axis=-1)
    return probabilities


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, cross-entropy loss, per-class accuracy and the confusion matrix.

    Args:
        probabilities: Model outputs, ``(n, 1)`` sigmoid or ``(n, num_classes)`` softmax.
        labels: Integer class indices, ``(n,)``.
        class_names: Names of the classes, in index order.

    Returns:
        ``{"images", "accuracy", "loss", "per_class": {name: {"accuracy",
        "images"}}, "confusion_matrix": [[count]] (rows: true class, columns:
        predicted class, in ``class_names`` order)}``. Per-class accuracy is the
        share of that class's images predicted right (None for a class with none).
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    probs = class_probabilities(probabilities)
    n, k = len(labels), len(class_names)
    if n == 0:
        return {"images": 0, "accuracy": None, "loss": None, "per_class": {}, "confusion_matrix": []}
    predicted = predicted_classes(probabilities)
    chosen = np.clip(probs[np.arange(n), labels], _EPSILON, 1.0 - _EPSILON)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        total = int(confusion[i].sum())
        per_class[name] = {"accuracy": float(confusion[i, i] / total) if total else None, "images": total}
    return {
        "images": int(n),
        "accuracy": float(np.mean(predicted == labels)),
        "loss": float(-np.mean(np.log(chosen))),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }

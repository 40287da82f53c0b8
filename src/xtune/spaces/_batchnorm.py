"""Re-estimating batch-norm moving statistics over the training data.

Used where a model is judged or shipped: the search, before each epoch's validation
(``xtune.search._callbacks.ValidateEachEpoch``), and the export, before testing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras


def batch_norm_layers(model) -> list:
    """The model's ``BatchNormalization`` layers, in order (the family's models are flat)."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def reestimation_steps(steps_per_epoch: int) -> int:
    """How many batches ``tune export`` re-estimates over: 1 to 5 epochs, about 100 batches."""
    return max(steps_per_epoch, min(5 * steps_per_epoch, 100))


def reestimate_batch_norm(model: keras.Model, batches: Iterable[Any], steps: int | None = None,
                          forward: Callable[[Any], object] | None = None) -> int:
    """Set every batch-norm layer's moving statistics to their training-data averages.

    With few steps per epoch the moving statistics (momentum 0.99) still carry the
    early epochs when training ends, and the model predicts one class in inference
    mode (docs/ENGINE.md, "Batch norm on small datasets"). This runs the model in training
    mode over ``batches`` with each layer's momentum set to ``(k - 1) / k`` at batch
    ``k``, so the moving mean and variance become the plain average of the per-batch
    statistics: what the layers normalized with in training, with the final weights.
    Weights are unchanged; momenta are restored afterwards.

    Run it on the trained model, augmentation layers included (they are active in
    training mode): the statistics then describe the inputs the weights were trained
    on, which measured better on test images than statistics of unaugmented images
    (benchmarks/bn_reestimation.py). Several epochs of batches average over the
    random augmentations. Dropout is active too, but in this family it only follows
    the last batch norm.

    Args:
        model: A built Keras model.
        batches: An iterable of ``(images, labels)`` batches (a ``tf.data`` dataset).
        steps: Stop after this many batches (needed for an infinite dataset).
        forward: ``images -> None`` running the model in training mode (a compiled
            one, ``xtune._runtime.training_forward``); default: an eager call.

    Returns:
        The number of batches used (0 if the model has no batch norm).
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    used = 0
    try:
        if forward is not None:  # compiled: the momentum is baked in, so average by hand
            return _average_compiled(model, layers, batches, steps, forward, momenta)
        for k, batch in enumerate(itertools.islice(batches, steps), start=1):
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            for layer in layers:
                layer.momentum = (k - 1) / k
            model(images, training=True)
            used = k
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return used


def _average_compiled(model, layers, batches, steps, forward, momenta) -> int:
    """The plain average of per-batch statistics, with a compiled forward pass.

    A compiled pass uses each layer's momentum ``m`` as traced. With the moving
    statistics set to zero before a batch, the pass leaves ``(1 - m) * s`` for that
    batch's statistic ``s``: divided back out and averaged.
    """
    import numpy as np

    sums = [[np.zeros(v.shape, "float64") for v in (layer.moving_mean, layer.moving_variance)] for layer in layers]
    used = 0
    for batch in itertools.islice(batches, steps):
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        for layer in layers:
            layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, "float32"))
            layer.moving_variance.assign(np.zeros(layer.moving_variance.shape, "float32"))
        forward(images)
        for layer, m, total in zip(layers, momenta, sums):
            total[0] += np.asarray(layer.moving_mean, "float64") / (1.0 - m)
            total[1] += np.asarray(layer.moving_variance, "float64") / (1.0 - m)
        used += 1
    if used:
        for layer, total in zip(layers, sums):
            layer.moving_mean.assign((total[0] / used).astype("float32"))
            layer.moving_variance.assign((total[1] / used).astype("float32"))
    return used

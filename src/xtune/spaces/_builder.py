"""The pure builder: config -> keras.Model. No hyperparameters, no compile, no I/O.

Pure Keras 3 (``keras.layers``), so a model builds and trains on any backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xtune.spaces._config import MiniXceptionConfig

if TYPE_CHECKING:
    import keras

MIN_IMAGE_SIZE = 16


def output_units(num_classes: int) -> int:
    """One sigmoid unit for two classes (as in the book), else one softmax unit per class."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2; got {num_classes}")
    return 1 if num_classes == 2 else num_classes


def build_model(
    config: MiniXceptionConfig,
    input_shape: tuple[int, int, int] = (180, 180, 3),
    num_classes: int = 2,
    *,
    augmentation: bool = True,
    strided_projection: bool = True,
    name: str = "mini_xception",
) -> keras.Model:
    """Build one member of the mini-Xception family.

    Layer names are systematic (``stem_conv``, ``stage{i}_sepconv{j}``,
    ``stage{i}_bn{j}``, ``stage{i}_act{j}``, ``stage{i}_pool``, ``stage{i}_project``,
    ``stage{i}_add``, ``head_pool`` or ``head_flatten``, ``head_dropout``, ``predictions``), so models of
    different trials compare layer by layer and weights transfer by name.

    Args:
        config: The architecture and its training choices.
        input_shape: ``(height, width, channels)`` of the input images, pixel values
            in [0, 255]; height and width at least 16.
        num_classes: Two classes give one sigmoid unit; more give a softmax.
        augmentation: Include the config's random flip/rotation/zoom layers (active
            in training only). Inference models for export are built without them.
        strided_projection: The residual projection as the book writes it, a 1x1
            ``Conv2D`` with stride 2. ``False`` computes the same function as a 1x1
            stride-2 subsampling (``stage{i}_subsample``, a 1x1 max pool, no weights)
            followed by a 1x1 stride-1 ``Conv2D``: TensorFlow 2.21's oneDNN kernel for
            the filter gradient of a strided 1x1 convolution corrupts the heap on odd
            batch sizes (a last partial batch, say), so the models xtune *trains* are
            built this way. Weights are the same and transfer by layer name.
        name: The model's name.

    Returns:
        An uncompiled ``keras.Model``.
    """
    import keras
    from keras import layers

    height, width, _ = input_shape
    if min(height, width) < MIN_IMAGE_SIZE:
        raise ValueError(f"input_shape must be at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}; got {input_shape}")
    units = output_units(num_classes)
    bias = not config.batch_norm  # a conv followed by batch norm needs no bias

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs

    # Augmentation.
    if augmentation:
        if config.flip != "none":
            x = layers.RandomFlip(config.flip, name="augment_flip")(x)
        if config.rotation > 0:
            x = layers.RandomRotation(config.rotation, name="augment_rotation")(x)
        if config.zoom > 0:
            x = layers.RandomZoom(config.zoom, name="augment_zoom")(x)
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)

    # Stem.
    x = layers.Conv2D(config.stem_filters, config.stem_kernel, use_bias=bias, name="stem_conv")(x)

    # Stages.
    conv_name = "sepconv" if config.conv_type == "separable" else "conv"
    conv_cls = layers.SeparableConv2D if config.conv_type == "separable" else layers.Conv2D
    for i, filters in enumerate(config.widths, start=1):
        residual = x
        for j in range(1, config.convs_per_stage + 1):
            if config.batch_norm:
                x = layers.BatchNormalization(momentum=config.bn_momentum, name=f"stage{i}_bn{j}")(x)
            x = layers.Activation("relu", name=f"stage{i}_act{j}")(x)
            x = conv_cls(filters, config.kernel_size, padding="same", use_bias=bias, name=f"stage{i}_{conv_name}{j}")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"stage{i}_pool")(x)
        if config.residual:
            stride = 2
            if not strided_projection:
                residual = layers.MaxPooling2D(1, strides=2, padding="same", name=f"stage{i}_subsample")(residual)
                stride = 1
            residual = layers.Conv2D(filters, 1, strides=stride, padding="same", use_bias=False,
                                     name=f"stage{i}_project")(residual)
            x = layers.add([x, residual], name=f"stage{i}_add")

    # Head.
    if config.head == "flatten":
        x = layers.Flatten(name="head_flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    if config.dropout > 0:
        x = layers.Dropout(config.dropout, name="head_dropout")(x)
    activation = "sigmoid" if units == 1 else "softmax"
    # float32 output keeps the loss stable under a mixed-precision policy.
    outputs = layers.Dense(units, activation=activation, dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def compile_model(model: keras.Model, config: MiniXceptionConfig) -> keras.Model:
    """Compile a built model with the config's optimizer and the matching loss.

    One sigmoid output -> binary cross-entropy; a softmax -> sparse categorical
    cross-entropy (integer labels). The metric is "accuracy" (so the search objective
    is ``val_accuracy``).

    Args:
        model: A model from ``build_model``.
        config: The config it was built from.

    Returns:
        The same model, compiled.
    """
    import keras

    optimizers = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
    optimizer = optimizers[config.optimizer](learning_rate=config.learning_rate)
    binary = model.outputs[0].shape[-1] == 1
    loss = "binary_crossentropy" if binary else "sparse_categorical_crossentropy"
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model


def count_params(config: MiniXceptionConfig, input_shape: tuple[int, int, int] = (180, 180, 3),
                 num_classes: int = 2) -> int:
    """The parameter count of ``build_model(config, input_shape, num_classes)``, without Keras.

    Exact (batch-norm moving statistics included, as ``model.count_params()`` counts
    them) and cheap, so the largest members of the family can be sized without
    allocating them.
    """
    channels = input_shape[2]
    bias = not config.batch_norm
    k = config.stem_kernel
    total = k * k * channels * config.stem_filters + (config.stem_filters if bias else 0)
    c = config.stem_filters
    for filters in config.widths:
        c_in = c
        for _ in range(config.convs_per_stage):
            if config.batch_norm:
                total += 4 * c
            kk = config.kernel_size**2
            if config.conv_type == "separable":
                total += kk * c + c * filters
            else:
                total += kk * c * filters
            total += filters if bias else 0
            c = filters
        if config.residual:
            total += c_in * filters
    units = output_units(num_classes)
    return total + _head_features(config, input_shape, c) * units + units


def _final_size(config: MiniXceptionConfig, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """Height and width of the last stage's output (the stem's "valid" padding, then one halving per stage)."""
    import math

    height, width = (n - config.stem_kernel + 1 for n in input_shape[:2])
    for _ in range(config.num_stages):
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    return height, width


def _head_features(config: MiniXceptionConfig, input_shape: tuple[int, int, int], channels: int) -> int:
    """Inputs of the classifier: the channels, or every position's channels for a flatten head."""
    if config.head != "flatten":
        return channels
    height, width = _final_size(config, input_shape)
    return height * width * channels


def count_flops(config: MiniXceptionConfig, input_shape: tuple[int, int, int] = (180, 180, 3),
                num_classes: int = 2) -> int:
    """Floating-point operations of one forward pass of one image through ``build_model(config, ...)``.

    Two per multiply-add of every convolution and of the classifier (the usual
    count); batch norm, activations, pooling, rescaling and additions are left out
    (a few percent). Closed form and cheap, like ``count_params``; a test checks it
    against the layers of the Keras model.
    """
    import math

    height, width, channels = input_shape
    k = config.stem_kernel
    height, width = height - k + 1, width - k + 1  # the stem's "valid" padding
    flops = 2 * k * k * channels * config.stem_filters * height * width
    c = config.stem_filters
    kk = config.kernel_size**2
    for filters in config.widths:
        c_in = c
        for _ in range(config.convs_per_stage):
            per_pixel = kk * c + c * filters if config.conv_type == "separable" else kk * c * filters
            flops += 2 * per_pixel * height * width
            c = filters
        height, width = math.ceil(height / 2), math.ceil(width / 2)
        if config.residual:
            flops += 2 * c_in * filters * height * width
    return flops + 2 * _head_features(config, input_shape, c) * output_units(num_classes)

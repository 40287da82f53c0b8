"""Sampling (the only code that calls ``hp.*``) and the KerasTuner HyperModel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import keras_tuner

from xtune.spaces._builder import build_model, compile_model
from xtune.spaces._config import MiniXceptionConfig
from xtune.spaces._space import DEFAULT_SPACE, Choice, FloatRange, IntRange, SearchSpace

if TYPE_CHECKING:
    import keras


def sample_config(hp: keras_tuner.HyperParameters, space: SearchSpace = DEFAULT_SPACE) -> MiniXceptionConfig:
    """Draw one configuration from ``space`` through KerasTuner's ``hp``.

    Registers every hyperparameter of the space (``hp.Fixed`` for single values) with
    the space's defaults, so an empty ``HyperParameters()`` yields the default
    configuration. A conditional hyperparameter (``bn_momentum`` under
    ``batch_norm``) is only sampled where it matters; elsewhere its default is used.

    Args:
        hp: The trial's hyperparameters.
        space: The space to sample from.

    Returns:
        The sampled, validated configuration.
    """
    values: dict[str, Any] = {}
    for spec in space.specs:
        if spec.condition:
            parent, parent_values = spec.condition
            with hp.conditional_scope(parent, list(parent_values)):
                value = _register(hp, spec)
            values[spec.name] = spec.default if value is None else value
        else:
            values[spec.name] = _register(hp, spec)
    return MiniXceptionConfig(**values)


def _register(hp, spec):
    options = spec.all_values()
    if len(options) == 1:
        return hp.Fixed(spec.name, options[0])
    if isinstance(spec, IntRange):
        return hp.Int(spec.name, spec.min_value, spec.max_value, step=spec.step, default=spec.default)
    if isinstance(spec, FloatRange):
        return hp.Float(spec.name, spec.min_value, spec.max_value, step=spec.step, default=spec.default)
    assert isinstance(spec, Choice)
    if set(map(type, options)) == {bool}:
        return hp.Boolean(spec.name, default=spec.default)
    return hp.Choice(spec.name, list(options), default=spec.default)


class MiniXceptionHyperModel(keras_tuner.HyperModel):
    """The mini-Xception family as a KerasTuner HyperModel.

    ``build(hp)`` is ``compile_model(build_model(sample_config(hp, space)))``.

    Args:
        input_shape: ``(height, width, channels)`` of the images.
        num_classes: Number of classes (2 -> sigmoid, more -> softmax).
        space: The search space (the whole family by default).
    """

    def __init__(self, input_shape: tuple[int, int, int] = (180, 180, 3), num_classes: int = 2,
                 space: SearchSpace = DEFAULT_SPACE, **kwargs: Any):
        super().__init__(name=kwargs.pop("name", "mini_xception"), **kwargs)
        self.input_shape = cast("tuple[int, int, int]", tuple(input_shape))  # a list is accepted too
        self.num_classes = num_classes
        self.space = space

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        config = sample_config(hp, self.space)
        return compile_model(build_model(config, self.input_shape, self.num_classes, strided_projection=False), config)

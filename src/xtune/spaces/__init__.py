"""The mini-Xception family: configs, presets, the builder, the space and the HyperModel.

Pure Keras 3 and KerasTuner: nothing here imports TensorFlow, so models build and
train on any Keras backend. Keras is imported lazily, on first build.
"""

from typing import TYPE_CHECKING

from xtune.spaces._builder import MIN_IMAGE_SIZE, build_model, compile_model, count_flops, count_params, output_units
from xtune.spaces._config import PRESETS, MiniXceptionConfig
from xtune.spaces._describe import describe_space
from xtune.spaces._space import (
    DEFAULT_SPACE,
    FAMILY,
    Choice,
    FloatRange,
    IntRange,
    SearchSpace,
    builtin_spaces,
    load_space,
    narrow_space,
)

if TYPE_CHECKING:  # loaded on first use (``__getattr__``); type checkers see them here
    from xtune.spaces._hypermodel import MiniXceptionHyperModel, sample_config

__all__ = [
    "DEFAULT_SPACE",
    "FAMILY",
    "MIN_IMAGE_SIZE",
    "PRESETS",
    "Choice",
    "FloatRange",
    "IntRange",
    "MiniXceptionConfig",
    "MiniXceptionHyperModel",
    "SearchSpace",
    "build_model",
    "builtin_spaces",
    "compile_model",
    "count_flops",
    "count_params",
    "describe_space",
    "load_space",
    "narrow_space",
    "output_units",
    "sample_config",
]


def __getattr__(name):
    # The HyperModel needs keras_tuner (which imports Keras); load it on first use so
    # `tune space show` stays light.
    if name in ("MiniXceptionHyperModel", "sample_config"):
        from xtune.spaces import _hypermodel

        return getattr(_hypermodel, name)
    raise AttributeError(f"module 'xtune.spaces' has no attribute {name!r}")

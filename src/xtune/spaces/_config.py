"""The mini-Xception configuration: frozen data, validated on creation, and presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

CONV_TYPES = ("separable", "standard")
FLIPS = ("none", "horizontal", "vertical", "horizontal_and_vertical")
OPTIMIZERS = ("rmsprop", "adam")
HEADS = ("average", "flatten")


@dataclass(frozen=True)
class MiniXceptionConfig:
    """One member of the mini-Xception family.

    The defaults are the book's model (Chollet, *Deep Learning with Python*, 2nd ed.,
    section 9.3.5): 5 residual stages of widths 32..512, separable convolutions,
    batch norm, dropout 0.5, flip/rotation/zoom augmentation, RMSprop at 1e-3.
    Field names equal the hyperparameter names of the search space.

    Args:
        num_stages: Number of residual stages; each halves the spatial size.
        base_width: Filters of the first stage.
        width_growth: Factor between the widths of consecutive stages.
        conv_type: "separable" (SeparableConv2D) or "standard" (Conv2D) in the stages.
        residual: Add a 1x1 strided projection of each stage's input to its output.
        batch_norm: Batch normalization before each activation.
        bn_momentum: Momentum of the batch-norm moving statistics.
        convs_per_stage: Convolutions in each stage.
        kernel_size: Kernel size of the stage convolutions.
        stem_filters: Filters of the stem convolution.
        stem_kernel: Kernel size of the stem convolution ("valid" padding).
        head: How the last stage's feature map reaches the classifier: "average"
            (global average pooling, the book's section 9.3.5) or "flatten" (every
            position kept, as the book's first convnets in chapter 8 do; it wins when
            where a shape sits matters, as on small centred images).
        dropout: Dropout rate before the classifier (0 disables it).
        flip: Random flip augmentation: "none", "horizontal", "vertical" or
            "horizontal_and_vertical".
        rotation: RandomRotation factor (fraction of a full turn; 0 disables it).
        zoom: RandomZoom factor (0 disables it).
        optimizer: "rmsprop" or "adam".
        learning_rate: The optimizer's learning rate.
    """

    num_stages: int = 5
    base_width: int = 32
    width_growth: float = 2.0
    conv_type: str = "separable"
    residual: bool = True
    batch_norm: bool = True
    bn_momentum: float = 0.99
    convs_per_stage: int = 2
    kernel_size: int = 3
    stem_filters: int = 32
    stem_kernel: int = 5
    head: str = "average"
    dropout: float = 0.5
    flip: str = "horizontal"
    rotation: float = 0.1
    zoom: float = 0.2
    optimizer: str = "rmsprop"
    learning_rate: float = 1e-3

    def __post_init__(self):
        _check_int(self, "num_stages", 1, 8)
        _check_int(self, "base_width", 1, 4096)
        _check_number(self, "width_growth", 1.0, 4.0)
        _check_choice(self, "conv_type", CONV_TYPES)
        _check_bool(self, "residual")
        _check_bool(self, "batch_norm")
        _check_number(self, "bn_momentum", 0.0, 1.0, include_max=False, include_min=False)
        _check_int(self, "convs_per_stage", 1, 4)
        _check_int(self, "kernel_size", 1, 9)
        _check_odd(self, "kernel_size")
        _check_int(self, "stem_filters", 1, 4096)
        _check_int(self, "stem_kernel", 1, 9)
        _check_odd(self, "stem_kernel")
        _check_choice(self, "head", HEADS)
        _check_number(self, "dropout", 0.0, 1.0, include_max=False)
        _check_choice(self, "flip", FLIPS)
        _check_number(self, "rotation", 0.0, 1.0)
        _check_number(self, "zoom", 0.0, 1.0, include_max=False)
        _check_choice(self, "optimizer", OPTIMIZERS)
        _check_number(self, "learning_rate", 0.0, 10.0, include_min=False)
        # Normalize numbers so equal configs compare and hash equal (2 == 2.0).
        for name in ("width_growth", "bn_momentum", "dropout", "rotation", "zoom", "learning_rate"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def widths(self) -> tuple[int, ...]:
        """Filters of each stage: ``base_width * width_growth**i``, rounded."""
        return tuple(
            max(1, round(self.base_width * self.width_growth**i)) for i in range(self.num_stages)
        )

    @property
    def augmentation(self) -> bool:
        """Whether the model has any augmentation layer."""
        return self.flip != "none" or self.rotation > 0 or self.zoom > 0

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MiniXceptionConfig:
        """Build a config from a dict; unknown keys raise a ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"MiniXceptionConfig has no field {', '.join(map(repr, unknown))}")
        return cls(**values)

    def replace(self, **changes: Any) -> MiniXceptionConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_values(cls, values: dict) -> MiniXceptionConfig:
        """A config from a trial's hyperparameter values (missing fields: the seed's; others ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def shorthand(self) -> str:
        """The architecture in one line, e.g. ``3x16*2 sep res bn0.9 c2k3 stem16/3 drop0.2 zoom adam@0.001``.

        Stages x base width * growth, separable/standard conv, residual, batch-norm
        momentum, convs per stage and kernel, stem filters/kernel, ``flat`` for a
        flatten head (nothing for the book's average pooling), dropout,
        augmentation, optimizer@learning rate.
        """
        growth = f"*{self.width_growth:g}" if self.num_stages > 1 else ""
        augment = [name for name, on in (("flip", self.flip != "none"), ("rot", self.rotation > 0),
                                         ("zoom", self.zoom > 0)) if on]
        return " ".join([
            f"{self.num_stages}x{self.base_width}{growth}",
            "sep" if self.conv_type == "separable" else "std",
            "res" if self.residual else "nores",
            f"bn{self.bn_momentum:g}" if self.batch_norm else "nobn",
            f"c{self.convs_per_stage}k{self.kernel_size}",
            f"stem{self.stem_filters}/{self.stem_kernel}",
            *(["flat"] if self.head == "flatten" else []),
            f"drop{self.dropout:g}",
            "+".join(augment) if augment else "noaug",
            f"{self.optimizer}@{self.learning_rate:g}",
        ])


def _bad(config, name, expected):
    value = getattr(config, name)
    return ValueError(f"MiniXceptionConfig.{name} must be {expected}; got {value!r}")


def _check_int(config, name, lo, hi):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(config, name, f"an integer from {lo} to {hi}")


def _check_number(config, name, lo, hi, include_min=True, include_max=True):
    value = getattr(config, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value >= lo if include_min else value > lo) and (value <= hi if include_max else value < hi)
    if not ok:
        left, right = ("[" if include_min else "("), ("]" if include_max else ")")
        raise _bad(config, name, f"a number in {left}{lo}, {hi}{right}")


def _check_choice(config, name, choices):
    if getattr(config, name) not in choices:
        raise _bad(config, name, "one of " + ", ".join(map(repr, choices)))


def _check_bool(config, name):
    if not isinstance(getattr(config, name), bool):
        raise _bad(config, name, "True or False")


def _check_odd(config, name):
    if getattr(config, name) % 2 == 0:
        raise _bad(config, name, "odd")


# Every preset is a member of the searchable family (a test checks it).
PRESETS: dict[str, MiniXceptionConfig] = {
    # The book's model, exactly: 721,857 parameters at 180x180 with 2 classes.
    "seed": MiniXceptionConfig(),
    # The seed's design at CPU-demo scale: 3 narrow stages, faster-adapting batch norm
    # (momentum 0.9 keeps the moving statistics usable on a few hundred images).
    "small": MiniXceptionConfig(
        num_stages=3, base_width=16, stem_filters=16, stem_kernel=3,
        bn_momentum=0.9, dropout=0.2, flip="none", rotation=0.0, zoom=0.1,
        optimizer="adam",
    ),
    # A plain CNN without batch norm: the kind of model that wins on tiny datasets.
    "plain": MiniXceptionConfig(
        num_stages=2, base_width=32, conv_type="standard", residual=False,
        batch_norm=False, convs_per_stage=1, stem_filters=32, stem_kernel=3,
        dropout=0.2, flip="none", rotation=0.0, zoom=0.0, optimizer="adam",
    ),
}

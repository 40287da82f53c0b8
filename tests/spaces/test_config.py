import dataclasses

import pytest

from xtune.spaces import PRESETS, MiniXceptionConfig


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["seed"].num_stages = 3


def test_seed_widths_are_the_books():
    assert PRESETS["seed"].widths == (32, 64, 128, 256, 512)


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_stages", 0),
        ("num_stages", 2.5),
        ("conv_type", "depthwise"),
        ("residual", 1),
        ("bn_momentum", 1.0),
        ("kernel_size", 4),
        ("dropout", 1.0),
        ("flip", "diagonal"),
        ("optimizer", "sgd"),
        ("learning_rate", 0),
    ],
)
def test_bad_values_name_the_field_and_show_the_value(field, value):
    with pytest.raises(ValueError) as info:
        MiniXceptionConfig(**{field: value})
    message = str(info.value)
    assert f"MiniXceptionConfig.{field}" in message
    assert repr(value) in message
    assert "\n" not in message


def test_round_trip_through_dict():
    config = PRESETS["small"]
    assert MiniXceptionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="no field 'stages'"):
        MiniXceptionConfig.from_dict({"stages": 3})


def test_numbers_are_normalized_so_equal_configs_are_equal():
    assert MiniXceptionConfig(width_growth=2) == MiniXceptionConfig(width_growth=2.0)
    assert hash(MiniXceptionConfig(dropout=0)) == hash(MiniXceptionConfig(dropout=0.0))

"""The space: defaults are the seed, files narrow it, errors are one line."""

import json

import keras_tuner
import pytest
from click.testing import CliRunner

from xtune.cli import tune
from xtune.errors import SpaceError
from xtune.spaces import (
    DEFAULT_SPACE,
    PRESETS,
    MiniXceptionHyperModel,
    builtin_spaces,
    load_space,
    narrow_space,
    sample_config,
)


def test_snapshot_empty_hyperparameters_give_the_seed():
    hp = keras_tuner.HyperParameters()
    model = MiniXceptionHyperModel((32, 32, 3), 2).build(hp)
    assert hp.values == PRESETS["seed"].to_dict()
    assert model.count_params() > 0


def test_sample_config_with_empty_hp_is_the_seed():
    assert sample_config(keras_tuner.HyperParameters()) == PRESETS["seed"]


def test_bn_momentum_is_only_sampled_with_batch_norm():
    hp = keras_tuner.HyperParameters()
    hp.values["batch_norm"] = False
    config = sample_config(hp)
    assert config.batch_norm is False
    assert not hp.is_active("bn_momentum")


def _drawn(tmp_path, seed, n=6):
    """What KerasTuner's random search draws from the registered space, trial by trial as a tuner asks."""
    hp = keras_tuner.HyperParameters()
    sample_config(hp)  # register the space
    oracle = keras_tuner.oracles.RandomSearchOracle(objective="val_accuracy", max_trials=n, seed=seed, hyperparameters=hp)
    oracle._set_project_dir(str(tmp_path), f"seed-{seed}")
    drawn = []
    for _ in range(n):
        trial = oracle.create_trial("tuner0")
        drawn.append(dict(trial.hyperparameters.values))
        oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    return drawn


def test_random_samples_are_valid_and_seeded(tmp_path):
    first = _drawn(tmp_path / "a", seed=3)
    assert _drawn(tmp_path / "b", seed=3) == first  # the same seed draws the same configurations
    assert _drawn(tmp_path / "c", seed=4) != first
    assert len({json.dumps(v, sort_keys=True) for v in first}) == len(first)
    for values in first:
        fresh = keras_tuner.HyperParameters()
        fresh.values.update(values)
        config = sample_config(fresh)  # validates: raises on a value outside the space
        assert {k: v for k, v in config.to_dict().items() if k in values} == values
        assert ("bn_momentum" in values) == config.batch_norm  # only drawn where it is used


def test_default_space_counts():
    # bn_momentum only counts where batch_norm is on: (2 + 1) instead of 2 * 2.
    assert DEFAULT_SPACE.num_configurations("training") == 2 * 4
    arch = DEFAULT_SPACE.num_configurations("architecture")
    # stages, base, growth, conv, residual, batch norm (+momentum), convs, kernel, stem filters,
    # stem kernel, head, dropout.
    assert arch == 6 * 4 * 3 * 2 * 2 * 3 * 3 * 2 * 3 * 3 * 2 * 6


def test_narrowing_fixes_restricts_and_narrows(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(
        'conv_type = "standard"\n'
        "base_width = [16, 32]\n"
        "num_stages = { min = 2, max = 4 }\n"
        "dropout = { min = 0.0, max = 0.3, default = 0.2 }\n"
        "batch_norm = false\n"
    )
    space = load_space(f)
    assert space["conv_type"].all_values() == ("standard",)
    assert space["base_width"].all_values() == (16, 32)
    assert space["num_stages"].all_values() == (2, 3, 4)
    assert space["num_stages"].default == 4  # the seed's 5 is out, so the nearest allowed
    assert space["dropout"].all_values() == (0.0, 0.1, 0.2, 0.3)
    assert space["dropout"].default == 0.2
    # bn_momentum cannot matter with batch norm fixed off.
    # stages 3, width 2, growth 3, residual 2, convs 3, kernel 2, stem 3x3, head 2, dropout 4,
    # flip/rotation/zoom 3x3x3, optimizer 2, learning rate 4; conv type and BN fixed.
    assert space.num_configurations() == 3 * 2 * 3 * 2 * 3 * 2 * 3 * 3 * 2 * 4 * 3 * 3 * 3 * 2 * 4
    hp = keras_tuner.HyperParameters()
    config = sample_config(hp, space)
    assert config.conv_type == "standard" and config.batch_norm is False and config.num_stages == 4
    assert "bn_momentum" not in hp.values or not hp.is_active("bn_momentum")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("num_stage = 3", "unknown hyperparameter 'num_stage'; did you mean 'num_stages'?"),
        ("num_stages = 9", "num_stages = 9 is outside the family (allowed: 1..6)"),
        ("base_width = [12]", "base_width = 12 is outside the family (allowed: 8, 16, 32, 64)"),
        ("base_width = []", "base_width: empty list"),
        ("dropout = { min = 0.4, max = 0.2 }", "dropout: empty range, min 0.4 > max 0.2"),
        ("num_stages = { min = 0, max = 9 }", "num_stages: {min = 0, max = 9} reaches outside the family (allowed: 1..6)"),
        ("dropout = { max = 0.9 }", "dropout: {min = 0, max = 0.9} reaches outside the family"),
        ('conv_type = { min = 1, max = 2 }', "min/max only narrow numeric"),
        ('conv_type = "depthwise"', 'conv_type = "depthwise" is outside the family'),
        ("kernel_size = { values = [3], default = 5 }", "kernel_size default = 5 is outside"),
        ("num_stages = = 3", "not valid TOML"),
    ],
)
def test_bad_space_files_fail_in_one_line(tmp_path, text, expected):
    f = tmp_path / "bad.toml"
    f.write_text(text + "\n")
    with pytest.raises(SpaceError) as info:
        load_space(f)
    assert expected in str(info.value)
    assert str(f) in str(info.value)
    # At the command line: exit code 2, one line, no traceback.
    result = CliRunner().invoke(tune, ["space", "check", str(f)])
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output
    error_lines = [l for l in result.output.splitlines() if l.startswith("Error:")]
    assert len(error_lines) == 1


def test_space_show_json_is_valid_and_complete():
    result = CliRunner().invoke(tune, ["space", "show", "--format", "json", "--image-size", "180"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    names = [row["name"] for row in summary["hyperparameters"]]
    assert names == list(PRESETS["seed"].to_dict())
    assert {row["name"]: row["default"] for row in summary["hyperparameters"]} == PRESETS["seed"].to_dict()
    assert summary["parameters"]["seed"] == 721_857
    assert summary["parameters"]["smallest"] < summary["parameters"]["seed"] < summary["parameters"]["largest"]
    assert summary["configurations"] == DEFAULT_SPACE.num_configurations()


def test_space_show_table_and_builtin_spaces():
    assert "small" in builtin_spaces()
    result = CliRunner().invoke(tune, ["space", "show", "--space", "small", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    assert "distinct architectures" in result.output
    result = CliRunner().invoke(tune, ["space", "show", "--space", "nope"])
    assert result.exit_code == 2
    assert "no space file or built-in space named 'nope'" in result.output


def test_builtin_small_space_default_is_a_valid_small_model():
    space = load_space("small")
    config = space.default_config()
    assert config.num_stages == 3 and config.base_width == 16


def test_narrow_space_from_dict():
    space = narrow_space({"optimizer": "adam"})
    assert space["optimizer"].all_values() == ("adam",)
    assert space.default_config().optimizer == "adam"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_in_the_family(preset):
    config = PRESETS[preset]
    for spec in DEFAULT_SPACE.specs:
        assert getattr(config, spec.name) in spec.all_values(), spec.name


def test_the_small_space_starts_from_the_small_preset():
    assert load_space("small").default_config() == PRESETS["small"]

"""The KerasTuner seam: one module names KerasTuner's internals, for the versions it was tested with."""

import re
from pathlib import Path

import keras_tuner

from xtune.search import _kt

SRC = Path(__file__).resolve().parents[2] / "src" / "xtune"


def test_the_installed_keras_tuner_is_a_tested_version():
    problem = _kt.untested_version()
    assert problem is None, f"{problem}: review xtune/search/_kt.py (the seam), then add the version to TESTED"


def test_only_the_seam_names_kerastuner_internals():
    pattern = re.compile(r"keras_tuner\.src|kt_config|oracle_client|oracle_chief|_retry_queue|_run_times|"
                         r"_set_project_dir|LOCKS\[")
    users = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if pattern.search(p.read_text()))
    assert users == ["search/_kt.py"]


def test_every_internal_the_seam_relies_on_exists(tmp_path):
    from keras_tuner.src import config, protos, utils
    from keras_tuner.src.distribute import oracle_chief
    from keras_tuner.src.engine import base_tuner, conditions
    from keras_tuner.src.engine import oracle as oracle_module

    assert callable(utils.save_json) and isinstance(config.DEBUG, bool) and hasattr(conditions, "Parent")
    assert hasattr(protos.get_service_grpc(), "OracleStub") and hasattr(oracle_chief, "OracleServicer")
    oracle = keras_tuner.Oracle(objective="val_accuracy", max_trials=1)
    assert isinstance(_kt.retry_queue(oracle), list) and _kt.run_times(oracle)["x"] == 0
    assert oracle in oracle_module.LOCKS or _kt.oracle_lock(oracle) is oracle_module.LOCKS[oracle]
    _kt.attach(oracle, tmp_path / "p")
    assert Path(oracle._project_dir) == tmp_path / "p"
    for hook in _kt.OVERRIDDEN:
        cls, name = hook.split(".")
        assert hasattr(getattr(base_tuner, cls), name), hook


def test_patches_hold_in_their_scope_only(tmp_path):
    from keras_tuner.src import config, utils
    from keras_tuner.src.engine import conditions

    before = utils.save_json, config.DEBUG
    with _kt.patched():
        assert utils.save_json is not before[0] and config.DEBUG is False
        conditions.print("silenced")
        utils.save_json(str(tmp_path / "x.json"), {"a": 1})
        assert not list(tmp_path.glob("*.tmp-*")) and (tmp_path / "x.json").read_text() == '{"a": 1}'
    assert (utils.save_json, config.DEBUG) == before
    assert "print" not in vars(conditions)

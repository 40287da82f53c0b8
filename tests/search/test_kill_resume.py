"""Fault injection: SIGKILL a running search at 7 moments of its life, resume each time.

The same script (`python scripts/kill_resume.py --kills 30`) runs longer versions.
"""

import importlib.util
from argparse import Namespace
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kill_resume.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("kill_resume", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sigkill_at_seven_moments_loses_nothing(tmp_path):
    script = _load_script()
    # Seven kills aim at each later phase twice: "inside an epoch" may land in the first trial.
    report = script.run(Namespace(kills=7, max_trials=12, max_epochs=3, seed=7, workdir=str(tmp_path)))
    assert report["plan_trials"] == 12
    assert report["kills"] == 7
    by_phase = report["kills_by_phase"]
    assert by_phase["first trial"] >= 1
    assert by_phase["during a state write"] >= 1
    assert by_phase["inside an epoch"] >= 1
    assert by_phase["between trials"] >= 1
    assert report["trials_resumed_mid_trial"] >= 1
    assert all(report["checks"].values()), report["checks"]

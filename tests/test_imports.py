"""`tune --help` must stay fast: the CLI module imports nothing heavy."""

import subprocess
import sys

import pytest

HEAVY = ("tensorflow", "keras", "keras_tuner", "kaggle")


def test_importing_cli_loads_no_heavy_module():
    code = f"import sys, xtune.cli; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _all_commands():
    from xtune.cli import tune

    def walk(group, prefix):
        yield prefix
        for name, cmd in getattr(group, "commands", {}).items():
            yield from walk(cmd, prefix + [name])

    return list(walk(tune, []))


@pytest.mark.parametrize("path", _all_commands(), ids=lambda p: " ".join(p) or "tune")
def test_every_help_works_without_heavy_imports(path):
    code = (
        "import sys\n"
        "from xtune.cli import main\n"
        "try:\n"
        f"    main({path + ['--help']!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        f"print('HEAVY:' + ' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
    assert out.stdout.strip().endswith("HEAVY:")


def test_python_dash_m_xtune_is_the_tune_command():
    out = subprocess.run([sys.executable, "-m", "xtune", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.startswith("tune, version")

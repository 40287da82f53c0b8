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


def run_tune(args, **kwargs):
    """`tune ARGS` in a fresh interpreter; its stdout ends with ``HEAVY:`` and the heavy modules it loaded."""
    code = (
        "import sys\n"
        "from xtune.cli import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        f"print('HEAVY:' + ' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, **kwargs)


@pytest.mark.parametrize("path", _all_commands(), ids=lambda p: " ".join(p) or "tune")
def test_every_help_works_without_heavy_imports(path):
    out = run_tune(path + ["--help"])
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
    assert out.stdout.strip().endswith("HEAVY:")


def test_python_dash_m_xtune_is_the_tune_command():
    out = subprocess.run([sys.executable, "-m", "xtune", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.startswith("tune, version")


@pytest.mark.slow
def test_the_tune_process_of_a_search_with_workers_never_imports_tensorflow(tmp_path):
    """The parent starts the chief and the workers and renders their events; TensorFlow is theirs.

    A fourth TensorFlow start, in the parent, cost every `--workers` search about 4 s of CPU
    on a 2-core machine, at the moment the three children start theirs.
    """
    from xtune.data._synthetic import make_image_folder

    make_image_folder(tmp_path / "images", per_class=8, size=16)
    args = ["search", "--data", "images", "--project", "p", "--data-dir", "d", "--image-size", "16",
            "--batch-size", "8", "--space", "small", "--max-trials", "2", "--max-epochs", "1", "--workers", "2"]
    out = run_tune(args, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 trials at once" in out.stdout and "Search finished" in out.stdout, out.stdout
    assert out.stdout.strip().endswith("HEAVY:"), out.stdout[-500:]

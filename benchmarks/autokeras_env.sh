#!/usr/bin/env bash
# Build the AutoKeras venv that `python -m benchmarks quality` uses (optional benchmark
# dependency, not a package dependency).
#   bash benchmarks/autokeras_env.sh [VENV]    # default: $XTUNE_AUTOKERAS_VENV or /work/venvs/autokeras
# The runtime fixes for AutoKeras 3.0.0 on Keras 3.15 live in benchmarks/_autokeras_run.py
# (nothing in site-packages is edited).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-${XTUNE_AUTOKERAS_VENV:-/work/venvs/autokeras}}"
python="${PYTHON:-python3}"
test -x "$venv/bin/python" || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q -r "$here/requirements-autokeras.txt"
"$venv/bin/python" - <<'PY'
from importlib import metadata
for name in ("autokeras", "tensorflow", "keras", "keras-tuner", "numpy", "tensorboard"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} (not installed)")
PY

# Quick start: `make demo` and `make test` work on a fresh machine with only Python.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.xtune-installed
# Demo state lives in the repository, not in ~/.cache, so `make clean` removes it.
DEMO_DIR ?= demo-runs

.PHONY: install test demo bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/tune space show --space small --image-size 32
	$(BIN)/python -c "from xtune.spaces import PRESETS, build_model; m = build_model(PRESETS['seed'], (180, 180, 3), 2); print(m.name, m.count_params(), 'parameters')"

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache

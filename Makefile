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
	$(BIN)/tune search --data demo --project $(DEMO_DIR)/demo --data-dir $(DEMO_DIR)/data \
		--image-size 32 --space small --max-trials 12 --max-epochs 9
	$(BIN)/tune results --project $(DEMO_DIR)/demo --top 5
	$(BIN)/tune export --project $(DEMO_DIR)/demo --data-dir $(DEMO_DIR)/data --preset seed --overwrite --quiet > /dev/null
	$(BIN)/tune export --project $(DEMO_DIR)/demo --data-dir $(DEMO_DIR)/data --overwrite

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache

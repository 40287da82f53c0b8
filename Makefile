# Quick start: `make demo` and `make test` work on a fresh machine with only Python.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.xtune-installed
# Demo state lives in the repository, not in ~/.cache, so `make clean` removes it.
DEMO_DIR ?= demo-runs

.PHONY: install lint test demo bench constraints clean

# The exact versions the suite passes with (constraints.txt); setup.cfg keeps ranges.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

demo: install
	$(BIN)/tune search --data demo --project $(DEMO_DIR)/demo --data-dir $(DEMO_DIR)/data \
		--image-size 32 --space small --max-trials 12 --max-epochs 9
	$(BIN)/tune results --project $(DEMO_DIR)/demo --top 5
	$(BIN)/tune export --project $(DEMO_DIR)/demo --data-dir $(DEMO_DIR)/data --preset seed --overwrite --quiet > /dev/null
	$(BIN)/tune export --project $(DEMO_DIR)/demo --data-dir $(DEMO_DIR)/data --overwrite
	$(BIN)/tune report --project $(DEMO_DIR)/demo

bench: install
	$(BIN)/python -m benchmarks

# Refresh constraints.txt to the newest versions setup.cfg allows (pip-tools, in a venv of
# its own); then run `make test`, and `make bench` for the README's figures.
constraints:
	test -x .venv-tools/bin/pip-compile || ($(PYTHON) -m venv .venv-tools && .venv-tools/bin/pip install -q pip-tools)
	.venv-tools/bin/pip-compile --quiet --upgrade --extra test --strip-extras --no-emit-index-url \
		--no-emit-find-links -o constraints.txt setup.cfg

clean:
	rm -rf $(DEMO_DIR) .pytest_cache

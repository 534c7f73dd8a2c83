# avloc: `make demo` and `make test` work on a fresh machine with only Python.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.avloc-installed
DATA   ?= $(abspath ../shared/data)

.PHONY: setup demo test test-slow lint bench clean

setup: $(STAMP)

# Re-run the install only when the project's dependencies change.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(BIN)/avloc demo --out demo_out --force

test: setup
	$(BIN)/lint-imports --no-cache
	AVLOC_DATA=$(DATA) $(BIN)/python -m pytest -q -n 2 --dist loadfile

test-slow: setup
	AVLOC_DATA=$(DATA) $(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) demo_out .pytest_cache .mypy_cache .ruff_cache

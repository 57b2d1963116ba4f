# Two commands set up and run everything on a fresh machine (Python >= 3.10):
#   make demo   simulate a session and run it end to end: binned tensors + .npy export
#   make test   run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pixbin-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-drift bench clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pixbin demo --data data

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" MPLBACKEND=Agg $(BIN)/python -m pytest -m "not gpu and not dlc and not drift" $(PYTEST_ARGS)

test-drift: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" MPLBACKEND=Agg $(BIN)/python -m pytest -m drift $(PYTEST_ARGS)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b --quick || exit 1; done

clean-demo:
	rm -rf data/raw/240101_SIM01 data/interim/240101_SIM01 data/processed/240101_SIM01 data/binned/* data/exports

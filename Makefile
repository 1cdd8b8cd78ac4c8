# Lepton FL — two commands on a fresh machine with Python 3.11+ and make:
#   make demo   # set everything up, run the four-hospital federated demo
#   make test   # set everything up, run ruff, mypy and pytest
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lepton-installed
# Nothing phones home: Flower telemetry and update checks are off in every process.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: setup demo test lint typecheck unit bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first: the pinned CPU build (a plain `torch` would pull a multi-GB CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[demo,test]"
	touch $(STAMP)

demo: setup
	$(BIN)/lepton demo --summary demo-summary.json

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -m "not slow"

test: lint typecheck
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/dp_overhead.py
	$(BIN)/python bench/round_overhead.py
	$(BIN)/python bench/secagg_crypto.py
	$(BIN)/python bench/secagg.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis demo-summary.json

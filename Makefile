# Quick start: `make train` (set up + main job) and `make test` (set up + all tests).
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch 2.13.0 ships on these machines; on a GPU box set TORCH_SPEC to the CUDA wheel.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup train test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

train: setup
	$(BIN)/paretoslider train -c configs/toy2d.yaml

test: setup
	$(BIN)/python -m pytest -q -m "not slow"
	$(BIN)/python -m pytest -q -m slow

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/loop_overlap.py

clean:
	rm -rf runs results mlruns mlartifacts mlflow.db

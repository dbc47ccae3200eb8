"""Shared fixtures: one local Ray per test session, tiny base checkpoints, temp run configs."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

TINY_MODEL = {"hidden_dim": 32, "num_blocks": 2, "time_embed_dim": 16, "pref_hidden_dim": 16, "lora_rank": 4,
              "lora_alpha": 8}


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - Serve may never have started
        pass
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny toy2d base checkpoint (random weights: enough for plumbing tests)."""
    from infra.config import ModelConfig
    from policies.policy import build_backbone, save_base

    path = tmp_path_factory.mktemp("base") / "tiny_base.pt"
    torch.manual_seed(0)
    save_base(build_backbone(ModelConfig(**TINY_MODEL), 2), ModelConfig(**TINY_MODEL), path)
    return path


TINY_DIFFUSERS = {"num_layers": 2, "num_single_layers": 1, "vae_channels": [16, 32], "num_heads": 2}
"""A tiny diffusers architecture for plumbing tests (32 px images, 16 x 16 x 4 latents)."""


def diffusers_model(kind: str, **diffusers) -> dict:
    """``model`` config of a tiny diffusers backbone of ``kind`` (LoRA rank 4)."""
    return {"kind": kind, "lora_rank": 4, "lora_alpha": 8, "pref_hidden_dim": 16, "tiny": TINY_DIFFUSERS,
            "diffusers": {"height": 32, "width": 32, **diffusers}}


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

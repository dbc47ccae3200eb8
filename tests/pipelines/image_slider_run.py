"""Tiny image and video slider run directories (SD3 text-to-image, FLUX.1 Kontext editing, LTX-2
text-to-video), written directly.

No training: the base is the session's tiny diffusers pipeline (``tiny_pipeline``, random weights),
and the checkpoint's EMA weights are the policy's initial trainable tensors moved off their init, so
the LoRA and the preference modules are non-zero and ``w`` changes the image. The layout is the one
``pipelines.train`` writes (``config.yaml``, ``checkpoints/latest.json`` -> ``{"loop", "weights"}``);
that a real run reaches it through training is ``test_shapes.py``'s (slow) job.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import diffusers_model
from infra.checkpoint import save_checkpoint
from infra.config import Config, dump_config
from policies.policy import build_policy

OBJECTIVES = {
    "sd3": [{"name": "shapes_adherence", "label": "adherence"}, {"name": "shapes_area", "label": "area"}],
    "flux_kontext": [{"name": "shapes_adherence", "label": "adherence"}, {"name": "ssim_to_source", "label": "fidelity"}],
    "ltx2": [{"name": "shapes_adherence", "label": "adherence"}, {"name": "shapes_area", "label": "area"}],
}
PROMPT = {"sd3": "a red circle", "flux_kontext": "make the square blue", "ltx2": "a red circle"}
STEP = 5


def write_image_run(kind: str, base: Path, root: Path, mlflow_run_id: str = "") -> Config:
    """A run directory under ``root`` of a ``kind`` slider on ``base``; returns its config."""
    cfg = Config.model_validate({
        "name": f"{kind}-slider", "run_dir": str(root / "run"), "model": diffusers_model(kind),
        "data": {"kind": "shapes_edit" if kind == "flux_kontext" else "shapes"},
        "pretrain": {"checkpoint": str(base)}, "rewards": {"objectives": OBJECTIVES[kind]},
        "rollout": {"sampler": {"num_steps": 3}},
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
    })
    return write_run_dir(cfg, base, mlflow_run_id)


def write_run_dir(cfg: Config, base: Path, mlflow_run_id: str = "") -> Config:
    """``cfg.run_dir`` as training leaves it: the config and one checkpoint (step ``STEP``) whose EMA
    weights are the policy's initial trainable tensors on ``base`` moved off their init (seeded)."""
    policy = build_policy(cfg.model, cfg.num_objectives, base)
    gen = torch.Generator().manual_seed(0)
    ema = {k: v + 0.2 * torch.randn(v.shape, generator=gen) for k, v in policy.trainable_state().items()}
    Path(cfg.run_dir).mkdir(parents=True)
    (Path(cfg.run_dir) / "config.yaml").write_text(dump_config(cfg))
    save_checkpoint(cfg.run_dir, STEP, {"loop": {"step": STEP, "mlflow_run_id": mlflow_run_id, "base": str(base)},
                                        "weights": {"ema": ema, "trainable": ema}})
    return cfg


def source_png(size: int = 48, seed: int = 0) -> str:
    """A base64 PNG: a coloured square on grey, ``size`` pixels a side (not the model's 32)."""
    pixels = np.full((size, size, 3), 128, np.uint8)
    lo, hi = size // 4, 3 * size // 4
    pixels[lo:hi, lo:hi] = np.random.default_rng(seed).integers(0, 256, 3, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def no_model_in_the_driver(monkeypatch) -> None:
    """Make building a base model fail in this process (the driver's side of register and serve)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the driver loaded the base model")

    monkeypatch.setattr("policies.policy.load_base", refuse)
    monkeypatch.setattr("pipelines.slider_model.build_policy", refuse)

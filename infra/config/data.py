"""``data`` and ``pretrain``: prompt sets and the in-repo base."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from infra.config.base import Strict


class ToyDataConfig(Strict):
    """The 2-D Gaussian mixture the toy base model is pre-trained on."""

    num_modes: int = Field(8, ge=1)
    """Modes evenly spaced on a ring."""
    radius: float = Field(4.0, gt=0)
    """Ring radius."""
    mode_std: float = Field(0.3, gt=0)
    """Standard deviation of each mode."""


class PretrainConfig(Strict):
    """Flow-matching pre-training of the base model (``paretoslider pretrain``)."""

    steps: int = Field(3000, ge=1)
    """Optimizer steps of the base's flow-matching pre-training."""
    batch_size: int = Field(512, ge=1)
    """Samples per pre-training step."""
    lr: float = Field(2e-3, gt=0)
    """Peak learning rate of the pre-training (AdamW, one-cycle schedule for the shapes world)."""
    seed: int = 0
    """Seeds the pre-training's data, noise and initial weights."""
    data: ToyDataConfig = Field(default_factory=ToyDataConfig)
    """The toy2d base's training distribution."""
    checkpoint: str = "runs/base/toy2d_base.pt"
    """Where the base model is saved (a diffusers directory for image kinds); ``train`` pre-trains
    it on the fly if it is missing and ``model.diffusers.pretrained`` is not set."""
    vae_steps: int = Field(300, ge=0)
    """Shapes world: autoencoder steps before the transformer trains (the latents must exist first)."""
    vae_batch_size: int = Field(16, ge=1)
    """Shapes world: images per autoencoder step."""
    vae_lr: float = Field(1e-3, gt=0)
    """Shapes world: the autoencoder's AdamW learning rate."""
    eval_steps: int = Field(20, ge=1)
    """Shapes world: ODE steps of the samples that measure the base after pre-training."""
    dataset_size: int = Field(2048, ge=16)
    """Shapes world: examples rendered and encoded once for the transformer's pre-training."""
    caption_dropout: float = Field(0.1, ge=0, lt=1)
    """Shapes world: share of empty prompts, so the base also models the unconditional flow (CFG); an edit
    with an empty instruction learns to keep the source."""
    eval_samples: int = Field(216, ge=1)
    """Shapes world: generated images on which the caption accuracy of the base is measured."""


class DataConfig(Strict):
    """The prompts groups are drawn from (see ``policies/prompts.py``)."""

    kind: Literal["none", "shapes", "shapes_edit", "file"] = "none"
    """``none``: unconditional toy2d; ``shapes``: the 54 shapes captions; ``shapes_edit``: procedural
    edits (instruction + source image); ``file``: prompts (text lines, JSON lines with a source image, or
    a ``.parquet``) from ``path``."""
    path: str | None = None
    """Prompt file of ``kind: file``: one prompt per line, JSON lines ``{"prompt", "source_image"}``, or a
    ``.parquet`` with a string ``prompt`` column and an optional ``source_image`` column (a path string or
    PNG / JPEG bytes)."""
    parquet_batch_rows: int = Field(1024, ge=1)
    """Rows decoded at a time from a ``.parquet`` prompt set: the set is read a batch at a time, never
    whole, so this bounds the memory a large set (e.g. with image bytes) takes."""
    num_prompts: int = Field(256, ge=1)
    """``shapes_edit``: procedural edits in the training set."""
    eval_prompts: int = Field(4, ge=1)
    """Prompts in the final sweep (held-out edits for ``shapes_edit``)."""
    seed: int = 0
    """Seeds the procedural edits."""

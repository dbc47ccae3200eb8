"""``model``: the backbone (toy2d or a diffusers kind), LoRA and preference modules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from infra.config.base import Strict


class TinyModelConfig(Strict):
    """Architecture of an in-repo tiny diffusers base (the CPU shapes world and the tests)."""

    image_size: int = Field(32, ge=8)
    """Height = width of the images, in pixels."""
    vae_channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1)
    """``AutoencoderKL`` block widths; ``len - 1`` downsamplings (32 px -> 16 x 16 latents)."""
    vae_groups: int = Field(8, ge=1)
    """GroupNorm groups in the VAE (must divide every width)."""
    latent_channels: int = Field(4, ge=1)
    """Channels of the tiny VAE's latents."""
    num_layers: int = Field(4, ge=1)
    """Joint (double-stream) transformer blocks."""
    num_single_layers: int = Field(2, ge=0)
    """Single-stream blocks (Flux only)."""
    num_heads: int = Field(4, ge=1)
    """Attention heads of the tiny transformer."""
    head_dim: int = Field(16, ge=8)
    """Width of each of those heads (transformer width = num_heads * head_dim)."""
    text_dim: int = Field(32, ge=8)
    """Width of each tiny text encoder (CLIP); T5's width is twice this."""
    text_layers: int = Field(2, ge=2)
    """Text-encoder layers (>= 2: SD3 reads CLIP's penultimate hidden state)."""
    text_heads: int = Field(2, ge=1)
    """Attention heads of each tiny text encoder."""
    max_text_tokens: int = Field(16, ge=4)
    """Tokenizer length (CLIP context and T5 ``max_sequence_length`` of the tiny models)."""

    @model_validator(mode="after")
    def _divisible(self) -> TinyModelConfig:
        bad = [c for c in self.vae_channels if c % self.vae_groups]
        if bad:
            raise ValueError(f"vae_channels {self.vae_channels} must all be divisible by vae_groups={self.vae_groups}")
        return self


class DiffusersConfig(Strict):
    """How an SD3 / FLUX.1 Kontext / LTX-2 backbone is loaded and run (ignored by toy2d)."""

    pretrained: str | None = None
    """Local diffusers directory or hub id of the base pipeline; None = ``pretrain.checkpoint``
    (the in-repo tiny base that ``paretoslider pretrain`` makes)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of a hub-id ``pretrained``; None = ``main``. A registered
    model pins the commit it resolved to on the registering host (ignored for local directories)."""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Weights dtype of the frozen base (LoRA and preference modules follow it)."""
    gradient_checkpointing: bool = False
    """Recompute transformer blocks in the backward pass (learner only)."""
    height: int = Field(32, ge=8)
    """Generated image / video height in pixels."""
    width: int = Field(32, ge=8)
    """Generated image / video width in pixels."""
    num_frames: int = Field(9, ge=1)
    """Generated video frames (ltx2 only; image kinds ignore it). ``num_frames - 1`` must be a multiple
    of the video VAE's temporal compression (LTX-2: 8, so 9, 17, ..., 121)."""
    frame_rate: float = Field(24.0, gt=0)
    """Frames per second of the generated video (ltx2 only): sets the audio length and the time scale
    of the video positions, as ``LTX2Pipeline(frame_rate=...)``."""
    max_sequence_length: int = Field(16, ge=1)
    """Prompt tokens of the T5 (SD3, Flux) or Gemma (LTX-2) text encoder."""
    guidance: float | None = None
    """Distilled guidance fed to the transformer (FLUX.1 Kontext dev: 2.5); None if it has none."""
    decode_batch_size: int = Field(16, ge=1)
    """Samples per VAE decode call (video VAEs are the memory-heavy case: LTX-2 decodes few at a time)."""


def _attention_projections() -> list[str]:
    return ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


class ModelConfig(Strict):
    """The policy network and how it is adapted during RL."""

    kind: Literal["toy2d", "sd3", "flux_kontext", "ltx2"] = "toy2d"
    """Backbone family: the toy2d MLP, or a diffusers transformer (see ``policies/diffusers_backbones.py``)."""
    hidden_dim: int = Field(128, ge=8, le=8192)
    """Width of the toy2d MLP."""
    num_blocks: int = Field(3, ge=1, le=64)
    """Residual MLP blocks in the toy2d network."""
    time_embed_dim: int = Field(64, ge=4)
    """Sinusoidal time-embedding size (before the MLP that lifts it to ``hidden_dim``)."""
    pref_hidden_dim: int = Field(64, ge=4)
    """Hidden width of the preference encoder and the slider projector."""
    lora_rank: int = Field(16, ge=0)
    """LoRA rank via peft on the backbone's linear layers; 0 trains every backbone weight."""
    lora_alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator (scale = alpha / rank)."""
    lora_targets: list[str] = Field(default_factory=lambda: ["fc1", "fc2", "in_proj", "out_proj"])
    """Module names that get LoRA adapters, matched as name suffixes inside the transformer only.
    Diffusers kinds default to the attention projections; SD3 to those of the joint attention ``attn.*``
    only, as the reference (SD3.5's dual-attention blocks keep their second, image-only ``attn2`` frozen)."""
    lora_init: Literal["default", "gaussian"] = "default"
    """peft ``init_lora_weights``: ``default`` (Kaiming-uniform A, zero B) or ``gaussian`` (A ~ N(0, 1/r),
    zero B: the reference's). Either way the adapted model starts exactly at the base."""
    diffusers: DiffusersConfig = Field(default_factory=DiffusersConfig)
    """How a diffusers backbone is loaded and run (ignored by toy2d)."""
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    """Architecture of the tiny base ``paretoslider pretrain`` builds when ``diffusers.pretrained`` is None."""

    @model_validator(mode="after")
    def _diffusers_lora_targets(self) -> ModelConfig:
        if self.kind != "toy2d" and "lora_targets" not in self.model_fields_set:
            names = _attention_projections()
            self.__dict__["lora_targets"] = [f"attn.{n}" for n in names] if self.kind == "sd3" else names
        return self

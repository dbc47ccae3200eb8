"""SD3 / SD3.5 and FLUX.1 Kontext backbones on diffusers components.

A backbone is a ``torch.nn.Module`` with (toy2d follows the same interface):

- ``forward(x, t, w=None, cond=None) -> v``: velocity at latents ``x [B, C, h, w]``, time ``t [B]``
  (1 = noise, ``x_t = (1-t) x0 + t eps``, ``v = eps - x0``, as diffusers' flow-match models);
- ``encode_condition(prompts, source_images) -> Condition``: text encoders (and VAE for sources);
- ``decode(latents) -> [B, H, W, 3]`` float in [0, 1]; ``sample_shape``: one latent's shape;
- ``lora_target_modules(names)``: what peft adapts (attention projections of the transformer only).

The preference modules attach to the unmodified diffusers transformer through forward hooks: one on
the timestep(+pooled text) embedding adds ``embedding_delta(w)``, one on every block adds the slider
``residual(w)`` to the image stream. Without ``w`` the hooks return the outputs untouched, so the
result is the base model's, bit for bit.
"""

from __future__ import annotations

import abc
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from infra.config import ModelConfig
from policies.batch import Condition
from policies.conditioning import PreferenceConditioning

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DECODE_CHUNK = 16
"""Latents decoded per VAE call (bounds the decoder's activation memory on a GPU)."""


class DiffusersBackbone(nn.Module, abc.ABC):
    """Preference hooks, LoRA targets, checkpointing and VAE I/O shared by the diffusers backbones."""

    pipeline_class: str
    transformer_class: str
    block_lists: tuple[str, ...] = ("transformer_blocks",)
    """Transformer attributes holding blocks that return ``(encoder_hidden_states, hidden_states)``."""

    def __init__(self, transformer: nn.Module, pipe, vae_config: dict, num_objectives: int,
                 model_cfg: ModelConfig):
        super().__init__()
        self.cfg = model_cfg.diffusers
        self._vae_config = vae_config
        self.transformer = transformer
        dim = self.stream_dim()
        with torch.random.fork_rng():
            torch.manual_seed(0)  # same preference-module init on every actor and rank, whatever loaded before
            self.pref = PreferenceConditioning(num_objectives, dim, dim, model_cfg.pref_hidden_dim)
        # Text encoders and VAE (rollout side only): registered so .to(device) moves them, frozen.
        self._pipe = pipe
        self.encoders = nn.ModuleDict({} if pipe is None else {
            name: module for name, module in pipe.components.items()
            if isinstance(module, nn.Module) and name != "transformer"})
        self.encoders.requires_grad_(False)
        self._active: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self.time_embedding().register_forward_hook(self._add_embedding_delta)
        for attr in self.block_lists:
            for block in getattr(transformer, attr):
                block.register_forward_hook(self._add_residual)
        if self.cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing(gradient_checkpointing_func=self._checkpoint)

    def train(self, mode: bool = True) -> DiffusersBackbone:
        super().train(mode)
        self.encoders.eval()  # frozen: T5's dropout must never make a prompt's encoding random
        return self

    # ---- what a subclass provides ---------------------------------------------------------------
    def time_embedding(self) -> nn.Module:
        return self.transformer.time_text_embed

    def stream_dim(self) -> int:
        c = self.transformer.config
        return c.num_attention_heads * c.attention_head_dim

    @abc.abstractmethod
    def _velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The transformer's velocity for latents ``x`` at times ``t`` under ``cond``."""

    @abc.abstractmethod
    def _encode_prompts(self, prompts: list[str]) -> Condition:
        """Text (and pooled) embeddings of ``prompts``."""

    # ---- the interface ------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def sample_shape(self) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return (self.latent_channels, self.cfg.height // f, self.cfg.width // f)

    def forward(self, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None = None,
                cond: Condition | None = None) -> torch.Tensor:
        self._active = (self.pref.embedding_delta(w), self.pref.residual(w))
        try:
            return self._velocity(x.to(self.dtype), t.to(self.dtype), cond).float()
        finally:
            self._active = (None, None)

    def lora_target_modules(self, names: list[str]) -> str:
        """A peft regex: the named projections inside the transformer (never the VAE's attention)."""
        return rf"transformer\..*\.({'|'.join(re.escape(n) for n in names)})"

    @torch.no_grad()
    def encode_condition(self, prompts: list[str], source_images: np.ndarray | None = None) -> Condition:
        cond = self._encode_prompts(prompts)
        if source_images is not None:
            cond.source = self.encode_images(torch.as_tensor(source_images))
        return cond

    # ---- VAE ------------------------------------------------------------------------------------------
    @property
    def vae(self):
        return self.encoders["vae"]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self._vae_config["block_out_channels"]) - 1)

    @property
    def latent_channels(self) -> int:
        return self._vae_config["latent_channels"]

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, 3]`` in [0, 1] -> model-space latents ``(z - shift) * scale`` (posterior mode)."""
        vae = self.vae
        x = (images.permute(0, 3, 1, 2) * 2 - 1).to(vae.device, vae.dtype)
        z = vae.encode(x).latent_dist.mode()
        return ((z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> ``[B, H, W, 3]`` float32 images in [0, 1]."""
        vae = self.vae
        out = []
        for chunk in latents.split(DECODE_CHUNK):
            z = chunk.to(vae.device, vae.dtype) / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
            out.append((vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1))
        return torch.cat(out)

    # ---- hooks ----------------------------------------------------------------------------------------
    def _add_embedding_delta(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        delta = self._active[0]
        return output if delta is None else output + delta.to(output.dtype)

    def _add_residual(self, module: nn.Module, args, output):
        residual = self._active[1]
        if residual is None:
            return output
        context, hidden = output
        return context, hidden + residual.to(hidden.dtype)[:, None, :]

    def _checkpoint(self, block: nn.Module, *args):
        # The backward pass re-runs the block after forward() has cleared ``_active``; the recompute
        # must see the same w as the first run, so it is captured here and restored inside.
        active = self._active

        def run(*inner):
            saved, self._active = self._active, active
            try:
                return block(*inner)
            finally:
                self._active = saved

        return checkpoint(run, *args, use_reentrant=False)

    # ---- loading ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, num_objectives: int, model_cfg: ModelConfig,
                        encoders: bool = True) -> DiffusersBackbone:
        """Load the transformer (and, for rollouts, text encoders + VAE) of a diffusers pipeline.

        ``path`` is a local directory or a hub id, as for ``<Pipeline>.from_pretrained``. The learner
        passes ``encoders=False``: it trains on conditions the rollout actors already encoded.
        """
        import diffusers

        dtype = DTYPES[model_cfg.diffusers.dtype]
        transformer = getattr(diffusers, cls.transformer_class).from_pretrained(
            str(path), subfolder="transformer", dtype=dtype)
        pipe = None
        if encoders:
            pipe = getattr(diffusers, cls.pipeline_class).from_pretrained(
                str(path), transformer=transformer, dtype=dtype)
            pipe.set_progress_bar_config(disable=True)
        vae_config = dict(diffusers.AutoencoderKL.load_config(str(path), subfolder="vae"))
        return cls(transformer, pipe, vae_config, num_objectives, model_cfg)


class SD3Backbone(DiffusersBackbone):
    """``SD3Transformer2DModel`` + CLIP-L/G + T5 + ``AutoencoderKL`` (SD3 / SD3.5)."""

    pipeline_class = "StableDiffusion3Pipeline"
    transformer_class = "SD3Transformer2DModel"

    def _encode_prompts(self, prompts: list[str]) -> Condition:
        text, _, pooled, _ = self._pipe.encode_prompt(
            prompts, None, None, device=self.vae.device, do_classifier_free_guidance=False,
            max_sequence_length=self.cfg.max_sequence_length)
        return Condition(text=text.float(), pooled=pooled.float())

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        # diffusers' SD3 takes the timestep in [0, 1000] (the pipeline feeds scheduler.timesteps).
        return self.transformer(hidden_states=x, timestep=t * 1000, encoder_hidden_states=cond.text.to(x.dtype),
                                pooled_projections=cond.pooled.to(x.dtype), return_dict=False)[0]


class FluxKontextBackbone(DiffusersBackbone):
    """``FluxTransformer2DModel`` with the source-image latents as extra tokens (FLUX.1 Kontext)."""

    pipeline_class = "FluxKontextPipeline"
    transformer_class = "FluxTransformer2DModel"
    block_lists = ("transformer_blocks", "single_transformer_blocks")

    def _encode_prompts(self, prompts: list[str]) -> Condition:
        text, pooled, _ = self._pipe.encode_prompt(prompts, None, device=self.vae.device,
                                                   max_sequence_length=self.cfg.max_sequence_length)
        return Condition(text=text.float(), pooled=pooled.float())

    @staticmethod
    def _pack(z: torch.Tensor) -> torch.Tensor:
        from diffusers import FluxKontextPipeline

        b, c, h, w = z.shape
        return FluxKontextPipeline._pack_latents(z, b, c, h, w)

    @staticmethod
    def _ids(h: int, w: int, frame: int, device, dtype) -> torch.Tensor:
        from diffusers import FluxKontextPipeline

        ids = FluxKontextPipeline._prepare_latent_image_ids(1, h // 2, w // 2, device, dtype)
        ids[..., 0] = frame  # Kontext: 0 for the generated image, 1 for the source (as the pipeline does)
        return ids

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens, ids = self._pack(x), self._ids(h, w, 0, x.device, x.dtype)
        n = tokens.shape[1]
        if cond.source is not None:
            src = cond.source.to(x.dtype)
            tokens = torch.cat([tokens, self._pack(src)], dim=1)
            ids = torch.cat([ids, self._ids(src.shape[2], src.shape[3], 1, x.device, x.dtype)])
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.cfg.guidance or 1.0, device=x.device, dtype=x.dtype)
        txt_ids = torch.zeros(cond.text.shape[1], 3, device=x.device, dtype=x.dtype)
        out = self.transformer(hidden_states=tokens, timestep=t, guidance=guidance,
                               pooled_projections=cond.pooled.to(x.dtype), encoder_hidden_states=cond.text.to(x.dtype),
                               txt_ids=txt_ids, img_ids=ids, return_dict=False)[0][:, :n]
        # Unpack [B, (h/2)(w/2), 4c] -> [B, c, h, w] (the inverse of _pack_latents).
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


BACKBONES: dict[str, type[DiffusersBackbone]] = {"sd3": SD3Backbone, "flux_kontext": FluxKontextBackbone}


def load_diffusers_backbone(model_cfg: ModelConfig, num_objectives: int, path: str | Path,
                            encoders: bool = True) -> DiffusersBackbone:
    """The backbone of ``model_cfg.kind`` from a diffusers pipeline directory or hub id."""
    return BACKBONES[model_cfg.kind].from_pretrained(path, num_objectives, model_cfg, encoders)

"""SD3 / SD3.5, FLUX.1 Kontext and LTX-2 backbones on diffusers components.

A backbone is a ``torch.nn.Module`` with (toy2d follows the same interface):

- ``forward(x, t, w=None, cond=None) -> v``: velocity at latents ``x [B, C, h, w]`` (LTX-2: ``[B, D]``,
  below), time ``t [B]`` (1 = noise, ``x_t = (1-t) x0 + t eps``, ``v = eps - x0``, as diffusers'
  flow-match models);
- ``encode_condition(prompts, source_images) -> Condition``: text encoders (and VAE for sources);
- ``decode(latents) -> [B, H, W, 3]`` (video ``[B, F, H, W, 3]``) float in [0, 1]; ``sample_shape``:
  one latent's shape;
- ``lora_target_modules(names)``: what peft adapts (attention projections of the transformer only).

The preference modules attach to the unmodified diffusers transformer through forward hooks: one on
the timestep(+pooled text) embedding adds ``embedding_delta(w)``, one on every block adds the slider
``residual(w)`` to the image stream. Without ``w`` the hooks return the outputs untouched, so the
result is the base model's, bit for bit.

LTX-2 (``LTX2Pipeline``) generates a video and its audio jointly: the transformer denoises both
streams in every call, each attending to the other. A sample is therefore one flat vector per video,
``[video tokens * C | audio tokens * C_a]``: the pipeline's own denoising state (normalised latents
packed into tokens, video then audio) laid end to end. The samplers, the losses and the SDE
log-probs treat it like any latent (their time broadcasts over any rank), so the policy learns the
joint distribution the base model samples, and the audio stream keeps the video on the base
model's manifold. ``decode`` returns the video frames only; rewards score pictures, so the audio
latents are never decoded (the pipeline's audio VAE and vocoder load but stay idle).
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
"""Latents decoded per VAE call (bounds the decoder's activation memory on a GPU)."""


class DiffusersBackbone(nn.Module, abc.ABC):
    """Preference hooks, LoRA targets, checkpointing and VAE I/O shared by the diffusers backbones."""

    pipeline_class: str
    transformer_class: str
    vae_class: str = "AutoencoderKL"
    """The diffusers class of the pipeline's ``vae`` (its config gives the latent geometry)."""
    block_lists: tuple[str, ...] = ("transformer_blocks",)
    """Transformer attributes holding blocks that return ``(encoder_hidden_states, hidden_states)``."""
    stream_output: int = 1
    """Where the image (video) stream sits in a block's output tuple; the slider residual goes there."""
    pipeline_passes_sigmas: bool = False
    """The pipeline calls ``scheduler.set_timesteps(sigmas=linspace(1, 1/N, N))`` (FLUX, LTX-2) rather
    than ``set_timesteps(N)`` (SD3)."""

    def __init__(self, transformer: nn.Module, pipe, vae_config: dict, num_objectives: int,
                 model_cfg: ModelConfig, scheduler_config: dict | None = None):
        super().__init__()
        self.cfg = model_cfg.diffusers
        self._vae_config = vae_config
        # None (a dry run's meta build): diffusers' default FlowMatchEulerDiscreteScheduler config.
        self._scheduler_config = dict(pipe.scheduler.config) if pipe is not None else dict(scheduler_config or {})
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
        """Text (and pooled) embeddings of ``prompts``, in the transformer's dtype (they are repeated per
        sample on the device and shipped to the learner: float32 copies of bf16 values double both)."""

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
            # t stays float32: the pipelines feed the scheduler's float32 timesteps whatever the weights'
            # dtype (in bf16, 1000 t would round to steps of 4).
            return self._velocity(x.to(self.dtype), t.float(), cond).float()
        finally:
            self._active = (None, None)

    def scheduler_sigmas(self, num_steps: int, shift: float) -> torch.Tensor:
        """``[num_steps + 1]`` sigmas (1 -> 0) of this pipeline's own scheduler, set as the pipeline sets
        them, with the static ``shift`` in place of the scheduler's (the presets give FLUX / LTX-2 the
        ``exp(mu)`` of their resolution, which equals the dynamic shift)."""
        import diffusers

        cls = getattr(diffusers, self._scheduler_config.get("_class_name", "FlowMatchEulerDiscreteScheduler"))
        scheduler = cls.from_config(self._scheduler_config, shift=shift, use_dynamic_shifting=False)
        if self.pipeline_passes_sigmas:
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps))
        else:
            scheduler.set_timesteps(num_steps)
        return scheduler.sigmas.float().cpu()

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
        for chunk in latents.split(self.cfg.decode_batch_size):
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
        output = list(output)
        hidden = output[self.stream_output]
        output[self.stream_output] = hidden + residual.to(hidden.dtype)[:, None, :]
        return tuple(output)

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

        dtype, revision = DTYPES[model_cfg.diffusers.dtype], model_cfg.diffusers.revision
        transformer = getattr(diffusers, cls.transformer_class).from_pretrained(
            str(path), subfolder="transformer", dtype=dtype, revision=revision)
        pipe = None
        if encoders:
            pipe = getattr(diffusers, cls.pipeline_class).from_pretrained(
                str(path), transformer=transformer, dtype=dtype, revision=revision)
            pipe.set_progress_bar_config(disable=True)
        vae_config = dict(getattr(diffusers, cls.vae_class).load_config(str(path), subfolder="vae",
                                                                        revision=revision))
        scheduler_config = None
        if pipe is None:  # the learner: the scheduler's config alone gives its training time grid
            scheduler_config = dict(diffusers.FlowMatchEulerDiscreteScheduler.load_config(
                str(path), subfolder="scheduler", revision=revision))
        return cls(transformer, pipe, vae_config, num_objectives, model_cfg, scheduler_config)


class SD3Backbone(DiffusersBackbone):
    """``SD3Transformer2DModel`` + CLIP-L/G + T5 + ``AutoencoderKL`` (SD3 / SD3.5)."""

    pipeline_class = "StableDiffusion3Pipeline"
    transformer_class = "SD3Transformer2DModel"

    def _encode_prompts(self, prompts: list[str]) -> Condition:
        text, _, pooled, _ = self._pipe.encode_prompt(
            prompts, None, None, device=self.vae.device, do_classifier_free_guidance=False,
            max_sequence_length=self.cfg.max_sequence_length)
        return Condition(text=text.to(self.dtype), pooled=pooled.to(self.dtype))

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        # diffusers' SD3 takes the timestep in [0, 1000] (the pipeline feeds scheduler.timesteps).
        return self.transformer(hidden_states=x, timestep=t * 1000, encoder_hidden_states=cond.text.to(x.dtype),
                                pooled_projections=cond.pooled.to(x.dtype), return_dict=False)[0]


class FluxKontextBackbone(DiffusersBackbone):
    """``FluxTransformer2DModel`` with the source-image latents as extra tokens (FLUX.1 Kontext)."""

    pipeline_class = "FluxKontextPipeline"
    pipeline_passes_sigmas = True
    transformer_class = "FluxTransformer2DModel"
    block_lists = ("transformer_blocks", "single_transformer_blocks")

    def _encode_prompts(self, prompts: list[str]) -> Condition:
        text, pooled, _ = self._pipe.encode_prompt(prompts, None, device=self.vae.device,
                                                   max_sequence_length=self.cfg.max_sequence_length)
        return Condition(text=text.to(self.dtype), pooled=pooled.to(self.dtype))

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


class LTX2Backbone(DiffusersBackbone):
    """``LTX2VideoTransformer3DModel`` (joint video + audio) + Gemma 3 + text connectors + the LTX-2 VAEs.

    A sample is ``[video tokens * C | audio tokens * C_a]`` flat (see the module docstring); the
    transformer is called exactly as ``LTX2Pipeline.__call__`` calls it without guidance.
    """

    pipeline_class = "LTX2Pipeline"
    pipeline_passes_sigmas = True
    transformer_class = "LTX2VideoTransformer3DModel"
    vae_class = "AutoencoderKLLTX2Video"
    stream_output = 0  # LTX-2 blocks return (video, audio)

    def __init__(self, transformer: nn.Module, pipe, vae_config: dict, num_objectives: int,
                 model_cfg: ModelConfig, scheduler_config: dict | None = None):
        super().__init__(transformer, pipe, vae_config, num_objectives, model_cfg, scheduler_config)
        frames, ratio = self.cfg.num_frames, self.temporal_scale_factor
        if (frames - 1) % ratio:
            raise ValueError(f"model.diffusers.num_frames={frames}: num_frames - 1 must be a multiple of the "
                             f"video VAE's temporal compression {ratio} (e.g. {ratio + 1} or {2 * ratio + 1})")
        f = self.vae_scale_factor
        self.latent_grid = ((frames - 1) // ratio + 1, self.cfg.height // f, self.cfg.width // f)
        """Latent (frames, height, width) of the video stream."""
        c = transformer.config
        # LTX2Pipeline: round(seconds * sampling_rate / hop_length / audio VAE temporal compression);
        # the transformer's config holds the same three numbers for its audio positions.
        seconds = frames / self.cfg.frame_rate
        self.audio_frames = round(seconds * c.audio_sampling_rate / c.audio_hop_length / c.audio_scale_factor)
        """Audio latent frames (tokens) that go with ``num_frames`` video frames."""
        lf, lh, lw = self.latent_grid
        self._video_tokens = (lf // c.patch_size_t) * (lh // c.patch_size) * (lw // c.patch_size)

    def time_embedding(self) -> nn.Module:
        # The video stream's timestep embedding, before adaLN-single turns it into the blocks'
        # modulation and the output layer's shift/scale: both see the delta.
        return self.transformer.time_embed.emb

    # Both ratios as AutoencoderKLLTX2Video.__init__ sets them: the config's value, else its formula.
    @property
    def vae_scale_factor(self) -> int:
        c = self._vae_config
        return c.get("spatial_compression_ratio") or c["patch_size"] * 2 ** sum(c["spatio_temporal_scaling"])

    @property
    def temporal_scale_factor(self) -> int:
        c = self._vae_config
        return c.get("temporal_compression_ratio") or c["patch_size_t"] * 2 ** sum(c["spatio_temporal_scaling"])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        c = self.transformer.config
        return (self._video_tokens * c.in_channels + self.audio_frames * c.audio_in_channels,)

    def _encode_prompts(self, prompts: list[str]) -> Condition:
        pipe = self._pipe
        embeds, mask, _, _ = pipe.encode_prompt(prompts, None, do_classifier_free_guidance=False,
                                                max_sequence_length=self.cfg.max_sequence_length,
                                                device=self.vae.device)
        video, audio, mask = pipe.connectors(embeds, mask, padding_side=getattr(pipe.tokenizer, "padding_side", "left"))
        return Condition(text=video.to(self.dtype), audio_text=audio.to(self.dtype), text_mask=mask.float())

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat samples -> packed video tokens ``[B, N, C]`` and audio tokens ``[B, L, C_a]``."""
        c, b = self.transformer.config, x.shape[0]
        n = self._video_tokens * c.in_channels
        # Contiguous, as the pipeline's latents are: CPU matmul kernels on strided views can round differently.
        return (x[:, :n].reshape(b, -1, c.in_channels).contiguous(),
                x[:, n:].reshape(b, -1, c.audio_in_channels).contiguous())

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        tr, b = self.transformer, x.shape[0]
        video, audio = self._split(x)
        lf, lh, lw = self.latent_grid
        fps = self.cfg.frame_rate
        timestep = t * 1000  # the pipeline feeds scheduler.timesteps = sigmas * 1000, also as ``sigma``
        mask = cond.text_mask.to(x.dtype)
        v_video, v_audio = tr(
            hidden_states=video, audio_hidden_states=audio, encoder_hidden_states=cond.text.to(x.dtype),
            audio_encoder_hidden_states=cond.audio_text.to(x.dtype), timestep=timestep, sigma=timestep,
            encoder_attention_mask=mask, audio_encoder_attention_mask=mask, num_frames=lf, height=lh, width=lw,
            fps=fps, audio_num_frames=self.audio_frames,
            video_coords=tr.rope.prepare_video_coords(b, lf, lh, lw, x.device, fps=fps),
            audio_coords=tr.audio_rope.prepare_audio_coords(b, self.audio_frames, x.device),
            isolate_modalities=False, spatio_temporal_guidance_blocks=None, perturbation_mask=None,
            use_cross_timestep=True, return_dict=False)
        return torch.cat([v_video.flatten(1), v_audio.flatten(1)], dim=1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        raise ValueError("model.kind='ltx2' is text-to-video: it takes no source images (data.kind='shapes_edit')")

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Samples -> video frames ``[B, F, H, W, 3]`` float32 in [0, 1] (the audio is not decoded)."""
        from diffusers import LTX2Pipeline

        vae, c = self.vae, self.transformer.config
        out = []
        for chunk in latents.split(self.cfg.decode_batch_size):
            video, _ = self._split(chunk.to(vae.device))
            z = LTX2Pipeline._unpack_latents(video, *self.latent_grid, c.patch_size, c.patch_size_t)
            z = LTX2Pipeline._denormalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
            # The pipeline's default decode_timestep is 0 with no decode noise.
            timestep = torch.zeros(len(z), device=vae.device, dtype=vae.dtype) if vae.config.timestep_conditioning \
                else None
            frames = vae.decode(z.to(vae.dtype), timestep, return_dict=False)[0]  # [B, 3, F, H, W] in [-1, 1]
            out.append((frames.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1))
        return torch.cat(out)


BACKBONES: dict[str, type[DiffusersBackbone]] = {"sd3": SD3Backbone, "flux_kontext": FluxKontextBackbone,
                                                 "ltx2": LTX2Backbone}


def load_diffusers_backbone(model_cfg: ModelConfig, num_objectives: int, path: str | Path,
                            encoders: bool = True) -> DiffusersBackbone:
    """The backbone of ``model_cfg.kind`` from a diffusers pipeline directory or hub id."""
    return BACKBONES[model_cfg.kind].from_pretrained(path, num_objectives, model_cfg, encoders)

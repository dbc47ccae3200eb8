"""Tiny SD3 / FLUX.1 Kontext / LTX-2 checkpoints built from configs, offline, in the hub layout.

A tiny checkpoint is a directory that ``diffusers`` loads exactly like the full model's hub repo
(``model_index.json`` + one subfolder per component), so tests and the CPU shapes world go through
the same ``from_pretrained`` path a user of the full models does. The text encoders are real
transformers classes (CLIP, T5, Gemma 3) with small widths; their tokenizer is a word-level
``PreTrainedTokenizerFast`` built here from a word list — no download, no sentencepiece file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from infra.config import TinyModelConfig

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)

BASIC_WORDS = ("a an the on in of with make turn change into to and is it background image photo video "
               "scene shape object small large big left right top bottom").split()


def word_tokenizer(words: list[str], max_length: int):
    """A word-level fast tokenizer: ``<bos> words <eos>``, lower-cased, unknown words -> ``<unk>``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in dict.fromkeys(w.lower() for w in [*BASIC_WORDS, *words]):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", BOS_ID), ("<eos>", EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=max_length)


def _clip_text(cfg: TinyModelConfig, vocab_size: int, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=cfg.text_dim, intermediate_size=2 * cfg.text_dim,
                            num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                            max_position_embeddings=cfg.max_text_tokens, projection_dim=cfg.text_dim,
                            pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _t5(cfg: TinyModelConfig, vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    heads = cfg.text_heads
    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // heads, d_ff=2 * d_model,
                      num_layers=cfg.text_layers, num_heads=heads, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
                      decoder_start_token_id=PAD_ID)
    return T5EncoderModel(config)


def _vae(cfg: TinyModelConfig, latent_channels: int):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.vae_channels),
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=cfg.vae_groups,
                         sample_size=cfg.image_size, scaling_factor=1.0, shift_factor=0.0,
                         use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False)


def _scheduler(shift: float):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=shift)


def build_tiny_sd3(cfg: TinyModelConfig, words: list[str]):
    """A ``StableDiffusion3Pipeline`` with tiny components (random weights)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = word_tokenizer(words, cfg.max_text_tokens)
    v = len(tokenizer)
    te1, te2 = _clip_text(cfg, v, True), _clip_text(cfg, v, True)
    joint_dim = 2 * cfg.text_dim  # the two CLIP hidden states are concatenated, then padded to T5's width
    te3 = _t5(cfg, v, joint_dim)
    latent_size = cfg.image_size // 2 ** (len(cfg.vae_channels) - 1)
    transformer = SD3Transformer2DModel(
        sample_size=latent_size, patch_size=2, in_channels=cfg.latent_channels, num_layers=cfg.num_layers,
        attention_head_dim=cfg.head_dim, num_attention_heads=cfg.num_heads, joint_attention_dim=joint_dim,
        caption_projection_dim=cfg.head_dim * cfg.num_heads, pooled_projection_dim=2 * cfg.text_dim,
        out_channels=cfg.latent_channels, pos_embed_max_size=latent_size, qk_norm="rms_norm")
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_scheduler(1.0), vae=_vae(cfg, cfg.latent_channels),
        text_encoder=te1, tokenizer=tokenizer, text_encoder_2=te2, tokenizer_2=tokenizer,
        text_encoder_3=te3, tokenizer_3=tokenizer)


def build_tiny_flux_kontext(cfg: TinyModelConfig, words: list[str]):
    """A ``FluxKontextPipeline`` with tiny components (random weights, no guidance embedding)."""
    from diffusers import FluxKontextPipeline, FluxTransformer2DModel

    tokenizer = word_tokenizer(words, cfg.max_text_tokens)
    v = len(tokenizer)
    head = cfg.head_dim
    rope = (head - 2 * (3 * head // 8), 3 * head // 8, 3 * head // 8)  # Flux: (16, 56, 56) for 128
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * cfg.latent_channels, num_layers=cfg.num_layers,
        num_single_layers=cfg.num_single_layers, attention_head_dim=head, num_attention_heads=cfg.num_heads,
        joint_attention_dim=2 * cfg.text_dim, pooled_projection_dim=cfg.text_dim, guidance_embeds=False,
        axes_dims_rope=rope)
    return FluxKontextPipeline(
        transformer=transformer, scheduler=_scheduler(1.0), vae=_vae(cfg, cfg.latent_channels),
        text_encoder=_clip_text(cfg, v, False), tokenizer=tokenizer,
        text_encoder_2=_t5(cfg, v, 2 * cfg.text_dim), tokenizer_2=tokenizer)


def _gemma3(cfg: TinyModelConfig, vocab_size: int):
    """A tiny ``Gemma3ForConditionalGeneration`` (what LTX-2 loads; its vision tower is never used)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    d, heads = cfg.text_dim, cfg.text_heads
    text = Gemma3TextConfig(vocab_size=vocab_size + 1, hidden_size=d, intermediate_size=2 * d,
                            num_hidden_layers=cfg.text_layers, num_attention_heads=heads, num_key_value_heads=1,
                            head_dim=d // heads, max_position_embeddings=4 * cfg.max_text_tokens,
                            sliding_window=cfg.max_text_tokens, pad_token_id=PAD_ID, bos_token_id=BOS_ID,
                            eos_token_id=EOS_ID)
    vision = SiglipVisionConfig(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=1, num_attention_heads=heads,
                                image_size=16, patch_size=8)
    # The image tokens get an id past the tokenizer's vocabulary: no prompt ever contains one.
    config = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                          image_token_index=vocab_size, boi_token_index=vocab_size, eoi_token_index=vocab_size)
    return Gemma3ForConditionalGeneration(config)


def build_tiny_ltx2(cfg: TinyModelConfig, words: list[str]):
    """An ``LTX2Pipeline`` with tiny components (random weights): the spatial and temporal VAE
    compression is 2 (32 px, 5 frames -> 16 x 16 x 3 latents), the audio VAE has 8 mel bins."""
    from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2Pipeline,
                           LTX2VideoTransformer3DModel)
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    tokenizer = word_tokenizer(words, cfg.max_text_tokens)
    text_encoder = _gemma3(cfg, len(tokenizer))
    heads, head = cfg.num_heads, cfg.head_dim
    audio_channels, mel_bins = 2, 8  # audio tokens carry latent_channels * mel_bins / 4 features
    transformer = LTX2VideoTransformer3DModel(
        in_channels=cfg.latent_channels, out_channels=cfg.latent_channels, num_attention_heads=heads,
        attention_head_dim=head, cross_attention_dim=heads * head, audio_in_channels=audio_channels * mel_bins // 4,
        audio_out_channels=audio_channels * mel_bins // 4, audio_num_attention_heads=heads,
        audio_attention_head_dim=head // 2, audio_cross_attention_dim=heads * head // 2, num_layers=cfg.num_layers,
        caption_channels=cfg.text_dim, vae_scale_factors=(2, 2, 2), rope_double_precision=False, rope_type="split")
    text_heads, text_head = cfg.text_heads, cfg.text_dim // cfg.text_heads  # connectors keep Gemma's width
    connectors = LTX2TextConnectors(
        caption_channels=cfg.text_dim, text_proj_in_factor=cfg.text_layers + 1,
        video_connector_num_attention_heads=text_heads, video_connector_attention_head_dim=text_head,
        video_connector_num_layers=1, video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=text_heads, audio_connector_attention_head_dim=text_head,
        audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_double_precision=False,
        rope_type="split")
    vae = AutoencoderKLLTX2Video(
        latent_channels=cfg.latent_channels, block_out_channels=(cfg.vae_channels[0],),
        decoder_block_out_channels=(cfg.vae_channels[0],), layers_per_block=(1,), decoder_layers_per_block=(1, 1),
        spatio_temporal_scaling=(True,), decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False),
        downsample_type=("spatial",), upsample_residual=(False,), upsample_factor=(1,), patch_size=1, patch_size_t=1,
        decoder_causal=False)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, resolution=32,
        latent_channels=audio_channels, mel_bins=mel_bins)
    vocoder = LTX2Vocoder(in_channels=2 * mel_bins, hidden_channels=16, out_channels=2, upsample_kernel_sizes=[4, 4],
                          upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                          output_sampling_rate=16000)
    return LTX2Pipeline(scheduler=_scheduler(1.0), vae=vae, audio_vae=audio_vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, connectors=connectors, transformer=transformer, vocoder=vocoder)


TINY_BUILDERS = {"sd3": build_tiny_sd3, "flux_kontext": build_tiny_flux_kontext, "ltx2": build_tiny_ltx2}


def save_tiny(kind: str, cfg: TinyModelConfig, words: list[str], path: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline of ``kind`` with seeded random weights and ``save_pretrained`` it."""
    if kind not in TINY_BUILDERS:
        raise ValueError(f"no tiny builder for model.kind={kind!r}; known: {sorted(TINY_BUILDERS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pipe = TINY_BUILDERS[kind](cfg, words)
    pipe.save_pretrained(str(path))
    return Path(path)

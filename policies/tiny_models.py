"""Tiny SD3 / FLUX.1 Kontext checkpoints built from configs, offline, in the hub layout.

A tiny checkpoint is a directory that ``diffusers`` loads exactly like the full model's hub repo
(``model_index.json`` + one subfolder per component), so tests and the CPU shapes world go through
the same ``from_pretrained`` path a user of the full models does. The text encoders are real
transformers classes (CLIP, T5) with small widths; their tokenizer is a word-level
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


TINY_BUILDERS = {"sd3": build_tiny_sd3, "flux_kontext": build_tiny_flux_kontext}


def save_tiny(kind: str, cfg: TinyModelConfig, words: list[str], path: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline of ``kind`` with seeded random weights and ``save_pretrained`` it."""
    if kind not in TINY_BUILDERS:
        raise ValueError(f"no tiny builder for model.kind={kind!r}; known: {sorted(TINY_BUILDERS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pipe = TINY_BUILDERS[kind](cfg, words)
    pipe.save_pretrained(str(path))
    return Path(path)

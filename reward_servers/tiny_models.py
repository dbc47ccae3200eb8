"""Tiny reward models built from configs, saved with ``save_pretrained`` (no download, random weights).

Tests, the benchmark and CPU runs load these back through the same ``from_pretrained(local_dir)``
path the real checkpoints take: a Qwen2-VL judge (also servable by vLLM) and a CLIP model for the
CLIP / PickScore / aesthetic / perceptual rewards. The tokenizers are byte-level BPEs trained here,
offline, on a few sentences; digits are single tokens, as the judge's scoring needs.
"""

from __future__ import annotations

from pathlib import Path

import torch

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL's chat format; image parts come as {"type": "image"} (transformers, vLLM) or "image_url".
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "You are a strict judge of images. Rate the image on a scale from 0 to 9 and answer with one digit.",
    "How well does the image follow the prompt? a red circle on a blue background, a green square.",
    "Is the style consistent? Is the photo realistic? Was the edit applied? Is the rest preserved?",
    "0 1 2 3 4 5 6 7 8 9 score rubric instruction source edited image text rendering",
]


def _byte_bpe_tokenizer(special_tokens: list[str], vocab_size: int, eos: str, pad: str):
    """A byte-level BPE with single-digit tokens, trained on ``_CORPUS`` (offline, milliseconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad)


def build_tiny_qwen2_vl(path: str | Path, seed: int = 0) -> Path:
    """A ~1M-parameter Qwen2-VL (text hidden 128, 2 layers, head_dim 64) with processor, in ``path``.

    head_dim 64 because vLLM's CPU attention rejects 16; images are resized to 28..56 px, i.e. one to
    four visual tokens, so a forward pass takes milliseconds.
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    path = Path(path)
    tokenizer = _byte_bpe_tokenizer(QWEN_SPECIAL_TOKENS, 400, eos="<|im_end|>", pad="<|endoftext|>")
    tokenizer.padding_side = "left"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=1, embed_dim=64, num_heads=1, hidden_size=128, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
                           bos_token_id=text["bos_token_id"], eos_token_id=text["eos_token_id"])
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    # Random init gives near-uniform digit probabilities; a wider output layer makes scores differ
    # visibly between images, which the agreement tests need to mean something.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(path)
    # Saved as parts: Qwen2VLProcessor needs torchvision's video processor, which the CPU venv lacks.
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56})
    image_processor.save_pretrained(path)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def build_tiny_clip(path: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny CLIP (width 32, 2 layers, 8-px patches) with tokenizer and image processor, in ``path``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    path = Path(path)
    tokenizer = _byte_bpe_tokenizer(["<|endoftext|>", "<|startoftext|>"], 300, eos="<|endoftext|>",
                                    pad="<|endoftext|>")
    tokenizer.model_max_length = 64
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, projection_dim=32,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8, projection_dim=32),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path

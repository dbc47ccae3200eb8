"""CLIP-family rewards from a local checkpoint directory (transformers ``CLIPModel``).

- ``clip_score``: cosine similarity of the image and prompt embeddings, in [-1, 1].
- ``pickscore``: PickScore's ``logit_scale * cos`` on a PickScore-style fine-tuned CLIP; ``prefix``
  is prepended to every prompt (the paper's photorealism objective uses such a prefix).
- ``aesthetic``: a head on the unit-norm CLIP image embedding, read from a ``.safetensors`` file of
  consecutive linear layers applied in key order with no activations in between (the layout of
  LAION's improved aesthetic predictor, whose MLP has only dropout between its linears).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from reward_servers.base import RewardInputs
from reward_servers.codecs import as_images, to_pil
from reward_servers.registry import register


def local_dir(path: str, arg: str) -> str:
    """``path`` if it is an existing directory; nothing is downloaded at run time."""
    if not Path(path).is_dir():
        raise ValueError(f"'{arg}' must be a local checkpoint directory, got {path!r} (nothing is downloaded)")
    return path


class ClipEncoder:
    """Unit-norm CLIP image and text embeddings."""

    def __init__(self, model: str, device: str = "cpu"):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.model = CLIPModel.from_pretrained(local_dir(model, "model")).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.image_processor = AutoImageProcessor.from_pretrained(model)
        self.device = device

    @torch.no_grad()
    def images(self, images: np.ndarray) -> torch.Tensor:
        pixels = self.image_processor(images=to_pil(as_images(images, "CLIP reward samples")), return_tensors="pt")
        emb = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
        return torch.nn.functional.normalize(_pooled(emb).float(), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        emb = self.model.get_text_features(**enc)
        return torch.nn.functional.normalize(_pooled(emb).float(), dim=-1)


def _pooled(out: object) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@register("clip_score")
class ClipScore:
    """Cosine similarity between the image and its prompt in CLIP space."""

    name = "clip_score"
    inputs = ("samples", "prompts")
    range = (-1.0, 1.0)
    direction = "max"

    def __init__(self, model: str, device: str = "cpu"):
        self.clip = ClipEncoder(model, device)

    def score(self, batch: RewardInputs) -> np.ndarray:
        return (self.clip.images(batch.samples) * self.clip.texts(batch.prompts)).sum(-1).cpu().numpy()


@register("pickscore")
class PickScore:
    """PickScore: ``logit_scale * cos(image, prefix + prompt)`` of a preference-tuned CLIP."""

    name = "pickscore"
    inputs = ("samples", "prompts")
    direction = "max"

    def __init__(self, model: str, prefix: str = "", device: str = "cpu"):
        self.clip = ClipEncoder(model, device)
        self.prefix = prefix
        self.scale = float(self.clip.model.logit_scale.exp())
        self.range = (-self.scale, self.scale)

    def score(self, batch: RewardInputs) -> np.ndarray:
        cos = (self.clip.images(batch.samples) * self.clip.texts([self.prefix + p for p in batch.prompts])).sum(-1)
        return (self.scale * cos).cpu().numpy()


@register("aesthetic")
class Aesthetic:
    """A linear-stack head (``head``: a ``.safetensors`` file) on unit-norm CLIP image embeddings."""

    name = "aesthetic"
    inputs = ("samples",)
    range = (-math.inf, math.inf)
    direction = "max"

    def __init__(self, model: str, head: str, device: str = "cpu"):
        from safetensors.torch import load_file

        if not Path(head).is_file():
            raise ValueError(f"'head' must be a local .safetensors file, got {head!r}")
        self.clip = ClipEncoder(model, device)
        tensors = load_file(head, device=device)
        prefixes = sorted({k.rsplit(".", 1)[0] for k in tensors if k.endswith(".weight")}, key=_natural)
        if not prefixes:
            raise ValueError(f"'head' file {head} has no '<layer>.weight' tensors (got {sorted(tensors)})")
        self.layers = [(tensors[f"{p}.weight"].float(), tensors.get(f"{p}.bias")) for p in prefixes]

    @torch.no_grad()
    def score(self, batch: RewardInputs) -> np.ndarray:
        x = self.clip.images(batch.samples)
        for weight, bias in self.layers:
            x = torch.nn.functional.linear(x, weight, None if bias is None else bias.float())
        return x.reshape(len(batch)).cpu().numpy()


def _natural(key: str) -> list[object]:
    """Sort ``layers.10`` after ``layers.2``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]

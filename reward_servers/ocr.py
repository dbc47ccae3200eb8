"""Text-rendering reward (Flow-GRPO's OCR task) with RapidOCR, whose ONNX weights ship in its package.

The target is the text in double quotes in the prompt (the whole prompt if it has none). Both the
target and the recognised text are lower-cased with spaces removed;
``score = max(0, 1 - levenshtein(recognised, target) / len(target))`` in [0, 1].
"""

from __future__ import annotations

import re

import numpy as np

from reward_servers.base import RewardInputs
from reward_servers.codecs import as_images, to_uint8
from reward_servers.registry import register


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) by the two-row dynamic programme."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def target_text(prompt: str) -> str:
    """The quoted text of ``prompt`` (all quoted parts, joined), else the prompt itself."""
    quoted = re.findall(r'"([^"]*)"', prompt)
    return " ".join(quoted) if quoted else prompt


def _norm(text: str) -> str:
    return text.replace(" ", "").lower()


@register("ocr")
class Ocr:
    """How exactly the image renders the prompt's quoted text (1 = exact, 0 = nothing of it)."""

    name = "ocr"
    inputs = ("samples", "prompts")
    range = (0.0, 1.0)
    direction = "max"

    def __init__(self, min_confidence: float = 0.0):
        from rapidocr_onnxruntime import RapidOCR

        self.engine = RapidOCR()
        self.min_confidence = min_confidence

    def read(self, image: np.ndarray) -> str:
        """Recognised text of one uint8 ``[H, W, 3]`` image, lines in reading order."""
        lines, _ = self.engine(image)
        return " ".join(text for _, text, conf in lines or [] if float(conf) >= self.min_confidence)

    def score(self, batch: RewardInputs) -> np.ndarray:
        images = to_uint8(as_images(batch.samples, "ocr samples"))
        out = []
        for image, prompt in zip(images, batch.prompts):
            target = _norm(target_text(prompt))
            if not target:
                raise ValueError(f"ocr: prompt {prompt!r} has no text to render")
            out.append(max(0.0, 1.0 - levenshtein(_norm(self.read(image)), target) / len(target)))
        return np.array(out, dtype=np.float32)

"""Prompt sets that drive the groups: what each ``prompt_idx`` of a group id means.

- ``none``: the unconditional toy2d world; a prompt index is only a slot number;
- ``shapes``: the 54 captions of the shapes world (text-to-image);
- ``shapes_edit``: ``data.num_prompts`` procedural edits (instruction + source image), seeded;
- ``file``: one prompt per line of a text file, or JSON lines ``{"prompt": ..., "source_image": path}``.

Evaluation prompts are a fixed list apart from the training draw (held-out edits for shapes_edit).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.config import Config, DataConfig
from policies import shapes


@dataclass(frozen=True)
class PromptRecord:
    prompt: str
    source_image: np.ndarray | None = None
    """``[H, W, 3]`` float32 in [0, 1] (editing)."""


class PromptSet:
    """``len(set)`` prompts, ``set[i]`` is a :class:`PromptRecord` (deterministic in ``i``)."""

    def __init__(self, data: DataConfig, size: tuple[int, int], unconditional_count: int):
        self.data, self.size = data, size
        if data.kind == "none":
            self.count = unconditional_count
        elif data.kind == "shapes":
            self.captions = shapes.caption_grid()
            self.count = len(self.captions)
        elif data.kind == "shapes_edit":
            if size[0] != size[1]:
                raise ValueError(f"shapes_edit renders square images; model.diffusers height/width are {size}")
            self.count = data.num_prompts
        else:
            self.lines = _read_prompt_file(data.path)
            self.count = len(self.lines)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> PromptRecord:
        kind = self.data.kind
        if kind == "none":
            return PromptRecord("")
        if kind == "shapes":
            return PromptRecord(self.captions[i % len(self.captions)])
        if kind == "shapes_edit":
            instruction, source, _ = shapes.edit_example(np.random.default_rng([self.data.seed, i]), self.size[0])
            return PromptRecord(instruction, source)
        entry = self.lines[i]
        source = None
        if entry.get("source_image"):
            from PIL import Image

            img = Image.open(entry["source_image"]).convert("RGB").resize((self.size[1], self.size[0]))
            source = np.asarray(img, dtype=np.float32) / 255.0
        return PromptRecord(entry["prompt"], source)

    def eval_indices(self) -> list[int]:
        """Evaluation prompts: for shapes_edit, edits past the training range (held out)."""
        n = self.data.eval_prompts
        if self.data.kind == "none":
            return [0]  # unconditional: one group; more would only repeat it
        if self.data.kind == "shapes_edit":
            return list(range(self.count, self.count + n))
        return [int(i) for i in np.linspace(0, self.count - 1, n).round()] if self.count > 1 else [0] * n


@functools.lru_cache(maxsize=8)
def _read_prompt_file(path: str | None) -> list[dict]:
    if path is None or not Path(path).is_file():
        raise ValueError(f"data.path must name a prompt file for data.kind='file', got {path!r}")
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            out.append(json.loads(line) if line.startswith("{") else {"prompt": line})
    if not out:
        raise ValueError(f"prompt file {path} holds no prompts")
    return out


def prompt_set(cfg: Config) -> PromptSet:
    d = cfg.model.diffusers
    return PromptSet(cfg.data, (d.height, d.width), cfg.rollout.prompts_per_step)

"""Prompt sets that drive the groups: what each ``prompt_idx`` of a group id means.

- ``none``: the unconditional toy2d world; a prompt index is only a slot number;
- ``shapes``: the 54 captions of the shapes world (text-to-image);
- ``shapes_edit``: ``data.num_prompts`` procedural edits (instruction + source image), seeded;
- ``file``: one prompt per line of a text file, JSON lines ``{"prompt": ..., "source_image": path}``, or a
  ``.parquet`` with a ``prompt`` column and an optional ``source_image`` column (path or image bytes),
  read a batch of ``data.parquet_batch_rows`` rows at a time, never whole.

Evaluation prompts are a fixed list apart from the training draw (held-out edits for shapes_edit).
"""

from __future__ import annotations

import bisect
import functools
import io
import itertools
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
        elif data.path is not None and data.path.endswith(".parquet"):
            self.rows = _parquet_prompts(data.path, data.parquet_batch_rows)
            self.count = len(self.rows)
        else:
            self.rows = _read_prompt_file(data.path)
            self.count = len(self.rows)

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
        entry = self.rows[i]
        source = None
        if entry.get("source_image"):
            from PIL import Image

            image = entry["source_image"]
            img = Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)
            img = img.convert("RGB").resize((self.size[1], self.size[0]))
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


def _check_is_file(path: str | None) -> None:
    if path is None or not Path(path).is_file():
        raise ValueError(f"data.path must name a prompt file for data.kind='file', got {path!r}")


@functools.lru_cache(maxsize=8)
def _read_prompt_file(path: str | None) -> list[dict]:
    _check_is_file(path)
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            out.append(json.loads(line) if line.startswith("{") else {"prompt": line})
    if not out:
        raise ValueError(f"prompt file {path} holds no prompts")
    return out


PARQUET_COLUMNS = {"prompt": "string", "source_image": "string (an image path) or binary (PNG / JPEG bytes)"}
"""The columns a parquet prompt set may have, and their types (``source_image`` is optional)."""


class ParquetPrompts:
    """The rows of a parquet prompt set as ``{"prompt", "source_image"}`` dicts, by index.

    Only the schema and row counts are read up front; ``rows[i]`` decodes the batch of ``batch_rows``
    rows holding ``i`` (streamed from the start of its row group: parquet pages decode in order) and
    keeps that one batch, so memory stays at one batch whatever the file's size.
    """

    def __init__(self, path: str, batch_rows: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path, self.batch_rows = path, batch_rows
        self.file = pq.ParquetFile(path)
        schema = self.file.schema_arrow
        allowed = ", ".join(f"{c}: {t}" for c, t in PARQUET_COLUMNS.items())
        unknown = [c for c in schema.names if c not in PARQUET_COLUMNS]
        problems = (["has no column 'prompt'"] if "prompt" not in schema.names else []) + (
            [f"has unknown column(s) {unknown}"] if unknown else [])
        if problems:
            what = " and ".join(problems)
            raise ValueError(f"data.path: parquet prompt set {path} {what} (its columns: {schema.names}); "
                             f"allowed columns: {allowed}")
        types = {"prompt": (pa.types.is_string, pa.types.is_large_string),
                 "source_image": (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                  pa.types.is_large_binary)}
        for name in schema.names:
            if not any(is_type(schema.field(name).type) for is_type in types[name]):
                raise ValueError(f"data.path: column '{name}' of parquet prompt set {path} is of type "
                                 f"{schema.field(name).type}; allowed columns: {allowed}")
        self.columns = schema.names
        sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
        self.group_starts = list(itertools.accumulate(sizes, initial=0))
        if self.group_starts[-1] == 0:
            raise ValueError(f"data.path: parquet prompt set {path} holds no prompts")
        self.batches_read = 0
        """Batches decoded so far (what streaming costs)."""
        self._batch: tuple[int, int, list[dict]] | None = None
        """(row group, first row in it, rows) of the batch decoded last."""

    def __len__(self) -> int:
        return self.group_starts[-1]

    def __getitem__(self, i: int) -> dict:
        group = bisect.bisect_right(self.group_starts, i) - 1
        offset = i - self.group_starts[group]
        cached = self._batch
        if cached is None or cached[0] != group or not cached[1] <= offset < cached[1] + len(cached[2]):
            start = 0
            for batch in self.file.iter_batches(batch_size=self.batch_rows, row_groups=[group], columns=self.columns):
                self.batches_read += 1
                if offset < start + batch.num_rows:
                    break
                start += batch.num_rows
            cached = self._batch = group, start, batch.to_pylist()
        row = cached[2][offset - cached[1]]
        if row["prompt"] is None:
            raise ValueError(f"data.path: row {i} of parquet prompt set {self.path} has a null prompt")
        return row


@functools.lru_cache(maxsize=8)
def _parquet_prompts(path: str, batch_rows: int) -> ParquetPrompts:
    _check_is_file(path)
    return ParquetPrompts(path, batch_rows)


def prompt_set(cfg: Config) -> PromptSet:
    d = cfg.model.diffusers
    return PromptSet(cfg.data, (d.height, d.width), cfg.rollout.prompts_per_step)

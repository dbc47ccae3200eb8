"""How images and batches look in memory and on the wire.

Image layout: ``RewardInputs.samples`` (and ``source_images``) hold images as float32
``[B, 3, H, W]`` in [0, 1], channels first, as a VAE decodes them. Rewards turn them into uint8
RGB once (``to_uint8``) so every backend of a judge sees the same pixels, whether it gets a PIL
image in-process or a PNG over HTTP (lossless).

Over HTTP, images travel as PNG (VLM servers) and batches as ``.npz`` (the reward servers' own
``/score`` route): numpy's format, loaded with ``allow_pickle=False``; never pickle.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from reward_servers.base import RewardInputs


def as_images(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` checked to be float images ``[B, 3, H, W]`` in [0, 1]; ``what`` names it in errors."""
    if array.ndim != 4 or array.shape[1] != 3:
        raise ValueError(f"{what} must be images [B, 3, H, W] (channels first), got shape {array.shape}")
    return array


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float ``[B, 3, H, W]`` in [0, 1] -> uint8 ``[B, H, W, 3]`` (rounded, clipped)."""
    return np.clip(np.rint(images.transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """Float ``[B, 3, H, W]`` in [0, 1] -> ``B`` RGB PIL images."""
    return [Image.fromarray(a, "RGB") for a in to_uint8(images)]


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_data_url(image: Image.Image) -> str:
    """The image as a ``data:image/png;base64,...`` URL (OpenAI-style chat content)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def encode_batch(inputs: RewardInputs, objectives: list[str] | None = None) -> bytes:
    """``inputs`` (and the objective labels to score, None = all) as ``.npz`` bytes."""
    arrays = {"samples": inputs.samples}
    if inputs.prompts is not None:
        arrays["prompts"] = np.array(inputs.prompts, dtype=np.str_)
    if inputs.source_images is not None:
        arrays["source_images"] = inputs.source_images
    if objectives is not None:
        arrays["objectives"] = np.array(objectives, dtype=np.str_)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_batch(data: bytes) -> tuple[RewardInputs, list[str] | None]:
    """Inverse of ``encode_batch``; raises ``ValueError`` on anything but a pickle-free ``.npz``."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            fields = {k: z[k] for k in z.files}
    except Exception as err:  # noqa: BLE001 - any parse failure is the caller's bad request
        raise ValueError(f"body is not a pickle-free .npz: {type(err).__name__}: {err}") from None
    if "samples" not in fields:
        raise ValueError(f"body has no 'samples' array (got {sorted(fields)})")
    prompts = fields.get("prompts")
    objectives = fields.get("objectives")
    inputs = RewardInputs(fields["samples"], None if prompts is None else [str(p) for p in prompts],
                          fields.get("source_images"))
    return inputs, None if objectives is None else [str(o) for o in objectives]


def encode_scores(scores: np.ndarray, labels: list[str]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, scores=np.asarray(scores, dtype=np.float32), labels=np.array(labels, dtype=np.str_))
    return buf.getvalue()


def decode_scores(data: bytes) -> tuple[np.ndarray, list[str]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return z["scores"], [str(s) for s in z["labels"]]

"""A request to a slider, checked: the preference put on the simplex, the prompt and source image
against what the model takes. ``InvalidRequest`` names the field (HTTP answers 422 with both)."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipelines.slider_artifact import ModelIO


@dataclass(frozen=True)
class GenerationSpec:
    """One checked request: the trade-off ``preference`` (on the simplex) and the sampling knobs."""

    preference: tuple[float, ...]
    seed: int
    steps: int
    num_samples: int = 1
    prompt: str = ""
    source_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    """Editing models: ``[H, W, 3]`` float32 in [0, 1] at the model's size (see ``check_inputs``)."""


class InvalidRequest(ValueError):
    """A request value that cannot be served; ``field`` names it (HTTP answers 422 with both)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def decode_image(data: str, max_side: int) -> Image.Image:
    """An RGB image from base64 PNG or JPEG (optionally a ``data:`` URL); ``InvalidRequest`` naming
    ``source_image`` if it is not one or is over ``max_side`` pixels a side."""
    from PIL import UnidentifiedImageError

    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(payload, validate=True)
        image = Image.open(io.BytesIO(raw))
        if max(image.size) > max_side:
            raise InvalidRequest("source_image", f"is {image.size[0]}x{image.size[1]}; the limit is "
                                 f"{max_side} pixels a side")
        image.load()
    except (binascii.Error, UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        if isinstance(err, InvalidRequest):
            raise
        raise InvalidRequest("source_image",
                             f"is not a base64 PNG or JPEG image ({err or type(err).__name__})") from None
    return image.convert("RGB")


def preference_on_simplex(value: list[float] | dict[str, float], labels: list[str]) -> tuple[float, ...]:
    """``w`` as a list in ``labels`` order or ``{label: weight}`` (missing labels weigh 0), checked
    and scaled onto the simplex."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(labels))
        if unknown:
            raise InvalidRequest("preference", f"unknown objective(s) {unknown}; objectives are {labels}")
        value = [value.get(label, 0.0) for label in labels]
    try:
        w = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidRequest("preference", f"must be {len(labels)} numbers, got {value!r}") from None
    if w.shape != (len(labels),):
        raise InvalidRequest("preference", f"needs {len(labels)} weights, one per objective {labels}; got {w.size}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise InvalidRequest("preference", f"weights must be finite and >= 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise InvalidRequest("preference", "at least one weight must be > 0")
    return tuple(float(x) for x in w / w.sum())


def check_inputs(kind: str, io_: ModelIO, size: tuple[int, int] | None, prompt: str, source_image: str | None,
                 max_side: int) -> np.ndarray | None:
    """A request's prompt and base64 source image against what a ``kind`` model takes.

    Returns the source image as ``[H, W, 3]`` float32 in [0, 1], converted to RGB and resized
    (stretched) to ``size`` (width, height), or None without one. ``InvalidRequest`` names the
    field: an undecodable image or one over ``max_side``, a source image for a model that edits
    none, a missing prompt or source image.
    """
    source = None
    if source_image is not None:
        image = decode_image(source_image, max_side)
        if not io_.uses_source_image:
            raise InvalidRequest("source_image", f"this {kind} model takes no source image")
        source = np.asarray(image.resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255
    require_inputs(kind, io_, prompt, source is not None)
    return source


def require_inputs(kind: str, io_: ModelIO, prompt: str, has_source: bool) -> None:
    if io_.uses_prompt and not prompt.strip():
        raise InvalidRequest("prompt", f"is required: this {kind} model generates from a text prompt")
    if io_.uses_source_image and not has_source:
        raise InvalidRequest("source_image", f"is required: this {kind} model edits a source image "
                             "(base64 PNG or JPEG)")

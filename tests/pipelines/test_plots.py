"""The sweep figures that are not matplotlib's: the animated strip of a video slider's sweep."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image, ImageSequence

from pipelines.plots import sweep_strip
from pipelines.slider_render import video_webp


def clip_batch(seed: int) -> SimpleNamespace:
    """A batch of two 5-frame 8 x 6 videos, uint8 [B, F, H, W, 3]."""
    gen = torch.Generator().manual_seed(seed)
    return SimpleNamespace(images=torch.randint(0, 256, (2, 5, 8, 6, 3), generator=gen, dtype=torch.uint8))


def test_the_strip_plays_every_swept_w_side_by_side_and_survives_webp_exactly():
    points = [clip_batch(s) for s in range(3)]
    sweep = SimpleNamespace(batches=points, base_batch=clip_batch(9))
    strip = sweep_strip(sweep)
    assert strip.shape == (5, 8, 4 * 6, 3) and strip.dtype == np.uint8
    for k, batch in enumerate([*points, sweep.base_batch]):  # column block k: batch k's first video
        assert np.array_equal(strip[:, :, 6 * k: 6 * (k + 1)], batch.images[0].numpy())
    played = Image.open(io.BytesIO(video_webp(strip, 24, 8, frame_rate=10.0)))
    frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(played)]
    assert len(frames) == 5 and all(np.array_equal(f, s) for f, s in zip(frames, strip))  # lossless

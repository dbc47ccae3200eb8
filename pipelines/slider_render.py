"""What the endpoint answers with: a slider output encoded as PNG (scatter, image, frame) or animated WebP."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from pipelines.plots import preference_colours


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def frames_png(video: np.ndarray, width: int, height: int) -> list[bytes]:
    """Each ``[H, W, 3]`` uint8 frame of ``video`` as a PNG of ``width`` x ``height``."""
    return [png(Image.fromarray(frame).resize((width, height))) for frame in np.asarray(video, dtype=np.uint8)]


def video_webp(video: np.ndarray, width: int, height: int, frame_rate: float) -> bytes:
    """``[F, H, W, 3]`` uint8 frames as a looping animated WebP at ``frame_rate``.

    Lossless, so a client decodes the generated pixels exactly (a few KB at the sizes served here);
    browsers play it in an ``<img>``, with no video codec on the server.
    """
    frames = [Image.fromarray(f).resize((width, height)) for f in np.asarray(video, dtype=np.uint8)]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], lossless=True, loop=0,
                   duration=max(1, round(1000 / frame_rate)))
    return buf.getvalue()


def scatter(points: np.ndarray, preference: tuple[float, ...], targets: list[tuple[str, list[float]]],
            lim: float, width: int, height: int) -> Image.Image:
    """The ``[N, 2]`` samples as dots coloured by ``preference`` over ``[-lim, lim]^2``, targets starred."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def px(x: float, y: float) -> tuple[float, float]:
        return (x + lim) / (2 * lim) * (width - 1), (lim - y) / (2 * lim) * (height - 1)

    draw.line([px(-lim, 0), px(lim, 0)], fill=(220, 220, 220))
    draw.line([px(0, -lim), px(0, lim)], fill=(220, 220, 220))
    # Darkened: the two-objective colour map is pale grey in the middle of the slider.
    colour = tuple(int(190 * c) for c in preference_colours(np.asarray([preference]))[0])
    r = max(1.0, min(width, height) / 160)
    for x, y in points:
        cx, cy = px(float(x), float(y))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    for name, (tx, ty) in targets:
        cx, cy = px(tx, ty)
        draw.regular_polygon((cx, cy, 3 * r + 3), 5, fill="black")
        left = cx > 0.7 * width  # keep labels near the right edge inside the picture
        x = cx - 3 * r - 5 - draw.textlength(name) if left else cx + 3 * r + 5
        draw.text((x, cy - 3 * r - 8), name, fill="black")
    return image

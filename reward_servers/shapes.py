"""Rewards of the shapes world: inputs are images ``[B, 3, H, W]`` float32 in [0, 1] (the reward
servers' layout); the analytic readers work channels last, as the renderer draws.

- ``shapes_adherence``: does the image show what the prompt asks for? Analytic, from
  ``policies.shapes.read_scene`` (no learned model): per requested attribute a soft match in [0, 1] —
  colour: ``exp(-d^2 / 2 s^2)`` of the RGB distance between the shape's mean colour and the named
  colour; shape: the same of the fill ratio against the named shape's; background: the same of the
  border colour — averaged. An image with no visible shape scores 0 on shape and colour.
- ``shapes_area``: share of the image covered by the shape (a size preference that competes with
  keeping the scene as described).
- ``ssim_to_source``: mean SSIM (Wang et al. 2004; Gaussian window sigma 1.5, K1 0.01, K2 0.03,
  per channel) between the image and its source image: fidelity of an edit.
- ``feature_distance_to_source``: an offline LPIPS-style distance — unit-normalised activations of
  a fixed, seeded random conv net (3 stride-2 layers), squared differences averaged over space and
  summed over layers. Untrained features, so it is a structural distance, not LPIPS's calibration.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from policies import shapes
from reward_servers.base import RewardInputs
from reward_servers.registry import register


def channels_last_images(batch: RewardInputs, reward: str, field: str = "samples") -> np.ndarray:
    """The batch's images channels last ``[B, H, W, 3]`` (the renderer's layout) from the reward
    servers' ``[B, 3, H, W]``."""
    x = getattr(batch, field)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{reward} scores images [B, 3, H, W] in [0, 1], got {field} of shape {x.shape}")
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def _soft(distance: float, scale: float) -> float:
    return math.exp(-0.5 * (distance / scale) ** 2)


@register("shapes_adherence")
class ShapesAdherence:
    """Soft match of the shape, its colour and the background against the prompt (caption or edit)."""

    name = "shapes_adherence"
    inputs = ("samples", "prompts")
    range = (0.0, 1.0)
    direction = "max"

    def __init__(self, colour_scale: float = 0.25, fill_scale: float = 0.08):
        if colour_scale <= 0 or fill_scale <= 0:
            raise ValueError(f"'colour_scale' and 'fill_scale' must be > 0, got {colour_scale}, {fill_scale}")
        self.colour_scale, self.fill_scale = colour_scale, fill_scale

    def score_one(self, image: np.ndarray, prompt: str) -> float:
        want = shapes.parse_prompt(prompt)
        reading = shapes.read_scene(image)
        terms = []
        if "colour" in want:
            terms.append(0.0 if reading.shape_rgb is None else _soft(
                np.linalg.norm(reading.shape_rgb - shapes.SHAPE_COLOURS[want["colour"]]), self.colour_scale))
        if "shape" in want:
            terms.append(0.0 if reading.shape_rgb is None else _soft(
                reading.fill - shapes.FILL_RATIO[want["shape"]], self.fill_scale))
        if "background" in want:
            terms.append(_soft(np.linalg.norm(reading.background_rgb - shapes.BACKGROUNDS[want["background"]]),
                               self.colour_scale))
        return float(np.mean(terms)) if terms else 0.0

    def score(self, batch: RewardInputs) -> np.ndarray:
        images = channels_last_images(batch, self.name)
        return np.array([self.score_one(img, p) for img, p in zip(images, batch.prompts)], dtype=np.float32)


@register("shapes_area")
class ShapesArea:
    """Share of the pixels that stand out from the background."""

    name = "shapes_area"
    inputs = ("samples",)
    range = (0.0, 1.0)
    direction = "max"

    def score(self, batch: RewardInputs) -> np.ndarray:
        images = channels_last_images(batch, self.name)
        return np.array([shapes.read_scene(img).area for img in images], dtype=np.float32)


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """``[B]`` mean SSIM of image batches ``[B, H, W, C]`` with data range 1."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    blur = lambda x: gaussian_filter(x, sigma=(0, sigma, sigma, 0), truncate=3.5)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = k1**2, k2**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(axis=(1, 2, 3))


@register("ssim_to_source")
class SsimToSource:
    """SSIM between each image and its source image (editing fidelity)."""

    name = "ssim_to_source"
    inputs = ("samples", "source_images")
    range = (-1.0, 1.0)
    direction = "max"

    def score(self, batch: RewardInputs) -> np.ndarray:
        images = channels_last_images(batch, self.name)
        sources = channels_last_images(batch, self.name, "source_images")
        if images.shape != sources.shape:
            raise ValueError(f"{self.name}: images {images.shape} and source images {sources.shape} differ in shape")
        return ssim(images, sources).astype(np.float32)


class RandomConvFeatures(torch.nn.Module):
    """Fixed random conv features at three scales (seeded: the same on every replica)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        chans = (3, *widths)
        self.weights = [torch.randn(o, i, 3, 3, generator=gen) * math.sqrt(2.0 / (9 * i))
                        for i, o in zip(chans[:-1], chans[1:])]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x, out = images.permute(0, 3, 1, 2) * 2 - 1, []
        for w in self.weights:
            x = torch.relu(torch.nn.functional.conv2d(x, w, stride=2, padding=1))
            out.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
        return out


@register("feature_distance_to_source")
class FeatureDistanceToSource:
    """LPIPS-style distance on random conv features between each image and its source image."""

    name = "feature_distance_to_source"
    inputs = ("samples", "source_images")
    range = (0.0, 6.0)
    """Each layer's unit vectors differ by at most 2 in squared norm; three layers."""
    direction = "min"

    def __init__(self, seed: int = 0):
        self.features = RandomConvFeatures(seed=seed)

    def score(self, batch: RewardInputs) -> np.ndarray:
        fa = self.features(torch.from_numpy(channels_last_images(batch, self.name)))
        fb = self.features(torch.from_numpy(channels_last_images(batch, self.name, "source_images")))
        d = sum(((a - b) ** 2).sum(1).mean((1, 2)) for a, b in zip(fa, fb))
        return d.numpy().astype(np.float32)

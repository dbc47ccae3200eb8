"""Source fidelity of an edit: how much of ``source_images`` survives in ``samples``.

- ``ssim``: SSIM (Wang et al. 2004), or MS-SSIM (Wang et al. 2003) with ``scales > 1``: an 11-tap
  Gaussian window (sigma 1.5), valid convolution, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``L = 1``,
  averaged over RGB. MS-SSIM = ``prod_{j<M} cs_j^{b_j} * ssim_M^{b_M}`` over ``M`` 2x-downsampled
  scales with the paper's weights (renormalised when fewer scales fit a small image).
- ``perceptual``: a distance (``lpips``: LPIPS without learned channel weights, i.e. the mean
  squared difference of channel-normalised features over layers) or a similarity (``cosine`` of the
  pooled embeddings, DINO-style) on a local vision backbone (any transformers vision model
  directory; a CLIP directory uses its vision tower).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from reward_servers.base import RewardInputs
from reward_servers.clip_scores import local_dir
from reward_servers.codecs import as_images, to_pil
from reward_servers.registry import register

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW = 11
SIGMA = 1.5


def _pair(batch: RewardInputs, reward: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = as_images(batch.samples, f"{reward} samples")
    y = as_images(batch.source_images, f"{reward} source_images")
    if x.shape != y.shape:
        raise ValueError(f"{reward} compares samples {x.shape} with source_images {y.shape}; shapes must match")
    return torch.from_numpy(x).double(), torch.from_numpy(y).double()


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, valid region only, per channel."""
    g = torch.exp(-((torch.arange(WINDOW, dtype=x.dtype) - WINDOW // 2) ** 2) / (2 * SIGMA**2))
    g = g / g.sum()
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def ssim_terms(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean SSIM and contrast-structure ``cs``: two ``[B, C]`` tensors."""
    c1, c2 = 0.01**2, 0.03**2
    mx, my = _blur(x), _blur(y)
    vx, vy, cov = _blur(x * x) - mx**2, _blur(y * y) - my**2, _blur(x * y) - mx * my
    cs = (2 * cov + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    return (lum * cs).mean(dim=(2, 3)), cs.mean(dim=(2, 3))


def ms_ssim(x: torch.Tensor, y: torch.Tensor, scales: int) -> torch.Tensor:
    """``[B]`` MS-SSIM over ``scales`` scales (``scales = 1``: plain SSIM), averaged over channels."""
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype)
    weights = weights / weights.sum()
    out = torch.ones(x.shape[:2], dtype=x.dtype)
    for j in range(scales):
        ssim, cs = ssim_terms(x, y)
        if j == scales - 1:
            out = out * ssim.clamp(min=0) ** weights[j]
        else:
            out = out * cs.clamp(min=0) ** weights[j]
            pad = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    return out.mean(dim=1)


@register("ssim")
class Ssim:
    """SSIM (``scales = 1``) or MS-SSIM (``scales`` 2..5) of each sample to its source image."""

    name = "ssim"
    inputs = ("samples", "source_images")
    range = (0.0, 1.0)
    direction = "max"

    def __init__(self, scales: int = 1):
        if not (isinstance(scales, int) and 1 <= scales <= len(MS_SSIM_WEIGHTS)):
            raise ValueError(f"'scales' must be an integer 1..{len(MS_SSIM_WEIGHTS)}, got {scales!r}")
        self.scales = scales

    def score(self, batch: RewardInputs) -> np.ndarray:
        x, y = _pair(batch, self.name)
        smallest = min(x.shape[2:]) / 2 ** (self.scales - 1)
        if smallest < WINDOW:
            raise ValueError(f"ssim with scales={self.scales} needs images of at least "
                             f"{WINDOW * 2 ** (self.scales - 1)} px a side, got {tuple(x.shape[2:])}")
        return ms_ssim(x, y, self.scales).float().numpy()


@register("perceptual")
class Perceptual:
    """Feature distance (``lpips``, lower is better) or similarity (``cosine``) on a local backbone."""

    name = "perceptual"
    inputs = ("samples", "source_images")

    def __init__(self, model: str, kind: str = "lpips", layers: list[int] | None = None, device: str = "cpu"):
        from transformers import AutoImageProcessor, AutoModel

        if kind not in ("lpips", "cosine"):
            raise ValueError(f"'kind' must be one of ['lpips', 'cosine'], got {kind!r}")
        backbone = AutoModel.from_pretrained(local_dir(model, "model"))
        self.backbone = getattr(backbone, "vision_model", backbone).to(device).eval()
        self.image_processor = AutoImageProcessor.from_pretrained(model)
        self.kind = kind
        self.layers = layers
        self.device = device
        self.direction = "min" if kind == "lpips" else "max"
        self.range = (0.0, math.inf) if kind == "lpips" else (-1.0, 1.0)

    @torch.no_grad()
    def _features(self, images: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor]:
        pixels = self.image_processor(images=to_pil(images), return_tensors="pt")["pixel_values"]
        out = self.backbone(pixel_values=pixels.to(self.device), output_hidden_states=True)
        hidden = out.hidden_states[1:]  # [0] is the patch embedding, before any block
        picked = [hidden[i] for i in self.layers] if self.layers is not None else list(hidden)
        return [h.float() for h in picked], out.pooler_output.float()

    def score(self, batch: RewardInputs) -> np.ndarray:
        x, y = _pair(batch, self.name)
        fx, px = self._features(x.numpy())
        fy, py = self._features(y.numpy())
        if self.kind == "cosine":
            return F.cosine_similarity(px, py, dim=-1).cpu().numpy()
        # LPIPS: unit-normalise each token's channels, squared distance, mean over tokens, mean over layers.
        d = [((F.normalize(a, dim=-1) - F.normalize(b, dim=-1)) ** 2).sum(-1).mean(-1) for a, b in zip(fx, fy)]
        return torch.stack(d).mean(0).cpu().numpy()

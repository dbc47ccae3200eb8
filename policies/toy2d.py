"""The toy2d world: a 2-D Gaussian-mixture dataset and a small flow-matching velocity MLP.

Flow-matching convention used everywhere in this project (as in SD3 / Flux / flow_grpo):
``x_t = (1 - t) x0 + t eps``, ``t = 1`` is pure noise, and the network predicts ``v = eps - x0``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from policies.conditioning import PreferenceConditioning


def ring_mixture(n: int, num_modes: int, radius: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` points from ``num_modes`` Gaussians evenly spaced on a ring."""
    k = torch.randint(num_modes, (n,), generator=generator)
    angle = 2 * math.pi * k.float() / num_modes
    centers = radius * torch.stack([angle.cos(), angle.sin()], dim=-1)
    return centers + std * torch.randn(n, 2, generator=generator)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``t`` in [0, 1] (scaled by 1000, as diffusers does)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    args = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class ResidualBlock(nn.Module):
    """``h + fc2(silu(fc1(silu(h + temb))))``."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(nn.functional.silu(self.fc1(nn.functional.silu(h + temb))))


class Toy2dVelocity(nn.Module):
    """Velocity MLP ``v(x_t, t, w)`` with preference conditioning."""

    sample_shape = (2,)

    def __init__(self, num_objectives: int, hidden_dim: int = 128, num_blocks: int = 3,
                 time_embed_dim: int = 64, pref_hidden_dim: int = 64):
        super().__init__()
        self.time_embed_dim = time_embed_dim
        self.in_proj = nn.Linear(2, hidden_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embed_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        self.blocks = nn.ModuleList(ResidualBlock(hidden_dim) for _ in range(num_blocks))
        self.out_proj = nn.Linear(hidden_dim, 2)
        self.pref = PreferenceConditioning(num_objectives, hidden_dim, hidden_dim, pref_hidden_dim)

    def encode_condition(self, prompts: list[str], source_images=None) -> None:
        """Unconditional world: prompts carry no information."""
        return None

    def decode(self, samples: torch.Tensor) -> None:
        """No pixels: the rewards score the 2-D points themselves."""
        return None

    def lora_target_modules(self, names: list[str]) -> list[str]:
        return list(names)

    def forward(self, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None = None,
                cond: None = None) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.time_embed_dim))
        delta = self.pref.embedding_delta(w)
        if delta is not None:
            temb = temb + delta
        residual = self.pref.residual(w)
        h = self.in_proj(x)
        for block in self.blocks:
            h = block(h, temb)
            if residual is not None:
                h = h + residual
        return self.out_proj(nn.functional.silu(h))


def flow_matching_loss(model: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rectified-flow loss ``E ||v(x_t, t) - (eps - x0)||^2`` without preference (pre-training)."""
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    t = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype)
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    return ((model(xt, t) - (eps - x0)) ** 2).mean()

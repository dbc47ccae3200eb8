"""Samplers for flow-matching models: Euler ODE (DiffusionNFT) and the Flow-GRPO SDE with log-probs.

Time runs from ``t = 1`` (noise) to ``t = 0`` (data) on a uniform grid; ``dt < 0``.
A velocity function is ``fn(x [B, ...], t [B], w [B, M] | None) -> v [B, ...]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def time_grid(num_steps: int, dtype: torch.dtype = torch.float32, shift: float = 1.0) -> torch.Tensor:
    """``[num_steps + 1]`` times from 1 down to 0; ``shift > 1`` spends more steps at high noise
    (SD3's ``t' = s t / (1 + (s - 1) t)``, as diffusers' ``FlowMatchEulerDiscreteScheduler(shift=s)``)."""
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=dtype)
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


@torch.no_grad()
def ode_sample(velocity: VelocityFn, noise: torch.Tensor, w: torch.Tensor | None, num_steps: int,
               shift: float = 1.0) -> torch.Tensor:
    """Euler integration of ``dx = v dt`` from ``noise`` at t=1 to a sample at t=0."""
    ts = time_grid(num_steps, noise.dtype, shift).to(noise.device)
    x = noise
    for i in range(num_steps):
        t = ts[i].expand(x.shape[0])
        x = x + velocity(x, t, w) * (ts[i + 1] - ts[i])
    return x


def sde_sigma(t: torch.Tensor, noise_level: float, t_cap: float) -> torch.Tensor:
    """Flow-GRPO ``sigma_t = a sqrt(t / (1 - t))``; at ``t = 1`` the ``1 - t`` uses ``1 - t_cap``
    (flow_grpo substitutes the next grid time there, since the formula diverges)."""
    one_minus = torch.where(t >= 1.0, torch.full_like(t, 1.0 - t_cap), 1.0 - t)
    return noise_level * torch.sqrt(t / one_minus)


def sde_step_mean_std(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, dt: torch.Tensor,
                      noise_level: float, t_cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``x_{t+dt}`` under the Flow-GRPO SDE (``dt < 0``).

    ``mean = x (1 + sigma^2/(2t) dt) + v (1 + sigma^2 (1-t)/(2t)) dt``, ``std = sigma sqrt(-dt)``.
    ``t``, ``dt`` are per-sample ``[B]``.
    """
    shape = (-1,) + (1,) * (x.dim() - 1)
    t_, dt_ = t.view(shape), dt.view(shape)
    sigma = sde_sigma(t, noise_level, t_cap).view(shape)
    mean = x * (1 + sigma**2 / (2 * t_) * dt_) + v * (1 + sigma**2 * (1 - t_) / (2 * t_)) * dt_
    std = sigma * torch.sqrt(-dt_)
    return mean, std.expand_as(mean)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample log N(x; mean, std^2), averaged over all non-batch dimensions (as Flow-GRPO)."""
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(dim=1)


@dataclass
class SdeTrajectory:
    """Everything Flow-GRPO needs to recompute ratios: ``latents[:, i] -> latents[:, i + 1]``."""

    latents: torch.Tensor
    """``[B, T + 1, ...]`` states from noise to sample."""
    log_probs: torch.Tensor
    """``[B, T]`` log-prob of each transition under the sampling policy."""
    times: torch.Tensor
    """``[T + 1]`` the time grid."""


@torch.no_grad()
def sde_sample(velocity: VelocityFn, noise: torch.Tensor, w: torch.Tensor | None, num_steps: int,
               noise_level: float, step_noise: Callable[[], torch.Tensor] | None = None,
               shift: float = 1.0) -> SdeTrajectory:
    """Sample with the Flow-GRPO SDE, recording every state and transition log-prob.

    ``step_noise()`` returns the standard-normal noise of one step (shape of ``noise``); the default
    draws from torch's global generator. Rollouts pass one drawing per-group generators.
    """
    ts = time_grid(num_steps, noise.dtype, shift).to(noise.device)
    t_cap = float(ts[1])
    x, latents, log_probs = noise, [noise], []
    for i in range(num_steps):
        t = ts[i].expand(x.shape[0])
        dt = (ts[i + 1] - ts[i]).expand(x.shape[0])
        mean, std = sde_step_mean_std(x, velocity(x, t, w), t, dt, noise_level, t_cap)
        eps = step_noise() if step_noise is not None else torch.randn_like(x)
        x = mean + std * eps
        latents.append(x)
        log_probs.append(gaussian_log_prob(x, mean, std))
    return SdeTrajectory(torch.stack(latents, 1), torch.stack(log_probs, 1), ts)

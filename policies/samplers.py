"""Samplers for flow-matching models: Euler ODE (DiffusionNFT) and the Flow-GRPO SDE with log-probs.

Time runs from ``t = 1`` (noise) to ``t = 0`` (data) on a grid ``times`` (``[num_steps + 1]``, ending
at 0); ``dt < 0``. Diffusers backbones pass their own scheduler's sigmas
(``Policy.time_grid``); :func:`time_grid` is the plain grid of a backbone without a scheduler (toy2d).
A velocity function is ``fn(x [B, ...], t [B], w [B, M] | None) -> v [B, ...]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def time_grid(num_steps: int, dtype: torch.dtype = torch.float32, shift: float = 1.0) -> torch.Tensor:
    """``[num_steps + 1]`` times: ``t' = s t / (1 + (s - 1) t)`` of ``linspace(1, 0, num_steps + 1)``.

    ``shift > 1`` spends more steps at high noise. Not diffusers' grid: its
    ``FlowMatchEulerDiscreteScheduler`` spaces ``num_steps`` points from 1 to a shifted ``1 / 1000``,
    shifts them again and appends 0 (SD3.5, 25 steps: last non-zero time 0.0089 here 0.111)."""
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=dtype)
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


@torch.no_grad()
def ode_sample(velocity: VelocityFn, noise: torch.Tensor, w: torch.Tensor | None, num_steps: int,
               shift: float = 1.0, times: torch.Tensor | None = None) -> torch.Tensor:
    """Euler integration of ``dx = v dt`` from ``noise`` at t=1 to a sample at t=0 on ``times``
    (default :func:`time_grid`)."""
    ts = (time_grid(num_steps, noise.dtype, shift) if times is None else times.to(noise.dtype)).to(noise.device)
    x = noise
    for i in range(num_steps):
        t = ts[i].expand(x.shape[0])
        x = x + velocity(x, t, w) * (ts[i + 1] - ts[i])
    return x


def dpm_lambda(sigma: torch.Tensor) -> torch.Tensor:
    """Half log-SNR ``lambda = log(alpha / sigma)`` of the flow-matching path ``alpha = 1 - sigma``
    (``-inf`` at sigma = 1, ``+inf`` at 0: the updates below stay finite there)."""
    return torch.log(1 - sigma) - torch.log(sigma)


def dpmpp_2m_update(x: torch.Tensor, x0: torch.Tensor, x0_prev: torch.Tensor | None, sigma_prev: torch.Tensor | None,
                    sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One DPM-Solver++(2M) step from ``sigma`` to ``sigma_next`` on data predictions ``x0 = x - sigma v``.

    ``h = lambda_next - lambda``; first order ``x' = (s'/s) x - a' (e^{-h} - 1) x0``; second order adds
    ``- a' (e^{-h} - 1) D1 / 2`` with ``D1 = (x0 - x0_prev) h / h_prev`` (the "midpoint" form of
    Lu et al. 2022, as diffusers' DPMSolverMultistepScheduler and the reference's ``dpm2``).
    ``x0_prev`` None: first order. Scalars are float64 so sigmas near 0 or 1 do not round.
    """
    s, s_next = sigma.double(), sigma_next.double()
    h = dpm_lambda(s_next) - dpm_lambda(s)
    phi = -(1 - s_next) * torch.expm1(-h)  # -a' (e^{-h} - 1), finite when h is +-inf
    ratio = s_next / s
    d = x0
    if x0_prev is not None:
        h_prev = dpm_lambda(s) - dpm_lambda(sigma_prev.double())
        d = x0 + 0.5 * (h / h_prev) * (x0 - x0_prev)  # 1/r0 = h / h_prev; a -inf lambda gives D1 = 0
    return (ratio * x + phi * d).to(x.dtype)


@torch.no_grad()
def dpm_sample(velocity: VelocityFn, noise: torch.Tensor, w: torch.Tensor | None, times: torch.Tensor) -> torch.Tensor:
    """Deterministic DPM-Solver++(2M) from ``noise`` at ``times[0]`` to ``times[-1] = 0``.

    First order on the first step (no history) and the last (to sigma = 0), as diffusers'
    ``lower_order_final`` and the reference's ``dpm2`` solver; no log-probs (the NFT path).
    """
    ts = times.to(noise.device)
    n = len(ts) - 1
    x, x0_prev = noise, None
    for i in range(n):
        x0 = x - ts[i] * velocity(x, ts[i].to(x.dtype).expand(x.shape[0]), w)
        x0_hist = None if i == n - 1 else x0_prev
        x = dpmpp_2m_update(x, x0, x0_hist, ts[i - 1] if i > 0 else None, ts[i], ts[i + 1])
        x0_prev = x0
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
               shift: float = 1.0, times: torch.Tensor | None = None) -> SdeTrajectory:
    """Sample with the Flow-GRPO SDE, recording every state and transition log-prob.

    ``step_noise()`` returns the standard-normal noise of one step (shape of ``noise``); the default
    draws from torch's global generator. Rollouts pass one drawing per-group generators.
    """
    ts = (time_grid(num_steps, noise.dtype, shift) if times is None else times.to(noise.dtype)).to(noise.device)
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

"""Sampling whole (prompt, w) groups with a policy: pure torch, used by the rollout actors."""

from __future__ import annotations

import time

import torch

from infra.config import SamplerConfig
from policies.batch import GroupSpec, RolloutBatch
from policies.samplers import SdeTrajectory, VelocityFn, ode_sample, sde_sample


def group_noise(groups: list[GroupSpec], group_size: int, sample_shape: tuple[int, ...]) -> torch.Tensor:
    """Initial noise, drawn per group from its own seed so a re-issued group is bit-identical."""
    out = []
    for g in groups:
        gen = torch.Generator().manual_seed(g.seed)
        out.append(torch.randn((group_size, *sample_shape), generator=gen))
    return torch.cat(out)


def sample_groups(velocity: VelocityFn, groups: list[GroupSpec], group_size: int,
                  sample_shape: tuple[int, ...], sampler: SamplerConfig, policy_version: int,
                  device: torch.device | str = "cpu") -> RolloutBatch:
    """``group_size`` samples for every group, in group order, tagged with ``policy_version``.

    Noise is drawn on the CPU (reproducible across devices) and the model runs on ``device``;
    the returned batch lives on the CPU, ready for the object store.
    """
    start = time.perf_counter()
    noise = group_noise(groups, group_size, sample_shape).to(device)
    w = torch.tensor([g.preference for g in groups], dtype=noise.dtype, device=device)
    w = w.repeat_interleave(group_size, 0)
    index = torch.arange(len(groups)).repeat_interleave(group_size)
    trajectory = None
    if sampler.kind == "ode":
        samples = ode_sample(velocity, noise, w, sampler.num_steps)
    else:
        gens = [torch.Generator().manual_seed(g.seed + 1) for g in groups]

        def step_noise() -> torch.Tensor:
            eps = [torch.randn((group_size, *sample_shape), generator=gen) for gen in gens]
            return torch.cat(eps).to(device)

        trajectory = sde_sample(velocity, noise, w, sampler.num_steps, sampler.noise_level, step_noise)
        trajectory = SdeTrajectory(trajectory.latents.cpu(), trajectory.log_probs.cpu(), trajectory.times.cpu())
        samples = trajectory.latents[:, -1]
    return RolloutBatch(samples=samples.cpu(), preferences=w.cpu(), group_index=index, groups=list(groups),
                        policy_version=policy_version, trajectory=trajectory,
                        sample_seconds=time.perf_counter() - start)

"""Sampling whole (prompt, w) groups with a policy: pure torch, used by the rollout actors."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from infra.config import SamplerConfig
import numpy as np

from policies.batch import Condition, GroupSpec, RolloutBatch, concat_batches
from policies.policy import Policy
from policies.samplers import SdeTrajectory, VelocityFn, dpm_sample, ode_sample, sde_sample, time_grid


def group_noise(groups: list[GroupSpec], group_size: int, sample_shape: tuple[int, ...]) -> torch.Tensor:
    """Initial noise, drawn per group from its own seed so a re-issued group is bit-identical."""
    out = []
    for g in groups:
        gen = torch.Generator().manual_seed(g.seed)
        out.append(torch.randn((group_size, *sample_shape), generator=gen))
    return torch.cat(out)


def sample_groups(velocity: VelocityFn, groups: list[GroupSpec], group_size: int,
                  sample_shape: tuple[int, ...], sampler: SamplerConfig, policy_version: int,
                  device: torch.device | str = "cpu", times: torch.Tensor | None = None) -> RolloutBatch:
    """``group_size`` samples for every group, in group order, tagged with ``policy_version``.

    Noise is drawn on the CPU (reproducible across devices) and the model runs on ``device``;
    the returned batch lives on the CPU, ready for the object store. ``times``: the time grid
    (``Policy.time_grid``; default the plain :func:`policies.samplers.time_grid`).
    """
    start = time.perf_counter()
    noise = group_noise(groups, group_size, sample_shape).to(device)
    w = torch.tensor([g.preference for g in groups], dtype=noise.dtype, device=device)
    w = w.repeat_interleave(group_size, 0)
    index = torch.arange(len(groups)).repeat_interleave(group_size)
    trajectory = None
    if sampler.kind == "ode" and sampler.solver == "dpmpp_2m":
        grid = time_grid(sampler.num_steps, noise.dtype, sampler.shift) if times is None else times
        samples = dpm_sample(velocity, noise, w, grid)
    elif sampler.kind == "ode":
        samples = ode_sample(velocity, noise, w, sampler.num_steps, sampler.shift, times)
    else:
        gens = [torch.Generator().manual_seed(g.seed + 1) for g in groups]

        def step_noise() -> torch.Tensor:
            eps = [torch.randn((group_size, *sample_shape), generator=gen) for gen in gens]
            return torch.cat(eps).to(device)

        trajectory = sde_sample(velocity, noise, w, sampler.num_steps, sampler.noise_level, step_noise,
                                sampler.shift, times)
        trajectory = SdeTrajectory(trajectory.latents.cpu(), trajectory.log_probs.cpu(), trajectory.times.cpu())
        samples = trajectory.latents[:, -1]
    return RolloutBatch(samples=samples.cpu(), preferences=w.cpu(), group_index=index, groups=list(groups),
                        policy_version=policy_version, trajectory=trajectory,
                        sample_seconds=time.perf_counter() - start)


def conditioned_velocity(policy: Policy, cond: Condition | None, uncond: Condition | None,
                         guidance_scale: float, reference: bool = False) -> VelocityFn:
    """``v(x, t, w)`` for one condition row per sample; classifier-free guidance when ``uncond`` is set:
    ``v_u + s (v_c - v_u)``, both branches with the same ``w``. ``reference``: the base model."""

    def v(x: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None, c: Condition | None) -> torch.Tensor:
        return policy.reference_velocity(x, t, c) if reference else policy.velocity(x, t, w, c)

    return guided_velocity(v, cond, uncond, guidance_scale)


def guided_velocity(v: Callable[..., torch.Tensor], cond: Condition | None, uncond: Condition | None,
                    guidance_scale: float) -> VelocityFn:
    """``v(x, t, w, c)`` -> ``v(x, t, w)`` under ``cond``, with classifier-free guidance
    ``v_u + s (v_c - v_u)`` when ``uncond`` is set."""
    if uncond is None:
        return lambda x, t, w: v(x, t, w, cond)

    def guided(x: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        v_uncond = v(x, t, w, uncond)
        return v_uncond + guidance_scale * (v(x, t, w, cond) - v_uncond)

    return guided


@torch.no_grad()
def rollout_groups(policy: Policy, groups: list[GroupSpec], group_size: int, sampler: SamplerConfig,
                   policy_version: int, device: torch.device | str = "cpu", reference: bool = False,
                   micro_batch_size: int | None = None) -> RolloutBatch:
    """Encode each group's prompt (and source image), sample, decode: what a rollout actor returns.

    ``batch.conditions`` keeps one encoded row per group (the learner trains on them);
    ``batch.images`` holds the decoded samples as uint8. ``reference`` samples the base model.
    ``micro_batch_size``: at most this many samples (whole groups, at least one) go through the model at
    once, each chunk leaving the device as uint8 images before the next starts.
    """
    per_chunk = len(groups) if micro_batch_size is None else max(1, micro_batch_size // group_size)
    if per_chunk < len(groups):
        return concat_batches([rollout_groups(policy, groups[i:i + per_chunk], group_size, sampler, policy_version,
                                              device, reference) for i in range(0, len(groups), per_chunk)])
    sources = None
    if any(g.source_image is not None for g in groups):
        sources = np.stack([g.source_image for g in groups]).astype(np.float32)
    start = time.perf_counter()
    cond = policy.encode_condition([g.prompt for g in groups], sources)
    per_sample = torch.arange(len(groups)).repeat_interleave(group_size)
    rows = None if cond is None else cond.rows(per_sample)
    uncond = None
    if sampler.guidance_scale > 1 and cond is not None:
        uncond = policy.encode_condition([""] * len(groups), sources).rows(per_sample)
    velocity = conditioned_velocity(policy, rows, uncond, sampler.guidance_scale, reference)
    batch = sample_groups(velocity, groups, group_size, tuple(policy.sample_shape), sampler, policy_version, device,
                          policy.time_grid(sampler))
    images = policy.decode(batch.samples.to(device))
    if images is not None:
        batch.images = (images * 255).round().to(torch.uint8).cpu()
    batch.conditions = None if cond is None else cond.to("cpu")
    batch.sample_seconds = time.perf_counter() - start
    return batch


def rollout_sweep(policy: Policy, points: list[list[GroupSpec]], per_group: int, sampler: SamplerConfig,
                  device: torch.device | str = "cpu", reference: bool = False,
                  micro_batch_size: int | None = None) -> list[RolloutBatch]:
    """One :func:`rollout_groups` call per sweep point (a point's groups share its ``w``), so a point's
    samples do not depend on which other points were sampled with it. ``reference``: the base model;
    ``micro_batch_size``: as for training rollouts, so a sweep fits the memory they were planned for."""
    return [rollout_groups(policy, groups, per_group, sampler, -1, device, reference, micro_batch_size)
            for groups in points]

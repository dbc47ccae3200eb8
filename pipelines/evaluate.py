"""Preference sweeps: sample a trained model along the slider and score every objective."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from infra.config import Config
from policies.batch import GroupSpec, RolloutBatch
from policies.policy import Policy
from policies.preferences import simplex_grid
from policies.prompts import PromptRecord, prompt_set
from policies.rollout import rollout_groups
from reward_servers.base import RewardInputs


@dataclass
class SweepResult:
    """Mean reward per objective at each swept preference (and for the base model)."""

    preferences: np.ndarray
    """``[P, M]`` the swept ``w``."""
    rewards: np.ndarray
    """``[P, M]`` mean raw reward of each objective at each ``w``."""
    base_rewards: np.ndarray
    """``[M]`` mean raw reward of the base model (adapter off, no ``w``)."""
    objective_names: list[str]
    samples: list[np.ndarray]
    """Per swept ``w``, the ``[N, ...]`` samples the rewards scored (points, or images in [0, 1])."""
    prompts: list[str] | None = None
    """``[N]`` the prompt of each sample (same order at every ``w``)."""
    source_images: np.ndarray | None = None
    """``[N, H, W, 3]`` the source image of each sample (editing)."""
    base_samples: np.ndarray | None = None
    """The base model's samples from the same noise."""

    @property
    def has_images(self) -> bool:
        return self.samples[0].ndim >= 4

    def rows(self) -> list[dict]:
        out = []
        for w, r in zip(self.preferences, self.rewards):
            row = {f"w_{n}": float(x) for n, x in zip(self.objective_names, w)}
            row.update({f"r_{n}": float(x) for n, x in zip(self.objective_names, r)})
            out.append(row)
        return out


def sweep_groups(w: np.ndarray, seed: int, records: list[tuple[int, PromptRecord]]) -> list[GroupSpec]:
    """One group per evaluation prompt, all with the same seed so sweep points differ only by ``w``."""
    return [GroupSpec(epoch=-1, prompt_idx=i, slot=0, seed=seed, preference=tuple(float(x) for x in w),
                      prompt=r.prompt, source_image=r.source_image) for i, r in records]


@torch.no_grad()
def sample_sweep(policy: Policy, cfg: Config, grid: np.ndarray, num_samples: int,
                 seed: int = 1234) -> tuple[list[RolloutBatch], RolloutBatch]:
    """Samples at each grid point (ODE sampler) and base-model samples from the same noise;
    ``num_samples`` per point, split evenly over the evaluation prompts."""
    sampler = cfg.rollout.sampler.model_copy(update={"kind": "ode"})
    prompts = prompt_set(cfg)
    records = [(i, prompts[i]) for i in prompts.eval_indices()]
    per_prompt = max(1, num_samples // len(records))
    device = next(policy.parameters()).device
    per_point = [rollout_groups(policy, sweep_groups(w, seed, records), per_prompt, sampler, -1, device)
                 for w in grid]
    base = rollout_groups(policy, sweep_groups(grid[0], seed, records), per_prompt, sampler, -1, device,
                          reference=True)
    return per_point, base


def evaluate_sweep(policy: Policy, cfg: Config, score, num_samples: int | None = None,
                   points_per_edge: int | None = None) -> SweepResult:
    """Sweep the simplex grid; ``score(RewardInputs) -> [N, M]`` scores every objective."""
    grid = simplex_grid(cfg.num_objectives, points_per_edge or cfg.preferences.sweep_points)
    n = num_samples or cfg.loop.eval_samples
    batches, base = sample_sweep(policy, cfg, grid, n)

    def inputs(b: RolloutBatch) -> RewardInputs:
        return RewardInputs(samples=b.reward_samples(), prompts=b.prompts, source_images=b.source_images())

    rewards = np.stack([np.asarray(score(inputs(b))).mean(0) for b in batches])
    base_rewards = np.asarray(score(inputs(base))).mean(0)
    return SweepResult(grid, rewards, base_rewards, cfg.objective_names, [b.reward_samples() for b in batches],
                       base.prompts, base.source_images(), base.reward_samples())

"""Preference sweeps: sample a trained model along the slider and score every objective."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from infra.config import Config
from policies.batch import GroupSpec
from policies.policy import Policy
from policies.preferences import simplex_grid
from policies.rollout import sample_groups
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
    """Per swept ``w``, the ``[N, ...]`` samples (kept for plots)."""

    def rows(self) -> list[dict]:
        out = []
        for w, r in zip(self.preferences, self.rewards):
            row = {f"w_{n}": float(x) for n, x in zip(self.objective_names, w)}
            row.update({f"r_{n}": float(x) for n, x in zip(self.objective_names, r)})
            out.append(row)
        return out


def sweep_groups(w: np.ndarray, seed: int) -> list[GroupSpec]:
    """One group per sweep point, all with the same seed so points differ only by ``w``."""
    return [GroupSpec(epoch=-1, prompt_idx=0, slot=0, seed=seed, preference=tuple(float(x) for x in w))]


@torch.no_grad()
def sample_sweep(policy: Policy, cfg: Config, grid: np.ndarray, num_samples: int,
                 seed: int = 1234) -> tuple[list[np.ndarray], np.ndarray]:
    """Samples at each grid point (ODE sampler) and base-model samples from the same noise."""
    sampler = cfg.rollout.sampler.model_copy(update={"kind": "ode"})
    per_point = []
    for w in grid:
        batch = sample_groups(policy.velocity, sweep_groups(w, seed), num_samples,
                              policy.sample_shape, sampler, policy_version=-1)
        per_point.append(batch.samples_numpy())
    base = sample_groups(lambda x, t, w: policy.reference_velocity(x, t),
                         sweep_groups(grid[0], seed), num_samples, policy.sample_shape,
                         sampler, policy_version=-1)
    return per_point, base.samples_numpy()


def evaluate_sweep(policy: Policy, cfg: Config, score, num_samples: int | None = None,
                   points_per_edge: int | None = None) -> SweepResult:
    """Sweep the simplex grid; ``score(RewardInputs) -> [N, M]`` scores every objective."""
    grid = simplex_grid(cfg.num_objectives, points_per_edge or cfg.preferences.sweep_points)
    n = num_samples or cfg.loop.eval_samples
    samples, base = sample_sweep(policy, cfg, grid, n)
    rewards = np.stack([np.asarray(score(RewardInputs(samples=s.astype(np.float32)))).mean(0)
                        for s in samples])
    base_rewards = np.asarray(score(RewardInputs(samples=base.astype(np.float32)))).mean(0)
    return SweepResult(grid, rewards, base_rewards, cfg.objective_names, samples)

"""Typed containers passed between roles (driver, rollout actors, reward servers, learner)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from policies.samplers import SdeTrajectory

GroupId = tuple[int, int, int]
"""``(epoch, prompt_idx, slot)``: deterministic identity of one (prompt, w) group."""


@dataclass(frozen=True)
class GroupSpec:
    """One (prompt, preference) group to sample ``group_size`` times."""

    epoch: int
    prompt_idx: int
    slot: int
    seed: int
    """Seeds the initial noise (and SDE noise) of the group's samples."""
    preference: tuple[float, ...]
    """``w`` on the simplex, one weight per objective."""
    prompt: str = ""
    """Text prompt (empty for the unconditional toy2d world)."""

    @property
    def gid(self) -> GroupId:
        return (self.epoch, self.prompt_idx, self.slot)


@dataclass
class RolloutBatch:
    """Samples for a list of groups, produced by one policy version.

    Sample ``i`` belongs to ``groups[group_index[i]]``. ``rewards`` is filled by the driver after
    the reward servers answered (raw scores, one column per objective, in config order).
    """

    samples: torch.Tensor
    """``[B, ...]`` final clean samples ``x0``."""
    preferences: torch.Tensor
    """``[B, M]`` the ``w`` each sample was generated with."""
    group_index: torch.Tensor
    """``[B]`` long: index into ``groups``."""
    groups: list[GroupSpec]
    policy_version: int
    trajectory: SdeTrajectory | None = None
    """SDE states and log-probs (Flow-GRPO only)."""
    rewards: torch.Tensor | None = None
    """``[B, M]`` raw scores per objective."""
    sample_seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.samples.shape[0]

    @property
    def prompts(self) -> list[str]:
        return [self.groups[int(g)].prompt for g in self.group_index]

    def samples_numpy(self) -> np.ndarray:
        return self.samples.detach().cpu().numpy()


def concat_batches(batches: list[RolloutBatch]) -> RolloutBatch:
    """Join batches into one; group indices are offset so they stay valid."""
    groups: list[GroupSpec] = []
    index = []
    for b in batches:
        index.append(b.group_index + len(groups))
        groups.extend(b.groups)
    trajs = [b.trajectory for b in batches]
    traj = None
    if all(t is not None for t in trajs) and trajs:
        traj = SdeTrajectory(
            torch.cat([t.latents for t in trajs]), torch.cat([t.log_probs for t in trajs]), trajs[0].times
        )
    rewards = None
    if all(b.rewards is not None for b in batches):
        rewards = torch.cat([b.rewards for b in batches])
    return RolloutBatch(
        samples=torch.cat([b.samples for b in batches]),
        preferences=torch.cat([b.preferences for b in batches]),
        group_index=torch.cat(index),
        groups=groups,
        policy_version=min(b.policy_version for b in batches),
        trajectory=traj,
        rewards=rewards,
        sample_seconds=sum(b.sample_seconds for b in batches),
    )

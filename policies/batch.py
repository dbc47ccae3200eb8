"""Typed containers passed between roles (driver, rollout actors, reward servers, learner)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from policies.samplers import SdeTrajectory

@dataclass
class Condition:
    """What a backbone computed from prompts (and source images), one row per prompt.

    Fields a backbone does not use stay None; toy2d has no condition at all.
    """

    text: torch.Tensor | None = None
    """``[N, L, D]`` prompt token embeddings."""
    pooled: torch.Tensor | None = None
    """``[N, P]`` pooled prompt embedding."""
    text_mask: torch.Tensor | None = None
    """``[N, L]`` attention mask of ``text`` (1 = token)."""
    audio_text: torch.Tensor | None = None
    """``[N, L, D_a]`` prompt token embeddings of the audio stream (LTX-2's audio connector)."""
    source: torch.Tensor | None = None
    """``[N, C, h, w]`` latents of the source image (editing)."""

    def _map(self, fn) -> Condition:
        return Condition(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                            for f in fields(self)})

    def rows(self, index: torch.Tensor) -> Condition:
        """The rows ``index`` (e.g. one per sample from one per group)."""
        return self._map(lambda v: v[index.to(v.device)])

    def to(self, device: torch.device | str) -> Condition:
        return self._map(lambda v: v.to(device))

    @staticmethod
    def concat(parts: list[Condition | None]) -> Condition | None:
        if not parts or any(p is None for p in parts):
            return None
        return Condition(**{f.name: None if getattr(parts[0], f.name) is None
                            else torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Condition)})


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
    """Text prompt (empty for the unconditional toy2d world); the instruction for editing."""
    source_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    """``[H, W, 3]`` float32 in [0, 1]: the image to edit (editing tasks only)."""

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
    weights_digest: str | None = None
    """Digest of the weights the actor sampled with, as they arrived (checked against the learner's)."""
    digest_s: float = 0.0
    """Seconds the actor spent digesting arriving weights for this batch."""
    conditions: Condition | None = None
    """One row per group: what the backbone encoded from its prompt (and source image)."""
    images: torch.Tensor | None = None
    """``[B, H, W, 3]`` (video: ``[B, F, H, W, 3]``) uint8: the decoded samples; None for toy2d,
    whose rewards score the samples themselves."""

    def __len__(self) -> int:
        return self.samples.shape[0]

    @property
    def prompts(self) -> list[str]:
        return [self.groups[int(g)].prompt for g in self.group_index]

    def reward_samples(self) -> np.ndarray:
        """What the rewards score: images as float32 in [0, 1] channels first ``[B, 3, H, W]``
        (videos ``[B, F, 3, H, W]``, the reward servers' layout), else the samples."""
        if self.images is not None:
            return channels_first(self.images.numpy().astype(np.float32) / 255.0)
        return self.samples_numpy().astype(np.float32)

    def reward_payload(self) -> np.ndarray:
        """:meth:`reward_samples` as it crosses the reward boundary: decoded images stay uint8 (the reward
        servers divide by 255, bit-identically), a quarter of float32's bytes."""
        if self.images is not None:
            return channels_first(self.images.numpy())
        return self.samples_numpy().astype(np.float32, copy=False)

    def source_images(self) -> np.ndarray | None:
        """``[B, 3, H, W]`` float32 source image of each sample's group (None without editing)."""
        if any(g.source_image is None for g in self.groups):
            return None
        stacked = np.stack([self.groups[int(g)].source_image for g in self.group_index]).astype(np.float32)
        return channels_first(stacked)

    def samples_numpy(self) -> np.ndarray:
        return self.samples.detach().cpu().numpy()

    def nbytes(self) -> int:
        """Bytes of the batch's tensors (what fetching it moves)."""
        tensors = [self.samples, self.preferences, self.group_index, self.rewards, self.images]
        if self.trajectory is not None:
            tensors += [self.trajectory.latents, self.trajectory.log_probs]
        if self.conditions is not None:
            tensors += [getattr(self.conditions, f.name) for f in fields(Condition)]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass
class RolloutMeta:
    """What the driver reads of a rollout call: ids, versions and ``B x M`` preferences, never the
    samples (those stay in the object store, for the reward servers and the learner ranks)."""

    preferences: torch.Tensor
    """``[B, M]`` the ``w`` each sample was generated with."""
    group_index: torch.Tensor
    """``[B]`` long: each sample's group, an index into the call's groups."""
    policy_version: int
    sample_seconds: float = 0.0
    weights_digest: str | None = None
    digest_s: float = 0.0
    payload_bytes: int = 0
    """Bytes the call left in the object store (reward payload and training part), for reporting."""
    reward_kinds: tuple[str, ...] = ("samples",)
    """What the reward payload carries (``reward_servers.base.INPUT_KINDS``)."""

    def __len__(self) -> int:
        return self.group_index.shape[0]

    def nbytes(self) -> int:
        """Bytes of the tensors the driver fetches."""
        return sum(t.numel() * t.element_size() for t in (self.preferences, self.group_index))


def channels_first(images: np.ndarray) -> np.ndarray:
    """``[..., H, W, 3]`` (how images are rendered and decoded) -> ``[..., 3, H, W]``."""
    return np.ascontiguousarray(np.moveaxis(images, -1, -3))


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
    images = None
    if all(b.images is not None for b in batches):
        images = torch.cat([b.images for b in batches])
    return RolloutBatch(
        samples=torch.cat([b.samples for b in batches]),
        preferences=torch.cat([b.preferences for b in batches]),
        group_index=torch.cat(index),
        groups=groups,
        policy_version=min(b.policy_version for b in batches),
        trajectory=traj,
        rewards=rewards,
        sample_seconds=sum(b.sample_seconds for b in batches),
        conditions=Condition.concat([b.conditions for b in batches]),
        images=images,
    )

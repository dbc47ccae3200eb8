"""The learner's loss on one micro-batch: DiffusionNFT (default) or Flow-GRPO. Pure torch.

The driver computes advantages over whole groups (:func:`batch_advantages`) before the batch is
split across learner ranks, so group statistics never depend on how samples were sharded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infra.config import AlgorithmConfig, SamplerConfig
from policies.batch import Condition, RolloutBatch, concat_batches
from policies.objectives import advantage_terms, grpo_loss, nft_loss, orient_rewards, reward_units
from policies.policy import Policy
from policies.samplers import SdeTrajectory, gaussian_log_prob, sde_step_mean_std


@dataclass
class TrainShard:
    """What one learner rank trains on: samples with precomputed advantages."""

    samples: torch.Tensor
    """``[N, ...]`` clean samples ``x0``."""
    preferences: torch.Tensor
    """``[N, M]``."""
    advantages: torch.Tensor
    """``[N, K]`` (K = M for late scalarisation, 1 for early)."""
    weights: torch.Tensor
    """``[N, K]`` the weights ``lambda`` applied to the advantages in the loss."""
    sample_seeds: torch.Tensor
    """``[N]`` long: seeds each sample's training noise, so results do not depend on sharding."""
    seed: int
    """Step-level seed (same on every rank): picks the SDE steps Flow-GRPO trains on."""
    trajectory: SdeTrajectory | None = None
    conditions: Condition | None = None
    """One row per group (what the rollout actors encoded); shared by every slice of the shard."""
    cond_index: torch.Tensor | None = None
    """``[N]`` long: each sample's row in ``conditions``."""

    def __len__(self) -> int:
        return self.samples.shape[0]

    def slice(self, a: int, b: int) -> TrainShard:
        traj = self.trajectory
        if traj is not None:
            traj = SdeTrajectory(traj.latents[a:b], traj.log_probs[a:b], traj.times)
        return TrainShard(self.samples[a:b], self.preferences[a:b], self.advantages[a:b],
                          self.weights[a:b], self.sample_seeds[a:b], self.seed, traj, self.conditions,
                          None if self.cond_index is None else self.cond_index[a:b])

    def to(self, device: torch.device | str) -> TrainShard:
        traj = self.trajectory
        if traj is not None:
            traj = SdeTrajectory(traj.latents.to(device), traj.log_probs.to(device), traj.times)
        cond = None if self.conditions is None else self.conditions.to(device)
        return TrainShard(self.samples.to(device), self.preferences.to(device), self.advantages.to(device),
                          self.weights.to(device), self.sample_seeds, self.seed, traj, cond, self.cond_index)

    def sample_conditions(self, reps: int = 1) -> Condition | None:
        """Each sample's condition row, every row repeated ``reps`` times (None for toy2d)."""
        if self.conditions is None:
            return None
        return self.conditions.rows(self.cond_index.repeat_interleave(reps))

    def split(self, count: int) -> list[TrainShard]:
        """``count`` contiguous, near-equal slices (some may be empty), cut at :func:`shard_bounds`."""
        bounds = shard_bounds(len(self), count)
        return [self.slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def shard_bounds(n: int, count: int) -> list[int]:
    """Where ``n`` samples are cut into ``count`` contiguous near-equal shards (``count + 1`` bounds)."""
    return torch.linspace(0, n, count + 1).round().long().tolist()


@dataclass
class ShardRequest:
    """One learner rank's shard of a step whose samples stayed in the object store: the rank receives
    the training parts (:class:`RolloutBatch`, images dropped) of the rollout calls its shard covers,
    and this, its rows ``[start, stop)`` of their concatenation with the driver's advantages.

    :meth:`assemble` gives the rank exactly the samples, conditions rows and seeds the whole step's
    ``TrainShard.split`` would have (only the number of condition rows it carries differs).
    """

    start: int
    stop: int
    advantages: torch.Tensor
    """``[stop - start, K]``."""
    weights: torch.Tensor
    """``[stop - start, K]``."""
    sample_seeds: torch.Tensor
    """``[stop - start]`` long (the seed of each sample's position in the whole step)."""
    seed: int

    def __len__(self) -> int:
        return self.stop - self.start

    def assemble(self, parts: list[RolloutBatch]) -> TrainShard:
        batch = concat_batches(parts)
        a, b = self.start, self.stop
        traj = batch.trajectory
        if traj is not None:
            traj = SdeTrajectory(traj.latents[a:b], traj.log_probs[a:b], traj.times)
        return TrainShard(batch.samples[a:b], batch.preferences[a:b], self.advantages, self.weights,
                          self.sample_seeds, self.seed, traj, batch.conditions, batch.group_index[a:b])


def shard_requests(parts: list[tuple[int, int, object]], ranks: int, advantages: torch.Tensor,
                   weights: torch.Tensor, sample_seeds: torch.Tensor, seed: int) -> list[tuple[ShardRequest, list]]:
    """Each rank's :class:`ShardRequest` and the parts it needs, for a step whose rollout calls left
    ``(offset, size, part)`` (``part``: the ref of a training part) in the object store. The rows are cut at
    :func:`shard_bounds`, as ``TrainShard.split`` cuts them, and a rank gets only the parts they overlap."""
    bounds = shard_bounds(len(advantages), ranks)
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        # An empty shard still needs a part to assemble its (empty) rows from.
        covered = [(o, n, part) for o, n, part in parts if o < b and o + n > a] or parts[:1]
        base = covered[0][0]
        out.append((ShardRequest(a - base, b - base, advantages[a:b], weights[a:b], sample_seeds[a:b], seed),
                    [part for _, _, part in covered]))
    return out


def batch_advantages(rewards: torch.Tensor, w: torch.Tensor, group_index: torch.Tensor,
                     directions: list[str], scalarisation: str, std: str = "group", scale: str = "none",
                     mu: float = 0.1, first_units: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and loss weights for a whole batch (see ``objectives.advantage_terms``); ``scale`` and
    ``first_units`` pick the early scalarisation's units (``objectives.reward_units``)."""
    oriented = orient_rewards(rewards, directions)
    units = reward_units(oriented, scale, first_units) if scalarisation == "early" else None
    return advantage_terms(oriented, w, group_index, scalarisation, std, units, mu)


def nft_noise(seeds: torch.Tensor, reps: int, shape: tuple[int, ...], dtype: torch.dtype,
              grid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``reps`` noise levels ``t`` and noises ``eps`` per sample, each from the sample's own seed.

    ``grid`` None: ``t ~ U(0, 1)``, clamped at 1e-3; else ``reps`` distinct entries of ``grid`` (the
    first ``reps`` of a random permutation, as the reference picks its trained timesteps).
    """
    ts, eps = [], []
    for s in seeds.tolist():
        gen = torch.Generator().manual_seed(s)
        if grid is None:
            ts.append(torch.rand(reps, generator=gen, dtype=dtype).clamp(1e-3, 1.0))
        else:
            ts.append(grid[torch.randperm(len(grid), generator=gen)[:reps]].to(dtype))
        eps.append(torch.randn((reps, *shape), generator=gen, dtype=dtype))
    return torch.cat(ts), torch.cat(eps)


def nft_micro_loss(policy: Policy, old_state: dict[str, torch.Tensor], shard: TrainShard,
                   algo: AlgorithmConfig, sampler: SamplerConfig) -> tuple[torch.Tensor, dict]:
    """DiffusionNFT on ``algo.train_timesteps`` noise levels per sample (``algo.timestep_source``)."""
    reps = algo.train_timesteps
    x0 = shard.samples.repeat_interleave(reps, 0)
    w = shard.preferences.repeat_interleave(reps, 0)
    # The sampler's non-zero times: t = 0 is the clean sample itself, never a training point.
    grid = policy.time_grid(sampler)[:-1] if algo.timestep_source == "sampler_grid" else None
    t, eps = nft_noise(shard.sample_seeds, reps, tuple(shard.samples.shape[1:]), x0.dtype, grid)
    t, eps = t.to(x0.device), eps.to(x0.device)
    t_ = t.view((-1,) + (1,) * (x0.dim() - 1))
    xt = (1 - t_) * x0 + t_ * eps
    cond = shard.sample_conditions(reps)
    with torch.no_grad():
        with policy.swapped(old_state):
            v_old = policy.velocity(xt, t, w, cond)
        v_ref = policy.reference_velocity(xt, t, cond) if algo.kl_coef > 0 else None
    v_theta = policy.velocity(xt, t, w, cond)
    return nft_loss(x0, xt, t, v_theta, v_old, v_ref,
                    shard.advantages.repeat_interleave(reps, 0), shard.weights.repeat_interleave(reps, 0),
                    algo.nft_beta, algo.adv_clip, algo.loss_scale, algo.kl_coef)


def grpo_micro_loss(policy: Policy, shard: TrainShard, algo: AlgorithmConfig,
                    sampler: SamplerConfig) -> tuple[torch.Tensor, dict]:
    """Flow-GRPO on ``algo.train_timesteps`` SDE transitions per trajectory (chosen per step)."""
    traj = shard.trajectory
    if traj is None:
        raise ValueError("Flow-GRPO needs SDE trajectories: set rollout.sampler.kind='sde'")
    gen = torch.Generator().manual_seed(shard.seed)
    num_steps = traj.log_probs.shape[1]
    steps = torch.randperm(num_steps, generator=gen)[: algo.train_timesteps].sort().values
    adv = (shard.weights * shard.advantages.clamp(-algo.adv_clip, algo.adv_clip)).sum(dim=1)
    t_cap = float(traj.times[1])
    cond = shard.sample_conditions()
    total, metrics = 0.0, {}
    for i in steps.tolist():
        x, x_next = traj.latents[:, i], traj.latents[:, i + 1]
        t = traj.times[i].to(x.device).expand(x.shape[0])
        dt = (traj.times[i + 1] - traj.times[i]).to(x.device).expand(x.shape[0])
        mean, std = sde_step_mean_std(x, policy.velocity(x, t, shard.preferences, cond), t, dt,
                                      sampler.noise_level, t_cap)
        ref_mean = None
        if algo.kl_coef > 0:
            with torch.no_grad():
                ref_mean, _ = sde_step_mean_std(x, policy.reference_velocity(x, t, cond), t, dt,
                                                sampler.noise_level, t_cap)
        loss, m = grpo_loss(gaussian_log_prob(x_next, mean, std), traj.log_probs[:, i], adv,
                            algo.grpo_clip, mean, ref_mean, std, algo.kl_coef)
        total = total + loss / len(steps)
        for k, v in m.items():
            metrics[k] = metrics.get(k, 0.0) + v / len(steps)
    return total, metrics


def micro_loss(policy: Policy, old_state: dict[str, torch.Tensor], shard: TrainShard,
               algo: AlgorithmConfig, sampler: SamplerConfig) -> tuple[torch.Tensor, dict]:
    """The configured objective's loss on one micro-batch."""
    if algo.objective == "nft":
        return nft_micro_loss(policy, old_state, shard, algo, sampler)
    return grpo_micro_loss(policy, shard, algo, sampler)

"""The learner's micro-batch losses and training noise levels (``policies.train_step``) against
computations written out here."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_MODEL
from infra.config import AlgorithmConfig, ModelConfig, SamplerConfig
from policies.batch import GroupSpec
from policies.policy import build_policy, load_base
from policies.rollout import sample_groups
from policies.samplers import time_grid
from policies.train_step import TrainShard, micro_loss, nft_noise

N, REPS = 6, 3


def perturbed(state: dict[str, torch.Tensor], seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in state.items()}


@pytest.fixture()
def setup(tiny_base):
    """A policy whose current, old and base weights all differ, and a shard of six toy2d samples."""
    cfg = ModelConfig(**TINY_MODEL)
    policy = build_policy(cfg, 2, tiny_base)
    policy.load_trainable_state(perturbed(policy.trainable_state(), 1))
    old_state = perturbed(policy.trainable_state(), 2)
    gen = torch.Generator().manual_seed(3)
    shard = TrainShard(samples=torch.randn(N, 2, generator=gen),
                       preferences=torch.softmax(torch.randn(N, 2, generator=gen), dim=1),
                       advantages=3 * torch.randn(N, 2, generator=gen), weights=torch.rand(N, 2, generator=gen),
                       sample_seeds=torch.arange(N) * 11 + 5, seed=0)
    old = build_policy(cfg, 2, tiny_base)
    old.load_trainable_state(old_state)
    return cfg, policy, old_state, old, load_base(cfg, 2, tiny_base), shard


def nft_reference(policy, old, base, shard: TrainShard, a: AlgorithmConfig) -> torch.Tensor:
    """DiffusionNFT written out in float64 on the networks' velocities.

    Each sample's ``REPS`` noise levels and noises come from its own seed (so results do not depend on
    sharding): ``t ~ U(0, 1)`` clamped to ``[1e-3, 1]``, then ``eps ~ N(0, I)``; ``x_t = (1 - t) x0 + t eps``.
    ``v+ = b v + (1 - b) v_old``, ``v- = (1 + b) v_old - b v``; ``x0± = x_t - t v±``;
    ``L± = mean (x0± - x0)^2 / sg(mean |x0± - x0|)``; ``r_k = 1/2 + 1/2 clip(A_k / A_max, -1, 1)``;
    ``loss = s mean_i sum_k lambda_k (r_k L+ + (1 - r_k) L-) / b + c_kl mean ||v - v_ref||^2``.
    """
    x0, ts, eps = [], [], []
    for i, seed in enumerate(shard.sample_seeds.tolist()):
        gen = torch.Generator().manual_seed(seed)
        ts.append(torch.rand(REPS, generator=gen).clamp(1e-3, 1.0))
        eps.append(torch.randn(REPS, 2, generator=gen))
        x0.append(shard.samples[i].expand(REPS, 2))
    x0, t, eps = torch.cat(x0), torch.cat(ts), torch.cat(eps)
    w = shard.preferences.repeat_interleave(REPS, 0)
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    v = policy.velocity(xt, t, w).double()
    with torch.no_grad():
        v_old, v_ref = old.velocity(xt, t, w).double(), base(xt, t, None).double()
    x0, xt, t = x0.double(), xt.double(), t.double()[:, None]
    b = a.nft_beta
    losses = []
    for v_pm in (b * v + (1 - b) * v_old, (1 + b) * v_old - b * v):
        err = xt - t * v_pm - x0
        losses.append((err**2).mean(1) / err.detach().abs().mean(1).clamp(min=1e-5))
    r = 0.5 + 0.5 * (shard.advantages.double() / a.adv_clip).clamp(-1, 1).repeat_interleave(REPS, 0)
    lam = shard.weights.double().repeat_interleave(REPS, 0)
    per_obj = (r * losses[0][:, None] + (1 - r) * losses[1][:, None]) / b
    return a.loss_scale * (lam * per_obj).sum(1).mean() + a.kl_coef * ((v - v_ref) ** 2).mean()


def grads(policy, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = dict(policy.trainable_named())
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def test_nft_loss_and_gradient_match_a_float64_computation(setup):
    cfg, policy, old_state, old, base, shard = setup
    algo = AlgorithmConfig(train_timesteps=REPS, kl_coef=0.3)  # a KL term large enough to matter
    loss, metrics = micro_loss(policy, old_state, shard, algo, SamplerConfig())
    expected = nft_reference(policy, old, base, shard, algo)
    # Same network outputs on both sides; the loss arithmetic is float32 vs float64 over 18 rows, each a
    # mean of 2 terms: ~10 ulps (6e-7 relative) at most.
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    got, want = grads(policy, loss), grads(policy, expected)
    scale = max(float(g.abs().max()) for g in want.values())
    for k in want:  # float32 backward of the same graph: errors ~1e-6 of the largest gradient
        assert torch.allclose(got[k], want[k], rtol=0, atol=1e-5 * scale), k
    # The old policy is swapped in and back out: the current weights are untouched.
    assert all(not torch.equal(p, old_state[n]) for n, p in policy.trainable_named())
    assert float(metrics["loss/kl"]) > 0


def test_nft_loss_does_not_depend_on_how_the_shard_is_split(setup):
    cfg, policy, old_state, _, _, shard = setup
    algo = AlgorithmConfig(train_timesteps=REPS)
    whole = float(micro_loss(policy, old_state, shard, algo, SamplerConfig())[0].detach())
    parts = sum(float(micro_loss(policy, old_state, s, algo, SamplerConfig())[0].detach()) * len(s) / N
                for s in shard.split(4) if len(s))
    assert parts == pytest.approx(whole, rel=1e-6)  # a mean regrouped: float32 rounding only


def test_grpo_loss_at_the_sampling_policy_is_minus_the_weighted_advantage(tiny_base):
    """With the weights that sampled the trajectory, every ratio is 1, so the clipped objective is
    ``-mean_i sum_k lambda_k clip(A_ik, +-A_max)`` whatever steps are drawn."""
    cfg = ModelConfig(**TINY_MODEL)
    policy = build_policy(cfg, 2, tiny_base)
    sampler = SamplerConfig(kind="sde", num_steps=4)
    groups = [GroupSpec(0, i, 0, seed=i, preference=(i / 2, 1 - i / 2)) for i in range(3)]
    batch = sample_groups(policy.velocity, groups, 2, (2,), sampler, 0)
    gen = torch.Generator().manual_seed(0)
    adv, lam = 4 * torch.randn(6, 2, generator=gen), batch.preferences
    shard = TrainShard(batch.samples, batch.preferences, adv, lam, torch.arange(6), seed=1,
                       trajectory=batch.trajectory)
    algo = AlgorithmConfig(objective="grpo", train_timesteps=2, kl_coef=0.0, adv_clip=2.0)
    loss, metrics = micro_loss(policy, policy.trainable_state(), shard, algo, sampler)
    expected = -(lam * adv.clamp(-2.0, 2.0)).sum(1).mean()
    # log-probs recomputed from the same float32 velocities: ratio 1 to ~1e-6
    assert float(metrics["grpo/ratio"]) == pytest.approx(1.0, abs=1e-5)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    with pytest.raises(ValueError, match="rollout.sampler.kind='sde'"):
        micro_loss(policy, {}, TrainShard(batch.samples, batch.preferences, adv, lam, torch.arange(6), 1),
                   algo, sampler)


def test_uniform_levels_are_the_seeded_uniform_draws():
    seeds = torch.tensor([3, 11])
    t, eps = nft_noise(seeds, 4, (2,), torch.float32)
    for i, s in enumerate(seeds.tolist()):
        gen = torch.Generator().manual_seed(s)
        assert torch.equal(t[4 * i: 4 * i + 4], torch.rand(4, generator=gen).clamp(1e-3, 1.0))
        assert torch.equal(eps[4 * i: 4 * i + 4], torch.randn((4, 2), generator=gen))


def test_grid_levels_are_distinct_grid_points_and_independent_of_sharding():
    grid = time_grid(25, shift=3.0)[:-1]  # 25 non-zero points
    seeds = torch.arange(400)
    t, _ = nft_noise(seeds, 24, (2,), torch.float32, grid)
    per_sample = t.view(400, 24)
    for row in per_sample:
        hit = torch.isclose(row[:, None], grid[None, :], atol=0, rtol=0)
        assert (hit.sum(1) == 1).all() and (hit.sum(0) <= 1).all()  # each t a grid point, none twice
    # A sample's levels depend on its own seed only: the same whatever else is in its shard.
    alone, _ = nft_noise(seeds[7:8], 24, (2,), torch.float32, grid)
    assert torch.equal(alone, per_sample[7])
    # 24 of 25 without replacement: each point is left out with probability 1/25. Over 400 samples the
    # count of omissions of one point is Binomial(400, 0.04): mean 16, sd 3.9; 5 sd bounds it.
    omitted = 400 - torch.isclose(t[:, None], grid[None, :], atol=0, rtol=0).sum(0)
    assert omitted.sum() == 400 and ((omitted - 16).abs() <= 20).all()
    # The mean level is the grid's mean (0.67 for SD3.5's grid vs 0.5 for U(0, 1)).
    assert abs(float(t.mean()) - float(grid.mean())) < 0.01 and float(grid.mean()) > 0.6


def test_ranks_assemble_from_the_rollout_calls_exactly_the_shards_of_the_whole_step():
    """A step of 5 rollout calls (uneven sizes, conditions and SDE trajectories) cut over 1-4 ranks: each
    rank's shard, assembled from only the calls its rows overlap, holds the same samples, preferences,
    trajectories, seeds and per-sample condition rows as ``TrainShard.split`` of the whole step."""
    from policies.batch import Condition, RolloutBatch, concat_batches
    from policies.samplers import SdeTrajectory
    from policies.train_step import shard_bounds, shard_requests

    gen = torch.Generator().manual_seed(0)
    group_size, calls = 2, []
    for c, groups in enumerate([3, 1, 2, 4, 1]):
        n = groups * group_size
        calls.append(RolloutBatch(
            samples=torch.randn(n, 3, generator=gen), preferences=torch.rand(n, 2, generator=gen),
            group_index=torch.arange(groups).repeat_interleave(group_size),
            groups=[GroupSpec(0, 10 * c + g, 0, g, (0.5, 0.5)) for g in range(groups)], policy_version=1,
            trajectory=SdeTrajectory(torch.randn(n, 4, 3, generator=gen), torch.randn(n, 3, generator=gen),
                                     torch.linspace(1, 0, 4)),
            conditions=Condition(text=torch.randn(groups, 5, 7, generator=gen), pooled=torch.randn(groups, 7, generator=gen))))
    step = concat_batches(calls)
    b = len(step)
    adv, lam = torch.randn(b, 2, generator=gen), torch.rand(b, 2, generator=gen)
    whole = TrainShard(step.samples, step.preferences, adv, lam, 100 + torch.arange(b), 7, step.trajectory,
                       step.conditions, step.group_index)
    offsets = [0, *torch.cumsum(torch.tensor([len(c) for c in calls]), 0).tolist()[:-1]]
    parts = [(o, len(c), i) for i, (o, c) in enumerate(zip(offsets, calls))]  # the "ref" is the call's index
    for ranks in (1, 2, 3, 4):
        requests = shard_requests(parts, ranks, adv, lam, 100 + torch.arange(b), 7)
        bounds = shard_bounds(b, ranks)
        for r, (expected, (request, refs)) in enumerate(zip(whole.split(ranks), requests)):
            rows = range(bounds[r], bounds[r + 1])
            # Only the calls the rank's rows overlap travel to it.
            assert refs == [i for o, n, i in parts if any(o <= x < o + n for x in rows)] or (not rows and len(refs) == 1)
            got = request.assemble([calls[i] for i in refs])
            assert len(got) == len(expected) and got.seed == expected.seed
            for name in ("samples", "preferences", "advantages", "weights", "sample_seeds"):
                assert torch.equal(getattr(got, name), getattr(expected, name)), name
            assert torch.equal(got.trajectory.latents, expected.trajectory.latents)
            assert torch.equal(got.trajectory.log_probs, expected.trajectory.log_probs)
            mine, theirs = got.sample_conditions(REPS), expected.sample_conditions(REPS)
            assert torch.equal(mine.text, theirs.text) and torch.equal(mine.pooled, theirs.pooled)

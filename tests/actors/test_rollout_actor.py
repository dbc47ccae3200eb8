"""RolloutActor on a real local Ray: version tagging and object-store weight sync."""

from __future__ import annotations

import pytest
import torch

from actors.rollout_actor import RolloutActor
from actors.weight_sync import ObjectStoreWeightSync
from conftest import TINY_MODEL
from infra.config import Config
from policies.policy import build_policy
from policies.preferences import plan_groups


def test_actor_samples_tagged_groups_and_pulls_new_versions(ray_local, tiny_base):
    cfg = Config.model_validate({"model": TINY_MODEL, "pretrain": {"checkpoint": str(tiny_base)},
                                 "rollout": {"prompts_per_step": 2, "group_size": 3, "sampler": {"num_steps": 3}}})
    actor = RolloutActor.options(num_cpus=0.5).remote(cfg.model_dump_json(), str(tiny_base), 0)
    sync = ObjectStoreWeightSync()
    groups = plan_groups(cfg, 0)
    try:
        first = ray_local.get(actor.generate.remote(groups))
        assert first.policy_version == 0 and len(first) == len(groups) * 3
        assert [g.gid for g in first.groups] == [g.gid for g in groups]

        policy = build_policy(cfg.model, 2, tiny_base)
        state = {k: v + 0.3 for k, v in policy.trainable_state().items()}
        handle = sync.publish(1, state)
        assert handle.num_bytes == sum(v.numel() * 4 for v in state.values())
        second = ray_local.get(actor.generate.remote(groups, handle))
        assert second.policy_version == 1
        assert not torch.allclose(first.samples, second.samples)
        with pytest.raises(ValueError, match="increase"):
            sync.publish(1, state)
        newer = sync.publish(2, {k: v - 0.3 for k, v in state.items()})
        third = ray_local.get(actor.generate.remote(groups, newer))
        assert third.policy_version == 2 and not torch.allclose(second.samples, third.samples)
        # An older handle (version 1, still alive here) never rolls the actor back: it keeps version 2's
        # weights, so the same groups (same seeds) sample exactly what version 2 sampled.
        assert ray_local.get(actor.apply_weights.remote(handle)) == 2
        again = ray_local.get(actor.generate.remote(groups, handle))
        assert again.policy_version == 2 and torch.equal(again.samples, third.samples)
        policy.load_trainable_state(state)
        from policies.rollout import sample_groups

        local = sample_groups(policy.velocity, groups, 3, (2,), cfg.rollout.sampler, 1)
        assert torch.allclose(local.samples, second.samples, atol=1e-5)
    finally:
        ray_local.kill(actor)


def test_sweep_samples_with_the_given_weights_then_restores_the_sampling_ones(tiny_base):
    from actors.rollout_actor import RolloutWorker
    from policies.rollout import rollout_groups

    cfg = Config.model_validate({"model": TINY_MODEL, "pretrain": {"checkpoint": str(tiny_base)},
                                 "rollout": {"prompts_per_step": 2, "group_size": 3, "sampler": {"num_steps": 3}}})
    worker = RolloutWorker(cfg.model_dump_json(), str(tiny_base))
    groups = plan_groups(cfg, 0)
    before = worker.generate(groups)
    sampler = cfg.rollout.sampler.model_copy(update={"kind": "ode"})
    policy = build_policy(cfg.model, 2, tiny_base)
    initial = policy.trainable_state()
    ema = {k: v + 0.3 for k, v in initial.items()}
    points = [groups[:1], groups[1:]]
    swept = worker.sample_sweep(points, 4, sampler, ema)
    base = worker.sample_sweep([groups], 4, sampler, None, reference=True)[0]
    # The same groups sampled by a separate policy that holds the EMA weights (and the base model).
    policy.load_trainable_state(ema)
    for got, part in zip(swept, points):
        assert torch.equal(got.samples, rollout_groups(policy, part, 4, sampler, -1).samples)
        assert got.conditions is None and got.policy_version == -1
    assert torch.equal(base.samples, rollout_groups(policy, groups, 4, sampler, -1, reference=True).samples)
    policy.load_trainable_state(initial)
    assert not torch.equal(swept[0].samples, rollout_groups(policy, groups[:1], 4, sampler, -1).samples)
    # The sampling weights are back: training rollouts after a sweep are those before it.
    after = worker.generate(groups)
    assert after.policy_version == before.policy_version and torch.equal(after.samples, before.samples)

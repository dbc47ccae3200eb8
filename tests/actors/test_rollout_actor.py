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

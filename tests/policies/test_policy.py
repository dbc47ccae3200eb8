"""Policy: LoRA via peft, the reference view, weight swapping, base checkpoints, rollouts."""

import pytest
import torch

from infra.config import ModelConfig, SamplerConfig
from policies.batch import GroupSpec
from conftest import TINY_MODEL
from policies.policy import build_policy, load_base
from policies.rollout import sample_groups

SMALL = {k: v for k, v in TINY_MODEL.items() if not k.startswith("lora")}


@pytest.fixture(scope="module")
def base_path(tiny_base):
    return tiny_base


@pytest.mark.parametrize("rank", [0, 4])
def test_reference_is_base_and_only_adapter_and_pref_train(base_path, rank):
    cfg = ModelConfig(**SMALL, lora_rank=rank)
    policy = build_policy(cfg, 2, base_path)
    base = load_base(cfg, 2, base_path)
    names = [n for n, _ in policy.trainable_named()]
    assert any("pref." in n for n in names)
    if rank:
        assert all("lora_" in n or "pref." in n for n in names)
    x, t = torch.randn(16, 2), torch.rand(16)
    with torch.no_grad():
        for _, p in policy.trainable_named():
            p.add_(0.1 * torch.randn_like(p))
        assert torch.allclose(policy.reference_velocity(x, t), base(x, t, None), atol=1e-6)
        assert not torch.allclose(policy.velocity(x, t, None), base(x, t, None), atol=1e-4)


def test_two_builds_are_identical_and_swapped_restores(base_path):
    cfg = ModelConfig(**SMALL, lora_rank=4)
    a, b = build_policy(cfg, 2, base_path), build_policy(cfg, 2, base_path)
    sa, sb = a.trainable_state(), b.trainable_state()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x, t, w = torch.randn(8, 2), torch.rand(8), torch.full((8, 2), 0.5)
    other = {k: v + 0.05 for k, v in sa.items()}
    before = a.velocity(x, t, w)
    with a.swapped(other):
        inside = a.velocity(x, t, w)
    b.load_trainable_state(other)
    assert torch.allclose(inside, b.velocity(x, t, w))
    assert torch.equal(a.velocity(x, t, w), before)


def test_mismatched_base_checkpoint_names_field(base_path):
    with pytest.raises(ValueError, match="hidden_dim"):
        load_base(ModelConfig(**{**SMALL, "hidden_dim": 64}), 2, base_path)


def test_load_trainable_state_rejects_foreign_keys(base_path):
    policy = build_policy(ModelConfig(**SMALL), 2, base_path)
    with pytest.raises(ValueError, match="does not match"):
        policy.load_trainable_state({"nope": torch.zeros(1)})


@pytest.mark.parametrize("kind", ["ode", "sde"])
def test_rollout_groups_are_reproducible_and_layout_independent(base_path, kind):
    policy = build_policy(ModelConfig(**SMALL), 2, base_path)
    groups = [GroupSpec(0, p, 0, seed=100 + p, preference=(p / 3, 1 - p / 3)) for p in range(4)]
    sampler = SamplerConfig(kind=kind, num_steps=4)
    full = sample_groups(policy.velocity, groups, 5, (2,), sampler, policy_version=3)
    part = sample_groups(policy.velocity, groups[2:], 5, (2,), sampler, policy_version=3)
    assert full.samples.shape == (20, 2) and full.policy_version == 3
    assert full.group_index.tolist() == sum([[i] * 5 for i in range(4)], [])
    assert torch.allclose(full.samples[10:], part.samples, atol=1e-6)
    assert torch.allclose(full.preferences[5], torch.tensor([1 / 3, 2 / 3]))
    if kind == "sde":
        assert full.trajectory.log_probs.shape == (20, 4)
        assert torch.equal(full.trajectory.latents[:, -1], full.samples)
    else:
        assert full.trajectory is None


def test_adapter_report_counts_the_modules_each_target_bound(base_path):
    cfg = ModelConfig(**SMALL, lora_rank=4, lora_targets=["fc1", "fc2"])
    policy = build_policy(cfg, 2, base_path)
    # Counted independently: the backbone's own Linear layers with those names.
    base = load_base(cfg, 2, base_path)
    want = {t: sum(n.rsplit(".", 1)[-1] == t for n, _ in base.named_modules()) for t in ("fc1", "fc2")}
    assert policy.adapter_report(["fc1", "fc2", "to_q"]) == {**want, "to_q": 0} and min(want.values()) > 0
    assert build_policy(ModelConfig(**SMALL, lora_rank=0), 2, base_path).adapter_report(["fc1"]) == {}

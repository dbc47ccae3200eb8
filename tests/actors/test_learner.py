"""The DeepSpeed learner group on a real local Ray (gloo): world size 1 and 2 against plain torch."""

from __future__ import annotations

import pytest
import torch

from actors.learner import LearnerGroup
from conftest import TINY_MODEL
from infra.config import Config
from policies.policy import build_policy
from policies.train_step import TrainShard, micro_loss

ADAM_EPS = 1.0
"""Adam's first step is ``lr * g / (|g| + eps)``. With torch's eps (1e-8) it is ~``lr * sign(g)``: where a
gradient is near zero, float32 summation noise (thread count, CPU kernels, how the batch is split over
ranks and micro-batches) flips its sign and the step by up to ``2 lr``, so an element-wise comparison
depends on the machine (it failed by 3e-5 at lr 1e-2 on one). With eps = 1 >> |g| (gradients are clipped
to norm 1) the step is ~``lr * g``, linear in the gradient, and compares at the gradient's own precision."""


def assert_same_step(before: dict, after: dict, expected: dict) -> None:
    """``after`` took the step ``expected`` took from ``before``, to float32's accuracy.

    The step is linear in ``g`` (see ``ADAM_EPS``), so its error is ``lr * |delta g|``. Gradients summed in
    another order (ranks, micro-batches, threads) differ by at most ``n * 2**-24`` relative to the largest
    gradient for sums of ``n <= 1e4`` terms: <= 1e-3 of the largest step. The new weights also round to
    float32: 4 ulps of the largest weight. A dropped or repeated sample (of <= 24) changes the step by
    >= 4% of its size, a wrong condition row or noise draw by far more.
    """
    step = max(float((expected[k] - before[k]).abs().max()) for k in expected)
    weight = max(float(expected[k].abs().max()) for k in expected)
    tol = 1e-3 * step + 4 * 2**-24 * weight
    worst = max(float((after[k] - expected[k]).abs().max()) for k in expected)
    assert step > 1e-4, f"the reference step moved the weights by only {step:.2e}"
    assert worst <= tol, f"largest difference {worst:.3e} > tolerance {tol:.3e} (step {step:.3e})"


def make_cfg(base, world_size: int, objective: str = "nft", zero_stage: int = 0) -> Config:
    sampler = {"kind": "sde" if objective == "grpo" else "ode", "num_steps": 4}
    return Config.model_validate({
        "model": TINY_MODEL, "pretrain": {"checkpoint": str(base)},
        "rollout": {"sampler": sampler},
        "algorithm": {"objective": objective, "train_timesteps": 2, "grpo_clip": 0.2, "kl_coef": 0.01},
        "learner": {"world_size": world_size, "lr": 1e-2, "adam_eps": ADAM_EPS, "micro_batch_size": 8,
                    "num_cpus_per_worker": 0.5, "zero_stage": zero_stage},
    })


def make_shard(cfg: Config, n: int = 24) -> TrainShard:
    from policies.batch import GroupSpec
    from policies.rollout import sample_groups

    gen = torch.Generator().manual_seed(0)
    policy = build_policy(cfg.model, 2, cfg.pretrain.checkpoint)
    groups = [GroupSpec(0, i, 0, seed=i, preference=(i / 2, 1 - i / 2)) for i in range(3)]
    batch = sample_groups(policy.velocity, groups, n // 3, (2,), cfg.rollout.sampler, 1)
    return TrainShard(batch.samples, batch.preferences, torch.randn(n, 2, generator=gen), batch.preferences,
                      sample_seeds=torch.arange(n) + 7, seed=3, trajectory=batch.trajectory)


def reference_step(cfg: Config, shard: TrainShard) -> dict[str, torch.Tensor]:
    """One AdamW step on the whole shard in a single process, no DeepSpeed, no Ray."""
    lc = cfg.learner
    policy = build_policy(cfg.model, 2, cfg.pretrain.checkpoint)
    old = policy.trainable_state()
    opt = torch.optim.AdamW(policy.param_groups(lc.lr, lc.pref_lr_mult), lr=lc.lr, weight_decay=lc.weight_decay,
                            eps=lc.adam_eps)
    loss, _ = micro_loss(policy, old, shard, cfg.algorithm, cfg.rollout.sampler)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for _, p in policy.trainable_named()], lc.grad_clip)
    opt.step()
    return policy.trainable_state()


@pytest.mark.parametrize("objective,zero_stage", [("nft", 0), ("grpo", 0), ("nft", 2)])
def test_world_size_two_matches_single_process(ray_local, tiny_base, objective, zero_stage):
    """ZeRO-2 partitions the optimizer's weights: the old/EMA updates gather the full fp32 master."""
    cfg = make_cfg(tiny_base, 2, objective, zero_stage)
    shard = make_shard(cfg)
    expected = reference_step(cfg, shard)
    group = LearnerGroup(cfg, str(tiny_base))
    try:
        before = group.export_state()
        metrics = group.train_step(shard, step=0)
        after = group.export_state()
        states = [s["trainable"] for s in ray_local.get([w.export_state.remote() for w in group.workers])]
    finally:
        group.shutdown()
    assert metrics["learner/grad_norm"] > 0 and "loss/policy" in metrics
    for k in expected:
        assert torch.equal(states[0][k], states[1][k]), k  # ranks identical
    assert_same_step(before["trainable"], after["trainable"], expected)
    # old policy at step 0 has decay 0 -> equals the new weights; the EMA's warm-up decay after the first
    # optimizer step is (1 + 1) / (10 + 1) = 2/11: it moved 9/11 of the way.
    for k in expected:
        assert torch.allclose(after["old"][k], after["trainable"][k])
    assert metrics["learner/ema_decay"] == pytest.approx(2 / 11)
    d = 2 / 11
    for k in expected:  # ema <- d * ema + (1 - d) * new, in float32: a few ulps of the weights
        assert torch.allclose(after["ema"][k], d * before["ema"][k] + (1 - d) * after["trainable"][k],
                              rtol=0, atol=1e-6), k


def test_world_size_one_and_optimizer_checkpoint_roundtrip(ray_local, tiny_base, tmp_path):
    cfg = make_cfg(tiny_base, 1)
    shard = make_shard(cfg)
    group = LearnerGroup(cfg, str(tiny_base))
    try:
        group.train_step(shard, step=0)
        group.save_optimizer(tmp_path, "tag1")
        state = group.export_state()
        group.train_step(shard, step=1)
        continued = group.export_state()["trainable"]
    finally:
        group.shutdown()
    # A fresh group restored from the checkpoint takes the same second step (Adam moments restored).
    fresh = LearnerGroup(cfg, str(tiny_base))
    try:
        fresh.load_optimizer(tmp_path, "tag1")
        fresh.import_state(state)
        fresh.train_step(shard, step=1)
        resumed = fresh.export_state()["trainable"]
    finally:
        fresh.shutdown()
    assert all(torch.allclose(continued[k], resumed[k], atol=1e-6) for k in continued)


@pytest.mark.parametrize("kind", ["sd3", "flux_kontext", "ltx2"])
def test_diffusers_backbone_learner_step_matches_single_process(ray_local, tiny_pipeline, kind):
    """One DeepSpeed step on conditions encoded by a rollout-side policy; the learner has no encoders."""
    import numpy as np

    from conftest import diffusers_model
    from policies.batch import GroupSpec
    from policies.rollout import rollout_groups

    base = str(tiny_pipeline(kind))
    cfg = Config.model_validate({
        "model": diffusers_model(kind), "pretrain": {"checkpoint": base},
        "rollout": {"sampler": {"num_steps": 2}}, "algorithm": {"train_timesteps": 1, "kl_coef": 0.01},
        "learner": {"world_size": 1, "lr": 1e-1, "adam_eps": ADAM_EPS, "micro_batch_size": 4,
                    "num_cpus_per_worker": 0.5}})
    src = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32) if kind == "flux_kontext" else None
    groups = [GroupSpec(0, i, 0, seed=i, preference=(i, 1 - i), prompt=["a red circle", "make the square blue"][i],
                        source_image=None if src is None else src[i]) for i in range(2)]
    batch = rollout_groups(build_policy(cfg.model, 2, base), groups, 3, cfg.rollout.sampler, 1)
    gen = torch.Generator().manual_seed(0)
    shard = TrainShard(batch.samples, batch.preferences, torch.randn(6, 2, generator=gen), batch.preferences,
                       sample_seeds=torch.arange(6), seed=3, conditions=batch.conditions,
                       cond_index=batch.group_index)
    expected = reference_step(cfg, shard)
    group = LearnerGroup(cfg, base)
    try:
        before = group.export_state()["trainable"]
        metrics = group.train_step(shard, step=0)
        after = group.export_state()["trainable"]
    finally:
        group.shutdown()
    assert metrics["learner/grad_norm"] > 0 and np.isfinite(metrics["loss/policy"])
    assert_same_step(before, after, expected)

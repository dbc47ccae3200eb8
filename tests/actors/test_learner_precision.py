"""The GPU presets' learner recipe on CPU: tiny SD3, bf16 base, ``learner.precision: bf16``, ZeRO-2, gloo.

Before the fix the first step raised ``mat1 and mat2 must have the same dtype`` (DeepSpeed casts the
preference modules to bf16, ``w`` arrived fp32). Now it steps, and the old-policy and EMA copies are
fp32 and follow the optimizer's fp32 master weights exactly as an fp32 computation says.
"""

from __future__ import annotations

import pytest
import torch

from actors.learner import LearnerGroup
from conftest import diffusers_model
from infra.config import Config, ConfigError, load_config
from policies.batch import GroupSpec
from policies.policy import build_policy
from policies.rollout import rollout_groups
from policies.train_step import TrainShard


def bf16_cfg(base: str) -> Config:
    return Config.model_validate({
        "model": diffusers_model("sd3", dtype="bf16"), "pretrain": {"checkpoint": base},
        "rollout": {"sampler": {"num_steps": 3}},
        "algorithm": {"train_timesteps": 2, "kl_coef": 0.01, "timestep_source": "sampler_grid"},
        "learner": {"world_size": 1, "lr": 1e-2, "micro_batch_size": 4, "num_cpus_per_worker": 0.5,
                    "precision": "bf16", "zero_stage": 2, "backend": "gloo"}})


def test_bf16_zero2_learner_steps_and_keeps_fp32_old_and_ema(ray_local, tiny_pipeline):
    """Two real steps; after each, ``ema_s = d_s ema_{s-1} + (1 - d_s) theta_s`` (and the same for the old
    policy) recomputed in float64 from the exported fp32 weights."""
    base = str(tiny_pipeline("sd3"))
    cfg = bf16_cfg(base)
    groups = [GroupSpec(0, i, 0, seed=i, preference=(i, 1 - i), prompt=["a red circle", "a blue square"][i])
              for i in range(2)]
    batch = rollout_groups(build_policy(cfg.model, 2, base), groups, 3, cfg.rollout.sampler, 1)
    shard = TrainShard(batch.samples, batch.preferences, torch.randn(6, 2, generator=torch.Generator().manual_seed(0)),
                       batch.preferences, sample_seeds=torch.arange(6), seed=3, conditions=batch.conditions,
                       cond_index=batch.group_index)
    group = LearnerGroup(cfg, base)
    try:
        states, metrics = [group.export_state()], []
        for s in range(2):
            metrics.append(group.train_step(shard, step=s))
            states.append(group.export_state())
    finally:
        group.shutdown()
    assert all(m["learner/grad_norm"] > 0 and torch.isfinite(torch.tensor(m["loss/policy"])) for m in metrics)
    assert [m["learner/ema_decay"] for m in metrics] == [2 / 11, 3 / 12]
    for kind in ("trainable", "old", "ema"):
        assert {v.dtype for v in states[-1][kind].values()} == {torch.float32}, kind
    trained = states[-1]["trainable"]
    assert max((trained[k] - states[0]["trainable"][k]).abs().max() for k in trained) > 1e-4
    # The exported weights are DeepSpeed's fp32 master, not the bf16 module copy (that would round-trip).
    flat = torch.cat([v.flatten() for v in trained.values()])
    assert (flat != flat.bfloat16().float()).any()
    a = cfg.algorithm
    for s in range(2):
        prev, now = states[s], states[s + 1]
        d_ema = min((1 + (s + 1)) / (10 + (s + 1)), a.ema_decay)  # the reference's warm-up, s counted from 1
        d_old = min(a.old_decay_per_step * s, a.old_decay_max)
        for k, theta in now["trainable"].items():
            scale = float(theta.abs().max() + prev["ema"][k].abs().max() + prev["old"][k].abs().max())
            # An fp32 update is off by a few ulps of its operands (2^-24 relative each); a bf16 one by 2^-9.
            tol = 4 * 2**-24 * scale
            want_ema = d_ema * prev["ema"][k].double() + (1 - d_ema) * theta.double()
            want_old = d_old * prev["old"][k].double() + (1 - d_old) * theta.double()
            assert (now["ema"][k].double() - want_ema).abs().max() <= tol, (s, k)
            assert (now["old"][k].double() - want_old).abs().max() <= tol, (s, k)


def test_zero_stage_three_is_rejected_at_config_time():
    with pytest.raises(ValueError, match=r"learner\.zero_stage=3 .*allowed: 0, 1, 2"):
        Config.model_validate({"learner": {"zero_stage": 3}})
    with pytest.raises(ConfigError, match=r"learner\.zero_stage=3"):
        load_config("configs/sd35.yaml", ["learner.zero_stage=3"])

"""The DeepSpeed config dict for the learner group, built from :class:`infra.config.LearnerConfig`.

The learner passes its own ``torch.optim.AdamW`` (backbone/LoRA params at ``lr``, preference
modules at ``lr * pref_lr_mult``) to ``deepspeed.initialize``, so this config has no
``optimizer`` or ``scheduler`` section: learning rates and weight decay live in the optimizer's
param groups, and DeepSpeed keeps them (every ZeRO stage wraps the client optimizer's groups).

What runs on CPU (deepspeed 0.19.8, torch 2.13 CPU, gloo, 2 processes, client AdamW with two
param groups at different learning rates, gradient clipping on; compared with a single-process
AdamW on the concatenated data after two steps):

- fp32: ZeRO stages 0, 1, 2 and 3 all work, agree with the reference to 3e-8 and leave identical
  parameters on every rank (``tests/infra/test_distributed.py`` checks all four across two Ray
  actors). Torch AdamW is on DeepSpeed's ZeRO allow-list, so no ``zero_allow_untested_optimizer``.
  Under stage 3 the module's parameters are partitioned: read them inside
  ``deepspeed.zero.GatheredParameters(params)``. The learner does not (its old-policy swap and EMA
  read the parameters directly), so a job config rejects ``learner.zero_stage: 3``.
- bf16: runs on every stage. Stage 0 wraps the optimizer in ``FP16_UnfusedOptimizer`` (fp32
  master weights) but accumulates and all-reduces gradients in bf16 (an fp32 ``grad_accum_dtype``
  without ZeRO raises NotImplementedError), so on the toy it lands 2e-2 from the fp32 reference where
  stages 1-3 (fp32 gradients in the ZeRO optimizer) land 1e-3.
- fp16: runs on every stage, but dynamic loss scaling starts at 2**16: under ZeRO 1-3 the toy's
  first two steps overflowed and were skipped (``engine.skipped_steps``); stage 0 did not skip
  but its fp16 gradients land 4e-2 from the reference. Prefer bf16.
"""

from __future__ import annotations

from typing import Any

from infra.config import LearnerConfig

# DeepSpeed prints throughput every N steps; the learner logs its own metrics to MLflow.
_NEVER = 2**31 - 1


def deepspeed_config(learner: LearnerConfig, world_size: int, micro_batch_size: int) -> dict[str, Any]:
    """DeepSpeed config for ``world_size`` workers, each doing one ``micro_batch_size`` step.

    One optimizer step per micro-batch (no gradient accumulation inside DeepSpeed), so the
    global batch is ``micro_batch_size * world_size``. Gradients are averaged over ranks, so
    losses should be means over the local micro-batch.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch_size * world_size,
        "gradient_clipping": learner.grad_clip,
        "zero_optimization": {"stage": learner.zero_stage},
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
    }
    if learner.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif learner.precision == "fp16":
        # loss_scale 0 = dynamic loss scaling (DeepSpeed's default window and start power).
        config["fp16"] = {"enabled": True, "loss_scale": 0}
    return config

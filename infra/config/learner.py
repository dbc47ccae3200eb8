"""``learner`` and ``loop``: the DeepSpeed learner group and the single-controller loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from infra.config.base import Strict


class LearnerConfig(Strict):
    """The DeepSpeed learner group."""

    world_size: int = Field(1, ge=1)
    """Learner ranks (data-parallel DeepSpeed engines)."""
    num_cpus_per_worker: float = Field(0.5, ge=0)
    """CPUs each learner rank reserves."""
    num_gpus_per_worker: float = Field(0.0, ge=0)
    """GPUs each learner rank reserves."""
    num_threads: int = Field(1, ge=1)
    """torch intra-op threads of each learner rank (1: ranks sharing a node's cores do not oversubscribe them)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend; ``auto`` = nccl with GPUs, gloo without."""
    zero_stage: int = Field(0, ge=0, le=3)
    """DeepSpeed ZeRO stage. The learner runs 0, 1 and 2; a job with 3 is rejected (its partitioned
    parameters would make the old-policy swap and the EMA read empty tensors)."""
    lr: float = Field(3e-4, gt=0)
    """AdamW learning rate of the LoRA / backbone parameters."""
    pref_lr_mult: float = Field(10.0, gt=0)
    """Learning-rate multiplier of the preference modules (they start from ~zero)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW's decoupled weight decay (the reference's SD3.5 recipe: 1e-4)."""
    adam_eps: float = Field(1e-8, gt=0)
    """AdamW's ``eps`` (torch's default). Adam's first step is ``lr * g / (|g| + eps)``: with a large eps
    it is linear in the gradient (what the learner tests use to compare steps across summation orders)."""
    grad_clip: float = Field(1.0, gt=0)
    """Global gradient-norm clip."""
    micro_batch_size: int = Field(256, ge=1)
    """Samples per forward/backward on one worker."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """DeepSpeed's compute precision; the old-policy and EMA copies stay fp32 whatever it is."""


class LoopConfig(Strict):
    """The single-controller training loop."""

    steps: int = Field(300, ge=1)
    """Training steps (one optimizer step each)."""
    max_staleness: int = Field(1, ge=0)
    """Rollouts may run this many policy versions ahead of the learner (0 = on-policy, synchronous)."""
    seed: int = 0
    """Seeds the preference draws, group seeds and training noise (with the step index)."""
    log_every: int = Field(1, ge=1)
    """Record the step's metrics every N steps (they reach MLflow at the next checkpoint)."""
    scatter_every: int = Field(100, ge=1)
    """Log a scatter of samples coloured by w every N steps."""
    checkpoint_every: int = Field(50, ge=1)
    """Checkpoint every N steps (and at the last). Training metrics reach MLflow here: the history
    holds only steps a checkpoint kept, so each step appears once after a crash and ``--resume``."""

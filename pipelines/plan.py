"""``paretoslider train --dry-run``: validate a config and print the plan, loading no weights.

The plan lists the resource pools (actors x GPUs), the batch geometry of one step, the objectives
(each resolved in the reward registry) and the tensors weight sync moves. Those are counted on a
policy whose transformer is built from its config on the ``meta`` device (diffusers kinds), so a
full-size backbone costs no memory; the config must be readable offline (a local directory, or a
hub id already in the Hugging Face cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from infra.config import Config
from reward_servers.registry import reward_factory

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class SyncedWeights:
    tensors: int
    params: int
    lora_params: int
    pref_params: int


def trainable_weights(cfg: Config) -> SyncedWeights:
    """What one weight sync moves: the policy's trainable tensors (LoRA + preference modules)."""
    from policies.policy import Policy, build_backbone

    if cfg.model.kind == "toy2d":
        backbone = build_backbone(cfg.model, cfg.num_objectives)
    else:
        import diffusers
        from accelerate import init_empty_weights

        from policies.diffusers_backbones import BACKBONES

        cls = BACKBONES[cfg.model.kind]
        base = cfg.model.diffusers.pretrained or cfg.pretrain.checkpoint
        transformer_cls = getattr(diffusers, cls.transformer_class)
        try:
            config = transformer_cls.load_config(base, subfolder="transformer", local_files_only=True)
            vae_config = dict(getattr(diffusers, cls.vae_class).load_config(base, subfolder="vae",
                                                                           local_files_only=True))
        except (OSError, EnvironmentError) as err:
            raise ValueError(f"dry run needs the transformer and VAE configs of '{base}' offline "
                             f"(a local directory or the Hugging Face cache): {err}") from None
        with init_empty_weights():
            transformer = transformer_cls.from_config(config)
        backbone = cls(transformer, None, vae_config, cfg.num_objectives, cfg.model)
    policy = Policy(backbone, cfg.model) if cfg.model.lora_rank > 0 or cfg.model.kind == "toy2d" else None
    if policy is None:
        raise ValueError("dry run of full fine-tuning (model.lora_rank=0) is only supported for toy2d")
    named = list(policy.trainable_named())
    lora = sum(p.numel() for n, p in named if "lora_" in n)
    pref = sum(p.numel() for n, p in named if ".pref." in n or n.startswith("pref."))
    return SyncedWeights(len(named), sum(p.numel() for _, p in named), lora, pref)


def describe_plan(cfg: Config) -> str:
    """The plan as text (raises ``ValueError`` naming the field for what cannot run)."""
    ro, lc, rw = cfg.rollout, cfg.learner, cfg.rewards
    objectives = []
    for spec in rw.objectives:
        reward_factory(spec.name)  # unknown names fail here with the registered list
        objectives.append(f"{spec.display} ({spec.name})")
    groups = ro.prompts_per_step * cfg.preferences.slots_per_prompt
    samples = groups * ro.group_size
    per_rank = math.ceil(samples / lc.world_size)
    micro = math.ceil(per_rank / lc.micro_batch_size)
    gpus = (ro.num_actors * ro.num_gpus_per_actor + lc.world_size * lc.num_gpus_per_worker
            + len(rw.objectives) * rw.num_replicas * rw.num_gpus)
    w = trainable_weights(cfg)
    dtype = cfg.model.diffusers.dtype if cfg.model.kind != "toy2d" else "fp32"
    base = cfg.model.diffusers.pretrained or cfg.pretrain.checkpoint if cfg.model.kind != "toy2d" \
        else cfg.pretrain.checkpoint
    lines = [
        f"plan for '{cfg.name}' (model.kind={cfg.model.kind}, base={base})",
        "pools:",
        f"  rollout  {ro.num_actors} actor(s) x {ro.num_gpus_per_actor:g} GPU, {ro.num_cpus_per_actor:g} CPU",
        f"  learner  world size {lc.world_size} x {lc.num_gpus_per_worker:g} GPU, ZeRO-{lc.zero_stage}, "
        f"{lc.precision}, backend {lc.backend}",
        f"  rewards  {len(rw.objectives)} objective(s) x {rw.num_replicas} replica(s) x {rw.num_gpus:g} GPU: "
        + ", ".join(objectives),
        f"  total    {gpus:g} GPU(s)",
        "batch per step:",
        f"  {ro.prompts_per_step} prompts x {cfg.preferences.slots_per_prompt} preference slots = {groups} groups"
        f" x {ro.group_size} samples = {samples} samples",
        f"  sampler {ro.sampler.kind}, {ro.sampler.num_steps} steps, shift {ro.sampler.shift:g}, "
        f"CFG {ro.sampler.guidance_scale:g}",
        f"  learner: {per_rank} samples per rank in {micro} micro-batch(es) of <= {lc.micro_batch_size}, "
        f"{cfg.algorithm.train_timesteps} timestep(s) each, {cfg.algorithm.objective}, lr {lc.lr:g} "
        f"(preference x{lc.pref_lr_mult:g}), clip {lc.grad_clip:g}",
        "weights to sync per version:",
        f"  {w.tensors} tensors, {w.params:,} parameters (LoRA r={cfg.model.lora_rank} alpha={cfg.model.lora_alpha:g}: "
        f"{w.lora_params:,}; preference modules: {w.pref_params:,}) = "
        f"{w.params * DTYPE_BYTES[dtype] / 2**20:.1f} MiB in {dtype}",
    ]
    return "\n".join(lines)

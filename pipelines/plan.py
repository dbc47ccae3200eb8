"""``paretoslider train --dry-run``: validate a config and print the plan, loading no weights.

The plan lists the resource pools (actors x GPUs), the batch geometry of one step, the objectives
(each resolved in the reward registry, its args checked against the constructor) and the tensors
weight sync moves. Those are counted on a policy whose transformer is built from its config on the
``meta`` device (diffusers kinds), so a full-size backbone costs no memory; the config must be
readable offline: a local directory, a hub id already in the Hugging Face cache, or a hub id whose
public configs ship in ``configs/hub/`` (the GPU presets' bases), see :func:`offline_config_dir`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from infra.config import Config
from pipelines.pretrain import base_location
from reward_servers.registry import check_args

SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "hub"
"""``<org>/<repo>/{transformer,vae}/config.json`` of the GPU presets' bases, copied from the hub."""
UNITS = {"none": "", "batch_std": ", objectives in batch-std units",
         "first_batch_std": ", objectives in units of the first batch's std"}
"""How ``algorithm.reward_scale`` reads in the plan (early scalarisation only)."""


@dataclass
class SyncedWeights:
    tensors: int
    params: int
    lora_params: int
    pref_params: int
    config_source: str
    """Where the transformer's config was read (the base itself, or the shipped copy)."""
    build_s: float
    """Seconds to build the policy (on the ``meta`` device for diffusers kinds)."""


def offline_config_dir(base: str) -> Path | None:
    """The shipped copy of hub id ``base``'s (``org/repo``) transformer and VAE configs, if the repo has one."""
    if Path(base).is_absolute() or len(Path(base).parts) != 2:
        return None
    shipped = SHIPPED_CONFIGS / base
    return shipped if (shipped / "transformer" / "config.json").is_file() else None


def _read_configs(transformer_cls, vae_cls, base: str) -> tuple[dict, dict, str]:
    """Transformer and VAE configs of ``base`` read offline: the base itself, else the shipped copy."""

    shipped = offline_config_dir(base)
    error: OSError | None = None
    for source in (base, shipped) if shipped else (base,):
        try:
            with warnings.catch_warnings():
                # diffusers passes huggingface_hub a deprecated argument when it looks in the cache.
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                config = transformer_cls.load_config(source, subfolder="transformer", local_files_only=True)
                vae_config = dict(vae_cls.load_config(source, subfolder="vae", local_files_only=True))
        except OSError as err:
            error = err
            continue
        where = base if source == base else f"shipped copy {shipped.relative_to(SHIPPED_CONFIGS.parents[1])}"
        return config, vae_config, where
    raise ValueError(f"dry run needs the transformer and VAE configs of '{base}' offline (a local directory, "
                     f"the Hugging Face cache or {SHIPPED_CONFIGS}/<org>/<repo>): {error}")


def build_meta_policy(cfg: Config):
    """``(policy, config source, seconds)``: the policy every role builds, on the ``meta`` device for
    diffusers kinds (weights in the configured dtype, no memory), without encoders."""
    from policies.policy import Policy, build_backbone

    if cfg.model.lora_rank == 0 and cfg.model.kind != "toy2d":
        raise ValueError("dry run of full fine-tuning (model.lora_rank=0) is only supported for toy2d")
    start = time.perf_counter()
    if cfg.model.kind == "toy2d":
        policy, source = Policy(build_backbone(cfg.model, cfg.num_objectives), cfg.model), cfg.pretrain.checkpoint
    else:
        import diffusers

        from policies.diffusers_backbones import BACKBONES

        cls = BACKBONES[cfg.model.kind]
        transformer_cls = getattr(diffusers, cls.transformer_class)
        config, vae_config, source = _read_configs(transformer_cls, getattr(diffusers, cls.vae_class),
                                                    str(base_location(cfg)))
        # Every tensor on meta, buffers included: SD3.5's 384 x 384 sin-cos position table alone
        # would take seconds and ~1 GiB on the CPU.
        from policies.diffusers_backbones import DTYPES

        with torch.device("meta"):
            transformer = transformer_cls.from_config(config).to(DTYPES[cfg.model.diffusers.dtype])
            backbone = cls(transformer, None, vae_config, cfg.num_objectives, cfg.model)
            policy = Policy(backbone, cfg.model)
    return policy, source, time.perf_counter() - start


def trainable_weights(cfg: Config, built=None) -> SyncedWeights:
    """What one weight sync moves: the policy's trainable tensors (LoRA + preference modules)."""
    policy, source, seconds = built or build_meta_policy(cfg)
    named = list(policy.trainable_named())
    lora = sum(p.numel() for n, p in named if "lora_" in n)
    pref = sum(p.numel() for n, p in named if ".pref." in n or n.startswith("pref."))
    return SyncedWeights(len(named), sum(p.numel() for _, p in named), lora, pref, source, seconds)


def describe_plan(cfg: Config) -> str:
    """The plan as text (raises ``ValueError`` naming the field for what cannot run)."""
    ro, lc, rw, al = cfg.rollout, cfg.learner, cfg.rewards, cfg.algorithm
    objectives = []
    for spec in rw.objectives:
        check_args(spec)  # unknown names and args the reward does not take fail here
        if spec.url is not None:
            objectives.append((spec, 0, 0.0, f"at {spec.url}"))
            continue
        replicas = spec.num_replicas or rw.num_replicas
        gpus = rw.num_gpus if spec.num_gpus is None else spec.num_gpus
        objectives.append((spec, replicas, gpus, f"{replicas} replica(s) x {gpus:g} GPU"))
    groups = ro.prompts_per_step * cfg.preferences.slots_per_prompt
    samples = groups * ro.group_size
    per_rank = math.ceil(samples / lc.world_size)
    micro = math.ceil(per_rank / lc.micro_batch_size)
    rollout_gpus, learner_gpus = ro.num_actors * ro.num_gpus_per_actor, lc.world_size * lc.num_gpus_per_worker
    reward_gpus = sum(n * g for _, n, g, _ in objectives)
    built = build_meta_policy(cfg)
    w = trainable_weights(cfg, built)
    image = cfg.model.kind != "toy2d"
    dtype = cfg.model.diffusers.dtype if image else "fp32"
    d = cfg.model.diffusers
    lines = [
        f"plan for '{cfg.name}' (model.kind={cfg.model.kind}, base={base_location(cfg)})",
        f"  config: {w.config_source}" + (f"; {d.height}x{d.width} px, {dtype}, gradient checkpointing "
                                          f"{'on' if d.gradient_checkpointing else 'off'}" if image else ""),
        "pools:",
        f"  rollout  {ro.num_actors} actor(s) x {ro.num_gpus_per_actor:g} GPU, {ro.num_cpus_per_actor:g} CPU"
        + _pool_note(cfg.cluster.rollout.resources),
        f"  learner  world size {lc.world_size} x {lc.num_gpus_per_worker:g} GPU, ZeRO-{lc.zero_stage}, "
        f"{lc.precision}, backend {lc.backend}" + _pool_note(cfg.cluster.learner.resources),
        f"  rewards  {len(objectives)} objective(s)" + _pool_note(rw.resources),
        *(f"    {spec.display} ({spec.name}): {where}" for spec, _, _, where in objectives),
        f"  total    {rollout_gpus + learner_gpus + reward_gpus:g} GPU(s) = rollout {rollout_gpus:g} + "
        f"learner {learner_gpus:g} + rewards {reward_gpus:g}"
        f"{', placement groups' if cfg.cluster.placement_groups else ''}",
        "batch per step:",
        f"  {ro.prompts_per_step} prompts x {cfg.preferences.slots_per_prompt} preference slots = {groups} groups"
        f" x {ro.group_size} samples = {samples} samples",
        f"  sampler {_sampler_name(cfg)}, {ro.sampler.num_steps} steps on the {_grid_name(cfg)}, "
        f"shift {ro.sampler.shift:g}, CFG {ro.sampler.guidance_scale:g}",
        f"  learner: {per_rank} samples per rank in {micro} micro-batch(es) of <= {lc.micro_batch_size}, "
        f"{al.train_timesteps} timestep(s) each, {al.objective}, lr {lc.lr:g} "
        f"(preference x{lc.pref_lr_mult:g}), clip {lc.grad_clip:g}",
        f"  advantages: {al.scalarisation} scalarisation"
        f"{UNITS[al.reward_scale] if al.scalarisation == 'early' else ''}"
        f", divided by the {al.adv_std} std",
        "recipe as trained:",
        *(f"  {line}" for line in _recipe(cfg)),
        "weights to sync per version:",
        f"  {w.tensors} tensors, {w.params:,} parameters (LoRA r={cfg.model.lora_rank} alpha={cfg.model.lora_alpha:g}: "
        f"{w.lora_params:,}; preference modules: {w.pref_params:,}) = "
        # The learner publishes its fp32 old-policy copy whatever the model's dtype.
        f"{w.params * 4 / 2**20:.1f} MiB in fp32",
        f"  counted on a policy built {'on the meta device ' if image else ''}in {w.build_s:.1f} s; no weights loaded",
    ]
    if image:
        lines += ["estimated peak GPU memory (meta device; transformer + adapters, encoders and VAE not counted):",
                  *_memory_lines(cfg, built[0])]
    return "\n".join(lines)


def _memory_lines(cfg: Config, policy) -> list[str]:
    """One line per role, checked against its pool's ``gpu_memory_gb`` (a plan that cannot fit is refused)."""
    from pipelines.memory_plan import role_memory

    lines = []
    pools = {"rollout actor": ("cluster.rollout.gpu_memory_gb", cfg.cluster.rollout.gpu_memory_gb,
                               "lower rollout.micro_batch_size"),
             "learner rank": ("cluster.learner.gpu_memory_gb", cfg.cluster.learner.gpu_memory_gb,
                              "lower learner.micro_batch_size or algorithm.train_timesteps, turn on "
                              "model.diffusers.gradient_checkpointing, or raise learner.zero_stage")}
    for role in role_memory(cfg, policy):
        field, card, fix = pools[role.role]
        fits = "" if card is None else f" of {card:g} GiB ({field})"
        lines.append(f"  {role.role}: {role.total_gib:.1f} GiB = weights and optimizer {role.weights_gib:.1f} + "
                     f"activations {role.activations_gib:.1f}{fits}")
        if card is not None and role.total_gib > card:
            raise ValueError(f"a {role.role} needs an estimated {role.total_gib:.1f} GiB of GPU memory, more than "
                             f"{field}={card:g}: {fix}")
    return lines


def _sampler_name(cfg: Config) -> str:
    sp = cfg.rollout.sampler
    if sp.kind == "sde":
        return f"sde (Flow-GRPO, noise level {sp.noise_level:g})"
    return "ode DPM-Solver++(2M)" if sp.solver == "dpmpp_2m" else "ode Euler"


def _grid_name(cfg: Config) -> str:
    if cfg.rollout.sampler.time_grid == "scheduler":
        return "backbone scheduler's sigma grid"
    return "uniform grid"


def _recipe(cfg: Config) -> list[str]:
    """The choices that decide what is learned, in the words of the reference's recipe."""
    al, lc, m, ro = cfg.algorithm, cfg.learner, cfg.model, cfg.rollout
    if al.objective == "grpo":
        timesteps = f"{al.train_timesteps} of the {ro.sampler.num_steps} SDE transitions per trajectory"
    elif al.timestep_source == "sampler_grid":
        timesteps = (f"{al.train_timesteps} of the sampler's {ro.sampler.num_steps} non-zero grid points per sample "
                     f"(without replacement, {_grid_name(cfg)})")
    else:
        timesteps = f"{al.train_timesteps} per sample from U(0, 1)"
    ema = (f"warm-up min((1 + s) / (10 + s), {al.ema_decay:g})" if al.ema_schedule == "warmup"
           else f"constant {al.ema_decay:g}")
    lines = [
        f"timesteps: {timesteps}",
        f"EMA: {ema}; old policy: min({al.old_decay_per_step:g} s, {al.old_decay_max:g})",
        f"old-policy and EMA copies: fp32 (from the optimizer's fp32 master), learner precision {lc.precision}",
        f"optimiser: AdamW lr {lc.lr:g}, preference modules x{lc.pref_lr_mult:g}, weight decay {lc.weight_decay:g}",
    ]
    if m.lora_rank > 0:
        lines.append(f"LoRA: r={m.lora_rank} alpha={m.lora_alpha:g}, {m.lora_init} init, on {', '.join(m.lora_targets)}")
    return lines


def _pool_note(resources: dict[str, float]) -> str:
    return f", pinned to {resources}" if resources else ""

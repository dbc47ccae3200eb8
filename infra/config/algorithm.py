"""``algorithm``: the RL objective, advantages and policy copies."""

from __future__ import annotations

from typing import Literal

import yaml
from pydantic import Field

from infra.config.base import Strict


class AlgorithmConfig(Strict):
    """The multi-objective RL objective."""

    objective: Literal["nft", "grpo"] = "nft"
    """``nft``: DiffusionNFT (paper default, ODE samples); ``grpo``: Flow-GRPO (needs sde sampler)."""
    scalarisation: Literal["late", "early", "tchebycheff", "smooth_tchebycheff"] = "tchebycheff"
    """``tchebycheff`` (default): ``-max_m w_m (1 - r~_m)`` on batch-range-normalised rewards, the one
    candidate that beat fixed-weight models with a slider that moves on every toy front (reaches concave
    fronts; docs/evaluation.md, Candidate recipes);
    ``late``: per-objective group-normalised advantages weighted by w (the ParetoSlider paper; a switch
    between the ends on the toy fronts, kept by the GPU presets that reproduce the paper);
    ``early``: reward = weighted sum, normalised once (fixed-weight baselines; with ``reward_scale:
    batch_std`` also the slider of ``configs/shapes_edit.yaml``);
    ``smooth_tchebycheff``: its log-sum-exp relaxation at temperature ``smooth_temperature``."""
    smooth_temperature: float = Field(0.1, gt=0)
    """``mu`` of smooth Tchebycheff: ``-mu log sum_m exp(w_m (1 - r~_m) / mu)`` (-> Tchebycheff as mu -> 0,
    ranks like the weighted sum as mu grows). Shortfalls lie in [0, 1], so mu = 0.1 is a soft max."""
    adv_std: Literal["group", "batch"] = "group"
    """Divide the group-centred rewards by the group's std (flow_grpo / DiffusionNFT default) or by the
    batch's (flow_grpo ``global_std``: a group whose samples score alike keeps advantage ~0)."""
    reward_scale: Literal["none", "batch_std", "first_batch_std"] = "none"
    """Early scalarisation only: the unit each objective is measured in before the weighted sum, so
    ``w`` weighs commensurate units and the slider keeps the front's slopes
    (``policies.objectives.early_advantages``). ``batch_std``: its std over each batch (a unit that
    moves with the policy); ``first_batch_std``: its std over the run's first batch (the base model's
    spread), fixed for the run and kept in the checkpoint."""
    fixed_preference: list[float] | None = None
    """Train every sample at this single ``w`` instead of sampling (fixed-weight baselines)."""
    adv_clip: float = Field(5.0, gt=0)
    """Advantages are clipped to [-adv_clip, adv_clip] (DiffusionNFT's A_max; GRPO's advantage clip)."""
    nft_beta: float = Field(0.1, gt=0, le=1)
    """DiffusionNFT ``beta`` mixing the current and the old velocity."""
    loss_scale: float = Field(5.0, gt=0)
    """Paper's policy-loss multiplier (equal to the advantage clip in the reference code)."""
    kl_coef: float = Field(1e-4, ge=0)
    """Weight of the KL-like term to the reference (base model, no w)."""
    grpo_clip: float = Field(1e-4, gt=0)
    """Flow-GRPO PPO clip range."""
    train_timesteps: int = Field(4, ge=1)
    """NFT: noise levels drawn per sample per update; GRPO: SDE steps trained per trajectory."""
    timestep_source: Literal["uniform", "sampler_grid"] = "uniform"
    """NFT: where each trained noise level ``t`` comes from. ``uniform``: ``t ~ U(0, 1)`` (clamped at
    1e-3); ``sampler_grid``: ``train_timesteps`` distinct points of the rollout sampler's own time grid
    (its ``num_steps`` non-zero times), drawn per sample without replacement, as the reference trains
    (a random permutation of the 25 points per sample, the first ``int(0.99 * 25) = 24`` of them)."""
    old_decay_per_step: float = Field(0.001, ge=0, le=1)
    """Old (sampling) policy: ``old <- d old + (1 - d) theta`` with ``d = min(rate * step, max)``."""
    old_decay_max: float = Field(0.5, ge=0, le=1)
    """Cap of the old (sampling) policy's decay ``min(old_decay_per_step * s, old_decay_max)``."""
    ema_decay: float = Field(0.9, ge=0, lt=1)
    """EMA of the trained weights (what is evaluated, checkpointed and registered): the largest decay."""
    ema_schedule: Literal["warmup", "constant"] = "warmup"
    """``warmup``: decay ``min((1 + s) / (10 + s), ema_decay)`` after optimizer step ``s = 1, 2, ...`` (the
    reference's; after 5 steps the EMA holds 0.2% of the initial weights); ``constant``: ``ema_decay``
    from the first step (after 5 steps still 59% initial weights)."""

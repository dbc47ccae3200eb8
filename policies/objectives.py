"""Multi-objective RL objectives, one small function per equation (ParetoSlider, Golan et al. 2026, on
DiffusionNFT and Flow-GRPO; each docstring gives the formula it computes).

Symbols: ``B`` samples, ``M`` objectives, ``r`` raw rewards ``[B, M]``, ``w`` preferences ``[B, M]``,
``g`` group index ``[B]`` (a group is one (prompt, w) pair with G samples).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

ADV_EPS = 1e-4
"""Added to the group std, as in flow_grpo / DiffusionNFT."""


def orient_rewards(rewards: torch.Tensor, directions: list[str]) -> torch.Tensor:
    """Flip objectives declared ``"min"`` so that higher is always better."""
    sign = torch.tensor([1.0 if d == "max" else -1.0 for d in directions], dtype=rewards.dtype)
    return rewards * sign


def group_normalise(x: torch.Tensor, g: torch.Tensor, eps: float = ADV_EPS, std: str = "group") -> torch.Tensor:
    """``(x - mean_group) / (std + eps)`` per column; population std of the group (``std="group"``)
    or of the whole batch (``"batch"``: flow_grpo's ``global_std``), current batch only.

    The batch std keeps a group whose samples all score alike (a saturated reward) at advantage ~0
    instead of blowing its tiny differences up to +-1."""
    num_groups = int(g.max()) + 1
    x2 = x if x.dim() == 2 else x[:, None]
    counts = torch.zeros(num_groups, dtype=x2.dtype).index_add_(0, g, torch.ones_like(g, dtype=x2.dtype))
    sums = torch.zeros(num_groups, x2.shape[1], dtype=x2.dtype).index_add_(0, g, x2)
    mean = sums / counts[:, None]
    if std == "group":
        sq = torch.zeros_like(sums).index_add_(0, g, (x2 - mean[g]) ** 2)
        scale = (sq / counts[:, None]).sqrt()[g]
    elif std == "batch":
        scale = x2.std(dim=0, unbiased=False, keepdim=True)
    else:
        raise ValueError(f"algorithm.adv_std must be one of ['group', 'batch'], got {std!r}")
    out = (x2 - mean[g]) / (scale + eps)
    return out if x.dim() == 2 else out[:, 0]


def late_advantages(rewards: torch.Tensor, g: torch.Tensor, std: str = "group") -> torch.Tensor:
    """ParetoSlider's late scalarisation: ``A_m`` normalised per objective inside each group ``[B, M]``.
    The loss weights them by ``w`` afterwards."""
    return group_normalise(rewards, g, std=std)


def reward_units(rewards: torch.Tensor, scale: str, first: torch.Tensor | None = None) -> torch.Tensor | None:
    """``[M]`` the unit each objective is measured in before early scalarisation (None: raw rewards).

    ``batch_std``: its population std over this batch (+ ``ADV_EPS``); ``first_batch_std``: ``first``,
    the std of the run's first batch, kept for the whole run (the base model's spread: a fixed unit,
    where the batch's own std moves with the policy)."""
    if scale == "none":
        return None
    if scale == "batch_std":
        return rewards.std(dim=0, unbiased=False) + ADV_EPS
    if scale == "first_batch_std":
        if first is None:
            raise ValueError("reward_scale='first_batch_std' needs the first batch's units")
        return first.to(rewards.dtype)
    raise ValueError(f"algorithm.reward_scale must be one of ['none', 'batch_std', 'first_batch_std'], got {scale!r}")


def early_advantages(rewards: torch.Tensor, w: torch.Tensor, g: torch.Tensor, std: str = "group",
                     units: torch.Tensor | None = None) -> torch.Tensor:
    """Early scalarisation: normalise ``sum_m w_m r_m / u_m`` inside each group ``[B, 1]``.

    ``units`` ``u [M]`` (see :func:`reward_units`; None: ``u = 1``) make ``w`` weigh commensurate
    units (a distance ranging over 3 and a probability over 1 count alike) while the trade-off's
    slopes survive: unlike per-objective group normalisation (late), where moving along the front
    gives ``A_1 ~ -A_2`` and the slider jumps at ``w = 0.5``, each ``w`` keeps the point of the front
    whose supporting line has slope ``w_1 u_2 / (w_2 u_1)``."""
    if units is not None:
        rewards = rewards / units
    return group_normalise((rewards * w).sum(dim=1, keepdim=True), g, std=std)


def tchebycheff_advantages(rewards: torch.Tensor, w: torch.Tensor, g: torch.Tensor, std: str = "group") -> torch.Tensor:
    """Tchebycheff scalarisation, normalised inside each group ``[B, 1]``.

    Each objective is scaled to ``[0, 1]`` by its range over the whole batch (estimated nadir and
    ideal: ``r~_m = (r_m - min_B r_m) / (max_B r_m - min_B r_m + eps)``), then
    ``s = -max_m w_m (1 - r~_m)``: a sample scores by its worst weighted shortfall from the ideal.
    Unlike ``sum_m w_m r_m``, its optimum moves continuously along concave parts of a front. The
    scale is the batch's, not the group's: a slider batch spans every ``w``, so the range is the
    front's, and each group's target point stays fixed as its own samples tighten.
    """
    lo, hi = rewards.min(dim=0).values, rewards.max(dim=0).values
    shortfall = 1 - (rewards - lo) / (hi - lo + ADV_EPS)
    return group_normalise(-(w * shortfall).max(dim=1, keepdim=True).values, g, std=std)


def smooth_tchebycheff_advantages(rewards: torch.Tensor, w: torch.Tensor, g: torch.Tensor, mu: float,
                                  std: str = "group") -> torch.Tensor:
    """Smooth Tchebycheff scalarisation (Lin et al., ICML 2024), normalised inside each group ``[B, 1]``.

    On the same batch-range shortfalls as :func:`tchebycheff_advantages`,
    ``s = -mu log sum_m exp(w_m (1 - r~_m) / mu)``: a log-sum-exp relaxation of the max, within
    ``mu log M`` of it. As ``mu -> 0`` it is Tchebycheff (reaches concave parts of a front, but only the
    worst objective gets credit); for large ``mu`` it ranks samples as the weighted sum does (every
    objective gets credit, in proportion to its softmax weight).
    """
    lo, hi = rewards.min(dim=0).values, rewards.max(dim=0).values
    shortfall = 1 - (rewards - lo) / (hi - lo + ADV_EPS)
    return group_normalise(-mu * torch.logsumexp(w * shortfall / mu, dim=1, keepdim=True), g, std=std)


def advantage_terms(rewards: torch.Tensor, w: torch.Tensor, g: torch.Tensor, scalarisation: str,
                    std: str = "group", units: torch.Tensor | None = None,
                    mu: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages ``A [B, K]`` and the weights ``lambda [B, K]`` the loss applies to them.

    late: ``K = M`` and ``lambda = w``; early and (smooth) tchebycheff: ``K = 1`` and ``lambda = 1``.
    ``std``: what the advantages are divided by (see :func:`group_normalise`); ``units``: the early
    scalarisation's per-objective units (see :func:`reward_units`); ``mu``: the smooth Tchebycheff
    temperature.
    """
    if scalarisation == "late":
        return late_advantages(rewards, g, std), w
    ones = torch.ones(w.shape[0], 1, dtype=w.dtype)
    if scalarisation == "early":
        return early_advantages(rewards, w, g, std, units), ones
    if scalarisation == "tchebycheff":
        return tchebycheff_advantages(rewards, w, g, std), ones
    if scalarisation == "smooth_tchebycheff":
        return smooth_tchebycheff_advantages(rewards, w, g, mu, std), ones
    raise ValueError("scalarisation must be one of ['late', 'early', 'tchebycheff', 'smooth_tchebycheff'], "
                     f"got {scalarisation!r}")


def nft_reward_weight(adv: torch.Tensor, adv_clip: float) -> torch.Tensor:
    """DiffusionNFT optimality probability ``r = 0.5 + 0.5 clip(A / A_max, -1, 1)``."""
    return 0.5 + 0.5 * torch.clamp(adv / adv_clip, -1.0, 1.0)


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def nft_x0_losses(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, v_theta: torch.Tensor,
                  v_old: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffusionNFT positive / implicit-negative reconstruction losses ``(L+, L-)``, each ``[B]``.

    ``v+ = beta v_theta + (1 - beta) v_old``, ``v- = (1 + beta) v_old - beta v_theta``,
    ``x0± = x_t - t v±``, ``L± = mean||x0± - x0||^2 / sg(mean|x0± - x0|)`` (clamped at 1e-5).
    """
    t_ = t.view((-1,) + (1,) * (x0.dim() - 1))
    v_old = v_old.detach()
    losses = []
    for v in (beta * v_theta + (1 - beta) * v_old, (1 + beta) * v_old - beta * v_theta):
        err = xt - t_ * v - x0
        scale = _per_sample_mean(err.detach().abs()).clamp(min=1e-5)
        losses.append(_per_sample_mean(err**2) / scale)
    return losses[0], losses[1]


def nft_loss(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, v_theta: torch.Tensor,
             v_old: torch.Tensor, v_ref: torch.Tensor | None, adv: torch.Tensor, lam: torch.Tensor,
             beta: float, adv_clip: float, loss_scale: float, kl_coef: float) -> tuple[torch.Tensor, dict]:
    """Preference-weighted DiffusionNFT loss.

    ``loss_k = (r_k L+ + (1 - r_k) L-) / beta``; ``policy = loss_scale * mean_B(sum_k lambda_k loss_k)``;
    plus ``kl_coef * mean ||v_theta - v_ref||^2`` to the reference (base model, no ``w``).
    """
    l_pos, l_neg = nft_x0_losses(x0, xt, t, v_theta, v_old, beta)
    r = nft_reward_weight(adv, adv_clip)
    per_obj = (r * l_pos[:, None] + (1 - r) * l_neg[:, None]) / beta
    policy = loss_scale * (lam * per_obj).sum(dim=1).mean()
    kl = torch.zeros((), dtype=policy.dtype)
    if v_ref is not None:
        kl = _per_sample_mean((v_theta - v_ref.detach()) ** 2).mean()
    loss = policy + kl_coef * kl
    metrics = {"loss/policy": policy.detach(), "loss/kl": kl.detach(),
               "loss/pos": l_pos.detach().mean(), "loss/neg": l_neg.detach().mean()}
    return loss, metrics


def grpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, clip: float,
              mean: torch.Tensor, ref_mean: torch.Tensor | None, std: torch.Tensor,
              kl_coef: float) -> tuple[torch.Tensor, dict]:
    """Flow-GRPO clipped-ratio loss for one SDE step.

    ``ratio = exp(log p - log p_old)``; ``policy = mean(max(-A ratio, -A clip(ratio, 1 ± eps)))``;
    KL to the reference ``||mu_theta - mu_ref||^2 / (2 sigma^2)`` averaged over dimensions.
    ``adv`` is the scalar advantage per sample ``[B]`` (already weighted by ``w`` for late scalarisation).
    """
    ratio = torch.exp(log_prob - old_log_prob.detach())
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    policy = torch.maximum(unclipped, clipped).mean()
    kl = torch.zeros((), dtype=policy.dtype)
    if ref_mean is not None:
        kl = _per_sample_mean((mean - ref_mean.detach()) ** 2 / (2 * std**2)).mean()
    loss = policy + kl_coef * kl
    metrics = {"loss/policy": policy.detach(), "loss/kl": kl.detach(),
               "grpo/clip_frac": ((ratio - 1).abs() > clip).float().mean().detach(),
               "grpo/ratio": ratio.detach().mean()}
    return loss, metrics


def old_policy_decay(step: int, rate: float, max_decay: float) -> float:
    """DiffusionNFT's schedule for the old (sampling) policy: ``d = min(rate * step, max_decay)``."""
    return min(rate * step, max_decay)


def ema_decay(step: int, max_decay: float, schedule: str) -> float:
    """EMA decay after the optimizer step with 0-based index ``step``.

    ``warmup``: ``d = min((1 + s) / (10 + s), max_decay)`` with ``s = step + 1`` optimizer steps taken
    (the reference's ``EMAModuleWrapper.get_current_decay``, called after its ``global_step += 1``:
    the first update keeps 2/11 of the initial weights); ``constant``: ``d = max_decay`` from the start.
    """
    if schedule == "constant":
        return max_decay
    s = step + 1
    return min((1 + s) / (10 + s), max_decay)


@torch.no_grad()
def ema_update(target: Iterable[torch.Tensor], source: Iterable[torch.Tensor], decay: float) -> None:
    """``target <- decay * target + (1 - decay) * source``, in place."""
    for t, s in zip(target, source, strict=True):
        t.mul_(decay).add_(s.detach().to(device=t.device, dtype=t.dtype), alpha=1 - decay)

"""Preference vectors on the probability simplex: training samples, group layout, sweep grids.

Paper (reference implementation): two objectives -> 10% one-hot corners, 90% Dirichlet(1, 1);
three or more -> 50% vertices, 35% edges (Dirichlet on a random pair), 15% interior Dirichlet.
Everything is deterministic in a seed so a re-issued group reproduces its ``w`` and noise exactly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from infra.config import Config
from policies.batch import GroupSpec
from policies.prompts import prompt_set


@dataclass(frozen=True)
class PreferenceMix:
    """Probabilities of each kind of draw (see ``infra.config.PreferenceConfig``)."""

    corner_prob: float = 0.1
    vertex_prob: float = 0.5
    edge_prob: float = 0.35
    dirichlet_alpha: float = 1.0


def sample_preference(num_objectives: int, mix: PreferenceMix, rng: np.random.Generator) -> np.ndarray:
    """Draw one preference vector ``w`` (shape ``[M]``, ``w >= 0``, ``sum w = 1``)."""
    m = num_objectives
    if m == 1:
        return np.ones(1)
    u = rng.random()
    if m == 2:
        if u < mix.corner_prob:
            return np.eye(2)[rng.integers(2)]
        return rng.dirichlet([mix.dirichlet_alpha] * 2)
    if u < mix.vertex_prob:
        return np.eye(m)[rng.integers(m)]
    if u < mix.vertex_prob + mix.edge_prob:
        i, j = rng.choice(m, size=2, replace=False)
        w = np.zeros(m)
        w[[i, j]] = rng.dirichlet([mix.dirichlet_alpha] * 2)
        return w
    return rng.dirichlet([mix.dirichlet_alpha] * m)


def group_seed(base_seed: int, epoch: int, prompt_idx: int, slot: int) -> int:
    """A stable 63-bit seed for group ``(epoch, prompt_idx, slot)``; independent of batch layout."""
    ss = np.random.SeedSequence([base_seed, epoch, prompt_idx, slot])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def step_seed(base_seed: int, step: int) -> int:
    """A 31-bit seed for the learner's training noise at ``step`` (same on every rank)."""
    ss = np.random.SeedSequence([base_seed, step, 0x5EED])
    return int(ss.generate_state(1, dtype=np.uint32)[0] >> np.uint32(1))


def preference_for_group(num_objectives: int, mix: PreferenceMix, seed: int) -> np.ndarray:
    """The preference vector of the group whose seed is ``seed``."""
    return sample_preference(num_objectives, mix, np.random.default_rng(seed))


def slot_preference(num_objectives: int, mix: PreferenceMix, base_seed: int, epoch: int, prompt_idx: int,
                    slot: int, antithetic: bool) -> np.ndarray:
    """The ``w`` of slot ``slot`` of a prompt: its own draw, or (``antithetic``) the draw of the first slot
    of its bundle of ``M`` consecutive slots with the coordinates rotated by the slot's place in the
    bundle: two objectives give ``w`` and ``1 - w`` for the same prompt, so the prompt's groups pull the
    shared weights along the trade-off in opposite directions and only the preference modules can
    tell them apart."""
    if not antithetic:
        return preference_for_group(num_objectives, mix, group_seed(base_seed, epoch, prompt_idx, slot))
    first = slot - slot % num_objectives
    w = preference_for_group(num_objectives, mix, group_seed(base_seed, epoch, prompt_idx, first))
    return np.roll(w, slot % num_objectives)


def simplex_grid(num_objectives: int, points_per_edge: int) -> np.ndarray:
    """All ``w`` on the simplex lattice with spacing ``1 / (points_per_edge - 1)``.

    Two objectives with 11 points gives ``w1 = 0, 0.1, ..., 1`` (ordered by ``w1``);
    three objectives with 11 points gives the 66-point lattice.
    """
    n = points_per_edge - 1
    rows = [c for c in itertools.product(range(n + 1), repeat=num_objectives) if sum(c) == n]
    grid = np.array(rows, dtype=np.float64) / n
    order = np.lexsort(grid.T[::-1])  # sort by w1, then w2, ...
    return grid[order]


def step_prompts(cfg: Config, step: int, count: int) -> list[int]:
    """The P distinct prompt indices of ``step`` (a seeded draw; toy2d: ``0..P-1``)."""
    p = cfg.rollout.prompts_per_step
    if cfg.data.kind == "none":
        return list(range(p))
    if p > count:
        raise ValueError(f"rollout.prompts_per_step ({p}) exceeds the {count} prompts of data.kind='{cfg.data.kind}'")
    rng = np.random.default_rng([cfg.loop.seed, step, 0x9A7A])
    return sorted(int(i) for i in rng.choice(count, size=p, replace=False))


def plan_groups(cfg: Config, step: int) -> list[GroupSpec]:
    """The groups of ``step``: P prompts x K preference slots, all derived from ids and the seed.

    One epoch is one step; the prompt indices come from ``cfg.data`` (toy2d: slot numbers).
    """
    pc = cfg.preferences
    mix = PreferenceMix(pc.corner_prob, pc.vertex_prob, pc.edge_prob, pc.dirichlet_alpha)
    prompts = prompt_set(cfg)
    groups = []
    for p in step_prompts(cfg, step, len(prompts)):
        record = prompts[p]
        for k in range(pc.slots_per_prompt):
            seed = group_seed(cfg.loop.seed, step, p, k)
            if cfg.algorithm.fixed_preference is not None:
                w = np.asarray(cfg.algorithm.fixed_preference, dtype=np.float64)
            else:
                w = slot_preference(cfg.num_objectives, mix, cfg.loop.seed, step, p, k, pc.antithetic)
            groups.append(GroupSpec(epoch=step, prompt_idx=p, slot=k, seed=seed,
                                    preference=tuple(float(x) for x in w), prompt=record.prompt,
                                    source_image=record.source_image))
    return groups

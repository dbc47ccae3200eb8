"""``paretoslider evaluate``: a trained model's front — per-point means with intervals, front metrics.

Every method in a comparison is sampled from the same noise (``evaluation.seed``) and scored by
the same rewards (the training ones, or the held-out ``evaluation.rewards``), so their points
differ only by the weights that produced them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.checkpoint import load_latest_checkpoint
from infra.config import Config
from pipelines.evaluate import sample_sweep
from policies.batch import RolloutBatch, concat_batches
from policies.fronts import (hypervolume, mean_interval, nearest_distance, non_dominated, reference_point,
                             sample_hypervolume, slider_monotonicity)
from policies.policy import Policy, build_policy
from reward_servers.base import RewardInputs
from reward_servers.client import RewardClient

Score = Callable[[RewardInputs], np.ndarray]
"""Scores a batch on every objective: ``[N, M]`` raw rewards."""

BASE_SEED_OFFSET = 7919
"""A second base sample set (other noise) calibrates the drift metric: base-vs-base distance."""


@dataclass
class FrontPoints:
    """One method's evaluated points: mean reward (and interval) per preference it was run at."""

    method: str
    preferences: np.ndarray
    """``[P, M]`` the ``w`` of each point (NaN for the base model, which takes none)."""
    mean: np.ndarray
    """``[P, M]`` mean raw reward per objective."""
    half_width: np.ndarray
    """``[P, M]`` half-width of the ``evaluation.confidence`` interval of each mean."""
    drift: np.ndarray
    """``[P]`` mean distance from a sample to its nearest base-model sample (same noise seed)."""
    sample_rewards: list[np.ndarray]
    """Per point, the ``[N, M]`` per-sample rewards (for per-sample metrics; not written to tables)."""

    def rows(self, names: list[str]) -> list[dict]:
        out = []
        for w, r, h, d in zip(self.preferences, self.mean, self.half_width, self.drift):
            row: dict = {"method": self.method}
            row.update({f"w_{n}": float(x) for n, x in zip(names, w)})
            row.update({f"r_{n}": float(x) for n, x in zip(names, r)})
            row.update({f"ci_{n}": float(x) for n, x in zip(names, h)})
            row["drift"] = float(d)
            out.append(row)
        return out


def eval_rewards_client(cfg: Config) -> RewardClient:
    """The scorer of evaluations: the held-out ``evaluation.rewards`` if set, else the training rewards."""
    rewards = cfg.rewards
    if cfg.evaluation.rewards is not None:
        rewards = rewards.model_copy(update={"objectives": cfg.evaluation.rewards})
    return RewardClient(rewards, app_name="eval_rewards")


def score_all(score: Score, parts: list[RolloutBatch]) -> list[np.ndarray]:
    """Score several sample sets (with their prompts and sources) in one call and split the
    ``[N, M]`` rewards back."""
    joined = concat_batches(parts)
    r = np.asarray(score(RewardInputs(samples=joined.reward_samples(), prompts=joined.prompts,
                                      source_images=joined.source_images())), dtype=np.float64)
    return np.split(r, np.cumsum([len(p) for p in parts])[:-1])


def flat(batch: RolloutBatch) -> np.ndarray:
    """``[N, D]`` what the drift distance compares (points, or images flattened)."""
    x = batch.reward_samples()
    return x.reshape(len(x), -1)


@dataclass
class BaseEval:
    """The base model's samples and per-sample rewards at the evaluation noise."""

    samples: np.ndarray
    rewards: np.ndarray
    """``[N, M]`` per-sample rewards (the reference point is derived from these)."""
    self_drift: float
    """Drift of a base sample set with other noise: the metric's floor."""


def evaluate_points(policy: Policy, cfg: Config, grid: np.ndarray, score: Score, method: str,
                    base: BaseEval, seed: int) -> FrontPoints:
    """Sample ``policy`` at every ``w`` of ``grid`` and score it (``[P, M]`` means and intervals)."""
    ev = cfg.evaluation
    batches, _ = sample_sweep(policy, cfg, grid, ev.num_samples, seed)
    rewards = score_all(score, batches)
    stats = [mean_interval(r, ev.confidence) for r in rewards]
    drift = np.array([nearest_distance(flat(b), base.samples) for b in batches])
    return FrontPoints(method, np.asarray(grid, dtype=np.float64), np.stack([m for m, _ in stats]),
                       np.stack([h for _, h in stats]), drift, rewards)


def evaluate_base(policy: Policy, cfg: Config, score: Score, seed: int) -> tuple[BaseEval, FrontPoints]:
    """The base model (adapter off, no ``w``) at the evaluation noise, as data and as one point."""
    m = cfg.num_objectives
    grid = np.full((1, m), 1.0 / m)
    _, base = sample_sweep(policy, cfg, grid, cfg.evaluation.num_samples, seed)
    _, other = sample_sweep(policy, cfg, grid, cfg.evaluation.num_samples, seed + BASE_SEED_OFFSET)
    rewards = score_all(score, [base])[0]
    info = BaseEval(flat(base), rewards, nearest_distance(flat(other), flat(base)))
    mean, half = mean_interval(rewards, cfg.evaluation.confidence)
    point = FrontPoints("base", np.full((1, m), np.nan), mean[None], half[None], np.array([info.self_drift]),
                        [rewards])
    return info, point


def shared_reference(cfg: Config, base: BaseEval) -> np.ndarray:
    """``evaluation.reference_point`` if set, else derived from the base model's rewards."""
    ev = cfg.evaluation
    if ev.reference_point is not None:
        return np.asarray(ev.reference_point, dtype=np.float64)
    return reference_point(base.rewards, ev.ref_quantile, ev.ref_margin)


def front_summary(points: FrontPoints, ref: np.ndarray, names: list[str]) -> dict:
    """Hypervolume, front size, best per-sample HV, slider monotonicity and drift of one method.

    Best per-sample HV: the largest ``sample_hypervolume`` of any one point — the best compromise a
    single setting delivers sample by sample; unlike a mean over points, a denser sweep cannot raise it.
    """
    out = {"method": points.method, "points": len(points.mean),
           "front_points": int(non_dominated(points.mean).sum()),
           "hypervolume": hypervolume(points.mean, ref), "drift": float(points.drift.mean()),
           "best_sample_hv": max(sample_hypervolume(r, ref) for r in points.sample_rewards)}
    swept = len(points.mean) > 2 and np.isfinite(points.preferences).all()
    mono = slider_monotonicity(points.preferences, points.mean) if swept else np.full(len(names), np.nan)
    out.update({f"monotonicity_{n}": float(x) for n, x in zip(names, mono)})
    return out


def load_policy(cfg: Config, run_dir: str | Path, base_checkpoint: str | Path, which: str = "ema") -> Policy:
    """The policy of ``run_dir``'s latest checkpoint (``which``: ema, trainable or old weights)."""
    found = load_latest_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in '{run_dir}/checkpoints': train it first")
    policy = build_policy(cfg.model, cfg.num_objectives, base_checkpoint).eval()
    policy.load_trainable_state(found[1]["weights"][which])
    return policy

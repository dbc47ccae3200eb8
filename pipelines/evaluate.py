"""Sweeping a model along the slider — the one evaluation path.

Training's final sweep (sampled on the rollout actors), ``paretoslider evaluate`` and ``compare``
all sample through :func:`sample_points` and score through :func:`evaluate_points` /
:func:`evaluate_base`; ``evaluation.*`` sets the resolution, sample count, noise seed, interval and
reference point of every one of them. Every method is sampled from the same noise and scored by the
same rewards (the training ones, or the held-out ``evaluation.rewards``), so points differ only by
the weights that produced them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from infra.checkpoint import load_latest_checkpoint
from infra.config import Config, SamplerConfig
from infra.ray_init import start_ray
from infra.tracking import Tracker
from pipelines.plots import front_plot, sweep_grid, sweep_strip
from pipelines.pretrain import ensure_base
from policies.batch import GroupSpec, RolloutBatch, concat_batches
from policies.fronts import (front_coverage, hypervolume, mean_interval, nearest_distance, non_dominated,
                             reference_point, sample_front, sample_hypervolume, slider_max_jump, slider_monotonicity)
from policies.policy import Policy, build_policy
from policies.preferences import simplex_grid
from policies.prompts import prompt_set
from policies.rollout import rollout_sweep
from reward_servers.base import RewardInputs
from reward_servers.client import RewardClient

console = Console()

Score = Callable[[RewardInputs], np.ndarray]
"""Scores a batch on every objective: ``[N, M]`` raw rewards."""

SampleFn = Callable[[list[list[GroupSpec]], int, bool], list[RolloutBatch]]
"""``sample(points, per_group, reference)``: one batch per point (``per_group`` samples of each of its
groups, ODE sampler); ``reference`` samples the base model. In process (:func:`local_sampler`) or
on the rollout actors (``pipelines.train``)."""

BASE_SEED_OFFSET = 7919
"""A second base sample set (other noise) calibrates the drift metric: base-vs-base distance."""


def sweep_sampler(cfg: Config) -> SamplerConfig:
    """The rollout sampler made deterministic (ODE): a sweep point's samples depend on ``w`` only."""
    return cfg.rollout.sampler.model_copy(update={"kind": "ode"})


def local_sampler(policy: Policy, cfg: Config) -> SampleFn:
    """Sample in this process with ``policy`` (``evaluate``, ``compare``)."""
    device = next(policy.parameters()).device
    sampler = sweep_sampler(cfg)
    return lambda points, per_group, reference: rollout_sweep(policy, points, per_group, sampler, device, reference)


def sample_points(sample: SampleFn, cfg: Config, grid: np.ndarray, seed: int,
                  reference: bool = False) -> list[RolloutBatch]:
    """``evaluation.num_samples`` at each ``w`` of ``grid``, split evenly over the evaluation prompts,
    each prompt's noise from ``seed`` so that points differ only by ``w``."""
    prompts = prompt_set(cfg)
    records = [(i, prompts[i]) for i in prompts.eval_indices()]
    per_prompt = max(1, cfg.evaluation.num_samples // len(records))
    points = [[GroupSpec(epoch=-1, prompt_idx=i, slot=0, seed=seed, preference=tuple(float(x) for x in w),
                         prompt=r.prompt, source_image=r.source_image) for i, r in records] for w in grid]
    return sample(points, per_prompt, reference)


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

    batch: RolloutBatch
    rewards: np.ndarray
    """``[N, M]`` per-sample rewards (the reference point is derived from these)."""
    self_drift: float
    """Drift of a base sample set with other noise: the metric's floor."""


def evaluate_points(sample: SampleFn, cfg: Config, grid: np.ndarray, score: Score, method: str,
                    base: BaseEval, seed: int) -> FrontPoints:
    """Sample at every ``w`` of ``grid`` and score it (``[P, M]`` means and intervals)."""
    return score_points(sample_points(sample, cfg, grid, seed), cfg, grid, score, method, base)


def score_points(batches: list[RolloutBatch], cfg: Config, grid: np.ndarray, score: Score, method: str,
                 base: BaseEval) -> FrontPoints:
    rewards = score_all(score, batches)
    stats = [mean_interval(r, cfg.evaluation.confidence) for r in rewards]
    drift = np.array([nearest_distance(flat(b), flat(base.batch)) for b in batches])
    return FrontPoints(method, np.asarray(grid, dtype=np.float64), np.stack([m for m, _ in stats]),
                       np.stack([h for _, h in stats]), drift, rewards)


def evaluate_base(sample: SampleFn, cfg: Config, score: Score, seed: int) -> tuple[BaseEval, FrontPoints]:
    """The base model (adapter off, no ``w``) at the evaluation noise, as data and as one point."""
    m = cfg.num_objectives
    grid = np.full((1, m), 1.0 / m)
    base = sample_points(sample, cfg, grid, seed, reference=True)[0]
    other = sample_points(sample, cfg, grid, seed + BASE_SEED_OFFSET, reference=True)[0]
    rewards = score_all(score, [base])[0]
    info = BaseEval(base, rewards, nearest_distance(flat(other), flat(base)))
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


def coverage_tolerance(cfg: Config) -> float:
    """Half the sweep's grid step: an evenly moving slider is this close to every front point."""
    return 0.5 / (cfg.evaluation.points_per_edge - 1)


def front_summary(points: FrontPoints, ref: np.ndarray, names: list[str], front: np.ndarray | None = None,
                  tol: float = 0.05) -> dict:
    """Hypervolume, front size, best per-sample HV, slider monotonicity, controllability, coverage and drift of one method.

    Controllability: ``max_jump_<m>``, the largest change of objective ``m``'s mean between adjacent sweep
    points as a share of its range over the sweep (a switch scores 1 however high its hypervolume),
    and ``max_jump``, the worst over objectives.

    Best per-sample HV: the largest ``sample_hypervolume`` of any one point — the best compromise a
    single setting delivers sample by sample; unlike a mean over points, a denser sweep cannot raise it.

    Coverage (with ``front``, the per-sample front of every method compared): the share of it that the
    method's samples reach within ``tol`` (:func:`policies.fronts.front_coverage`).
    """
    out = {"method": points.method, "points": len(points.mean),
           "front_points": int(non_dominated(points.mean).sum()),
           "hypervolume": hypervolume(points.mean, ref), "drift": float(points.drift.mean()),
           "best_sample_hv": max(sample_hypervolume(r, ref) for r in points.sample_rewards)}
    swept = len(points.mean) > 2 and np.isfinite(points.preferences).all()
    mono = slider_monotonicity(points.preferences, points.mean) if swept else np.full(len(names), np.nan)
    out.update({f"monotonicity_{n}": float(x) for n, x in zip(names, mono)})
    jump = slider_max_jump(points.preferences, points.mean) if swept else np.full(len(names), np.nan)
    out.update({f"max_jump_{n}": float(x) for n, x in zip(names, jump)})
    out["max_jump"] = float(np.nanmax(jump)) if np.isfinite(jump).any() else float("nan")
    out["coverage"] = (front_coverage(points.sample_rewards, front, tol) if front is not None
                       else float("nan"))
    return out


def load_policy(cfg: Config, run_dir: str | Path, base_checkpoint: str | Path, which: str = "ema") -> Policy:
    """The policy of ``run_dir``'s latest checkpoint (``which``: ema, trainable or old weights)."""
    found = load_latest_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in '{run_dir}/checkpoints': train it first")
    policy = build_policy(cfg.model, cfg.num_objectives, base_checkpoint).eval()
    policy.load_trainable_state(found[1]["weights"][which])
    return policy


@dataclass
class Sweep:
    """One model swept along the ``evaluation`` grid, with the base model from the same noise."""

    points: FrontPoints
    base: FrontPoints
    reference_point: np.ndarray
    """The hypervolume reference point (``evaluation.reference_point`` or derived from the base)."""
    summary: dict
    """:func:`front_summary` of the sweep plus ``base_hypervolume``."""
    batches: list[RolloutBatch]
    """Per swept ``w``, the samples that were scored."""
    base_batch: RolloutBatch

    def rows(self, names: list[str]) -> list[dict]:
        """The sweep's table: one row per swept ``w``, then the base model's."""
        return self.points.rows(names) + self.base.rows(names)

    def metrics(self) -> dict[str, float]:
        """The summary figures worth a metric (numbers only, NaN monotonicity included)."""
        return {k: float(v) for k, v in self.summary.items() if isinstance(v, (int, float)) and k != "points"}


def sweep_model(sample: SampleFn, cfg: Config, score: Score, method: str = "slider") -> Sweep:
    """Sweep a model over the ``evaluation`` grid at ``evaluation.seed`` and summarise its front."""
    names, seed = cfg.objective_names, cfg.evaluation.seed
    grid = simplex_grid(cfg.num_objectives, cfg.evaluation.points_per_edge)
    base, base_point = evaluate_base(sample, cfg, score, seed)
    batches = sample_points(sample, cfg, grid, seed)
    points = score_points(batches, cfg, grid, score, method, base)
    ref = shared_reference(cfg, base)
    front = sample_front(points.sample_rewards + base_point.sample_rewards)
    summary = {**front_summary(points, ref, names, front, coverage_tolerance(cfg)),
               "base_hypervolume": front_summary(base_point, ref, names)["hypervolume"]}
    return Sweep(points, base_point, ref, summary, batches, base.batch)


def log_sweep(tracker: Tracker, sweep: Sweep, cfg: Config, step: int, title: str, folder: str = "eval") -> None:
    """The sweep in MLflow: a table (``<folder>/front.json``, also ``front.parquet``), the Pareto
    plot (``front.png``), the image grid for image sliders (``sweep_grid.png``; video sliders also an
    animated strip of the sweep, ``sweep_strip.webp``), the summary as
    ``eval/*`` metrics at ``step`` (one curve over a run's evals) and the reference point as a tag. Metrics and table are logged once: a resume after a
    crash sweeps the same checkpoint again (files and tags are overwritten with equal content)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = cfg.objective_names
    rows = sweep.rows(names)
    tracker.set_tags({"paretoslider.reference_point": np.round(sweep.reference_point, 6).tolist()})
    tracker.log_table({k: [r[k] for r in rows] for k in rows[0]}, f"{folder}/front.json")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "front.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        tracker.log_artifact(path, folder)
    tracker.log_figure(front_plot([sweep.points, sweep.base], {sweep.points.method}, names, sweep.reference_point,
                                  title), f"{folder}/front.png")
    if sweep.base_batch.images is not None:
        tracker.log_figure(sweep_grid(sweep, names), f"{folder}/sweep_grid.png")
    if sweep.base_batch.images is not None and sweep.base_batch.images.dim() == 5:  # video: [B, F, H, W, 3]
        from pipelines.slider_render import video_webp

        strip = sweep_strip(sweep)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sweep_strip.webp"
            path.write_bytes(video_webp(strip, strip.shape[2], strip.shape[1], cfg.model.diffusers.frame_rate))
            tracker.log_artifact(path, folder)
    tracker.log_metrics_once({f"eval/{k}": v for k, v in sweep.metrics().items()}, step)


def print_front(sweep: Sweep, names: list[str], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for n in names:
        table.add_column(f"w:{n}", justify="right")
    for n in names:
        table.add_column(f"r:{n}", justify="right")
    table.add_column("drift", justify="right")
    for p in (sweep.points, sweep.base):
        for w, r, h, d in zip(p.preferences, p.mean, p.half_width, p.drift):
            wcells = [f"{x:.2f}" for x in w] if np.isfinite(w).all() else ["base"] * len(names)
            table.add_row(*wcells, *[f"{a:.3f} ± {b:.3f}" for a, b in zip(r, h)], f"{d:.3f}")
    console.print(table)
    console.print({**sweep.summary, "reference_point": np.round(sweep.reference_point, 4).tolist()})


def evaluate_run(cfg: Config, run_dir: str | Path, which: str = "ema", progress: bool = True) -> Sweep:
    """``paretoslider evaluate``: sweep one trained model, write ``<run_dir>/eval/`` and log it."""
    import pyarrow as pa
    import pyarrow.parquet as pq


    base_ckpt = str(ensure_base(cfg, progress))
    start_ray(cfg.ray)
    policy = load_policy(cfg, run_dir, base_ckpt, which)
    names = cfg.objective_names
    client = eval_rewards_client(cfg)
    try:
        sweep = sweep_model(local_sampler(policy, cfg), cfg, lambda inputs: client.submit(inputs).result())
    finally:
        client.close()
    out = Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(sweep.rows(names)), out / "front.parquet")
    front_plot([sweep.points, sweep.base], {"slider"}, names, sweep.reference_point, cfg.name).savefig(out / "front.png")
    tracker = Tracker.start(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"run_name": f"evaluate/{cfg.name}"})}))
    with tracker:
        log_sweep(tracker, sweep, cfg, 0, f"{cfg.name} ({which} weights)")
    print_front(sweep, names, "mean reward ± CI half-width per swept preference")
    return sweep

"""``paretoslider compare``: one slider model against baselines, each trained with the same budget.

Methods (``compare.methods``):

- ``slider``: the configured preference-conditioned model (plus ``compare.variants``), swept over
  the ``evaluation`` grid;
- ``fixed``: one model per point of a ``compare.fixed_points_per_edge`` lattice, trained at that
  fixed ``w`` with ``compare.fixed_scalarisation``; each is one point of the union front;
- ``soups``: rewarded soups — the single-reward models (the lattice's vertices, shared with
  ``fixed``) interpolated in weight space, ``theta(lam) = sum_m lam_m theta_m``, swept over the grid;
- ``base``: the pre-trained model.

Every training run has the slider's budget (``loop.steps`` x samples per step), is trained through
the same spine (``pipelines.train``) and is reused when its checkpoint exists. Every method is
evaluated from the same noise, scored by the same rewards, and measured against one hypervolume
reference point (explicit, or derived once from the base model and shared across seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pydantic import ValidationError
from rich.console import Console

from infra.checkpoint import atomic_write_text, load_latest_checkpoint
from infra.config import Config, apply_override
from infra.ray_init import start_ray
from infra.tracking import Tracker
from pipelines.evaluate import (BaseEval, FrontPoints, Score, coverage_tolerance, eval_rewards_client, evaluate_base,
                                evaluate_points, front_summary, load_policy, local_sampler, shared_reference)
from pipelines.plots import front_plot
from pipelines.pretrain import ensure_base
from policies.fronts import count_dominated, dominates, non_dominated, sample_front, seed_spread
from policies.policy import build_policy
from policies.preferences import simplex_grid

console = Console()


@dataclass
class TrainingRun:
    """One model a comparison needs: its config (with its own run_dir) and fixed ``w`` if any."""

    key: str
    """Run name inside the seed's directory, e.g. ``slider`` or ``fixed_w0.25-0.75``."""
    cfg: Config
    preference: np.ndarray | None = None


def samples_per_step(cfg: Config) -> int:
    return cfg.rollout.prompts_per_step * cfg.preferences.slots_per_prompt * cfg.rollout.group_size


def run_config(cfg: Config, seed: int, key: str, overrides: list[str]) -> Config:
    """The job config of one training run of the comparison (same budget, own run_dir and seed)."""
    tree = cfg.model_dump(mode="json")
    for o in overrides:
        apply_override(tree, o)
    tree["run_dir"] = str(Path(cfg.compare.results_dir) / cfg.name / f"seed{seed}" / key)
    tree["loop"]["seed"] = seed
    tree["tracking"]["run_name"] = f"{cfg.name}/seed{seed}/{key}"
    return Config.model_validate(tree)


def fixed_key(w: np.ndarray) -> str:
    return "fixed_w" + "-".join(f"{x:.2f}" for x in w)


def training_runs(cfg: Config, seed: int) -> list[TrainingRun]:
    """Every model the configured methods need, for one seed."""
    cc = cfg.compare
    runs = []
    if "slider" in cc.methods:
        runs.append(TrainingRun("slider", run_config(cfg, seed, "slider", [])))
        runs += [TrainingRun(v.name, run_config(cfg, seed, v.name, v.overrides)) for v in cc.variants]
    lattice = simplex_grid(cfg.num_objectives, cc.fixed_points_per_edge)
    if "fixed" not in cc.methods:
        lattice = lattice[(lattice == 1).any(axis=1)] if "soups" in cc.methods else lattice[:0]
    for w in lattice:
        overrides = [f"algorithm.fixed_preference={[float(x) for x in w]}",
                     f"algorithm.scalarisation={cc.fixed_scalarisation}"]
        runs.append(TrainingRun(fixed_key(w), run_config(cfg, seed, fixed_key(w), overrides), w))
    return runs


def training_view(tree: dict) -> dict:
    """A run's config without the sections that only shape evaluation and comparison."""
    return {k: v for k, v in tree.items() if k not in ("evaluation", "compare")}


def same_training(saved: dict, cfg: Config) -> bool:
    """Whether a run_dir's saved config tree trains what ``cfg`` trains. The saved tree is read through
    today's schema first, so a field added since it was written counts at its default (runs cached
    before a new option stay reusable while the option is off); a key the schema no longer has makes
    it another config."""
    try:
        saved = Config.model_validate(saved).model_dump(mode="json")
    except ValidationError:
        return False
    return training_view(saved) == training_view(cfg.model_dump(mode="json"))


def ensure_trained(run: TrainingRun, progress: bool) -> None:
    """Train ``run`` unless its run_dir already holds the finished model (resume a partial one).

    A run_dir trained with a different config is refused rather than silently reused.
    """
    cfg = run.cfg
    found = load_latest_checkpoint(cfg.run_dir)
    if found is not None:
        if not same_training(yaml.safe_load((Path(cfg.run_dir) / "config.yaml").read_text()), cfg):
            raise FileExistsError(f"'{cfg.run_dir}' was trained with another config; delete it or change 'name' "
                             "to compare with the new settings")
        if found[0] >= cfg.loop.steps:
            console.print(f"reusing {cfg.run_dir} (step {found[0]})")
            return
    from pipelines.train import train

    console.print(f"training {cfg.run_dir}")
    train(cfg, resume=found is not None, progress=progress)


def soup_state(states: list[dict], lam: np.ndarray) -> dict:
    """Rewarded soup: ``sum_m lam_m theta_m`` over the trainable tensors of the single-reward models."""
    return {k: sum(float(l) * s[k] for l, s in zip(lam, states)) for k in states[0]}


def matched(slider: FrontPoints, other: FrontPoints) -> tuple[int, int]:
    """At each of ``other``'s preferences: does the slider's point there dominate it, or vice versa."""
    better = worse = 0
    for w, r in zip(other.preferences, other.mean):
        i = int(np.argmin(np.abs(slider.preferences - w).sum(1)))
        if not np.allclose(slider.preferences[i], w):
            raise ValueError(f"the slider was not evaluated at w={w.tolist()}")
        better += int(dominates(slider.mean[i], r)[0, 0])
        worse += int(dominates(r, slider.mean[i])[0, 0])
    return better, worse


@dataclass
class SeedResult:
    points: list[FrontPoints]
    """Every method's evaluated points (the sweeps, the fixed models' union, the base)."""
    summary: list[dict]
    """One row per method: runs, total samples, hypervolume, ratio, dominance, monotonicity, drift."""


def evaluate_seed(cfg: Config, seed: int, runs: list[TrainingRun], score: Score, base_ckpt: str,
                  base: BaseEval, base_point: FrontPoints, ref: np.ndarray) -> SeedResult:
    """Evaluate every method of one seed from the same noise and summarise it against the slider."""
    names, cc = cfg.objective_names, cfg.compare
    eval_seed = cfg.evaluation.seed + seed
    grid = simplex_grid(cfg.num_objectives, cfg.evaluation.points_per_edge)
    budget = cfg.loop.steps * samples_per_step(cfg)
    fixed = [r for r in runs if r.preference is not None]
    sweeps: list[tuple[FrontPoints, int]] = []  # (points, training runs)
    at_lattice: dict[str, FrontPoints] = {}  # each slider at the fixed models' own w
    for run in runs:
        if run.preference is None:
            sample = local_sampler(load_policy(run.cfg, run.cfg.run_dir, base_ckpt), cfg)
            sweeps.append((evaluate_points(sample, cfg, grid, score, run.key, base, eval_seed), 1))
            if fixed:
                lattice = np.stack([r.preference for r in fixed])
                at_lattice[run.key] = evaluate_points(sample, cfg, lattice, score, run.key, base, eval_seed)
    rows_fixed: list[FrontPoints] = []
    if "fixed" in cc.methods:
        for run in fixed:
            sample = local_sampler(load_policy(run.cfg, run.cfg.run_dir, base_ckpt), cfg)
            rows_fixed.append(evaluate_points(sample, cfg, run.preference[None], score, "fixed", base, eval_seed))
    if "soups" in cc.methods:
        vertices = [r for r in fixed if (r.preference == 1).any()]
        vertices.sort(key=lambda r: int(np.argmax(r.preference)))
        states = [load_latest_checkpoint(r.cfg.run_dir)[1]["weights"]["ema"] for r in vertices]
        policy = build_policy(cfg.model, cfg.num_objectives, base_ckpt).eval()
        sample = local_sampler(policy, cfg)
        soup = []
        for lam in grid:
            policy.load_trainable_state(soup_state(states, lam))
            soup.append(evaluate_points(sample, cfg, lam[None], score, "soups", base, eval_seed))
        sweeps.append((concat_points("soups", soup), len(vertices)))
    methods = list(sweeps)
    if rows_fixed:
        methods.append((concat_points("fixed", rows_fixed), len(rows_fixed)))
    if "base" in cc.methods:
        methods.append((base_point, 0))

    slider = next((p for p, _ in methods if p.method == "slider"), None)
    union = next((p for p, _ in methods if p.method == "fixed"), None)
    sample_pool = sample_front([r for p, _ in methods for r in p.sample_rewards])  # one front for every method
    summary = []
    for points, n_runs in methods:
        row = {"seed": seed, "method": points.method, "training_runs": n_runs, "total_samples": n_runs * budget,
               **front_summary(points, ref, names, sample_pool, coverage_tolerance(cfg))}
        if slider is not None:
            row["hv_ratio_to_slider"] = row["hypervolume"] / front_summary(slider, ref, names)["hypervolume"]
            front = slider.mean[non_dominated(slider.mean)]
            row["dominated_by_slider"] = count_dominated(front, points.mean)
            reference = at_lattice.get("slider") if points.method == "fixed" else slider
            comparable = points.method not in ("slider", "base")
            better, worse = matched(reference, points) if comparable else (np.nan, np.nan)
            row["matched_slider_better"], row["matched_slider_worse"] = better, worse
        if union is not None:
            row["hv_ratio_to_fixed"] = row["hypervolume"] / front_summary(union, ref, names)["hypervolume"]
            better, worse = matched(at_lattice[points.method], union) if points.method in at_lattice else (np.nan,) * 2
            row["matched_fixed_better"], row["matched_fixed_worse"] = better, worse
        summary.append(row)
    return SeedResult([p for p, _ in methods], summary)


def concat_points(method: str, parts: list[FrontPoints]) -> FrontPoints:
    return FrontPoints(method, np.concatenate([p.preferences for p in parts]),
                       np.concatenate([p.mean for p in parts]), np.concatenate([p.half_width for p in parts]),
                       np.concatenate([p.drift for p in parts]), [r for p in parts for r in p.sample_rewards])


SUMMARY_COLUMNS = [("training_runs", "training runs", "{:.0f}"), ("total_samples", "total samples", "{:,.0f}"),
                   ("hypervolume", "hypervolume", "{:.3f}"), ("hv_ratio_to_slider", "HV / slider", "{:.3f}"),
                   ("hv_ratio_to_fixed", "HV / fixed union", "{:.3f}"),
                   ("best_sample_hv", "best per-sample HV", "{:.3f}"),
                   ("dominated_by_slider", "points dominated by slider front", "{:.1f}"),
                   ("matched_slider_better", "matched w: slider dominates", "{:.1f}"),
                   ("matched_slider_worse", "matched w: slider dominated", "{:.1f}"),
                   ("matched_fixed_better", "matched w: dominates fixed", "{:.1f}"),
                   ("matched_fixed_worse", "matched w: dominated by fixed", "{:.1f}"),
                   ("max_jump", "max jump", "{:.2f}"), ("coverage", "coverage", "{:.2f}"),
                   ("seed_spread", "seed spread", "{:.3f}"), ("drift", "drift", "{:.3f}")]
ACROSS_SEEDS = ("training_runs", "total_samples", "seed_spread")
"""Columns with one value per method (no ``± std`` over seeds)."""


def markdown_table(summary: list[dict], names: list[str]) -> str:
    """Mean ± std over seeds per method (one seed: the values)."""
    columns = SUMMARY_COLUMNS + [(f"monotonicity_{n}", f"monotonicity {n}", "{:.2f}") for n in names]
    methods = list(dict.fromkeys(r["method"] for r in summary))
    seeds = sorted({r["seed"] for r in summary})
    lines = ["| method | " + " | ".join(h for _, h, _ in columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for m in methods:
        rows = [r for r in summary if r["method"] == m]
        cells = []
        for key, _, fmt in columns:
            vals = np.array([r.get(key, np.nan) for r in rows], dtype=np.float64)
            if np.isnan(vals).all():
                cells.append("–")
            elif len(seeds) > 1 and key not in ACROSS_SEEDS:
                cells.append(f"{fmt.format(np.nanmean(vals))} ± {fmt.format(np.nanstd(vals))}")
            else:
                cells.append(fmt.format(np.nanmean(vals)))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_spreads(point_rows: list[dict], names: list[str]) -> tuple[dict[str, float], list[dict]]:
    """Where each seed settles along the front: per method evaluated at ``w`` (sweeps and fixed models),
    the std over seeds of each point's mean reward (:func:`policies.fronts.seed_spread`).

    Returns per method the mean over points and objectives of that std as a share of the objective's
    range over every method's means (one number, comparable across objectives), and the per-point rows.
    """
    seeds = sorted({r["seed"] for r in point_rows})
    r_cols = [f"r_{n}" for n in names]
    span = np.ptp(np.array([[r[c] for c in r_cols] for r in point_rows]), axis=0)
    share, rows = {}, []
    for method in dict.fromkeys(r["method"] for r in point_rows):
        per_seed = [[r for r in point_rows if r["method"] == method and r["seed"] == s] for s in seeds]
        if len(seeds) < 2 or method == "base" or len({len(p) for p in per_seed}) != 1:
            continue
        std = seed_spread(np.array([[[r[c] for c in r_cols] for r in p] for p in per_seed]))
        share[method] = float((std / np.where(span > 0, span, 1.0)).mean())
        for point, sd in zip(per_seed[0], std):
            rows.append({"method": method, **{k: point[k] for k in point if k.startswith("w_")},
                         **{f"std_{n}": float(x) for n, x in zip(names, sd)}})
    return share, rows


def compare(cfg: Config, seeds: list[int], progress: bool = True) -> list[dict]:
    """Train what is missing, evaluate every method per seed, write and log the comparison."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(cfg.compare.results_dir) / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    base_ckpt = str(ensure_base(cfg, progress))
    start_ray(cfg.ray)
    per_seed_runs = {s: training_runs(cfg, s) for s in seeds}
    for runs in per_seed_runs.values():
        for run in runs:
            ensure_trained(run, progress)

    names = cfg.objective_names
    summary, point_rows, figures = [], [], []
    client = eval_rewards_client(cfg)
    try:
        score = lambda inputs: client.submit(inputs).result()  # noqa: E731
        base_model = local_sampler(build_policy(cfg.model, cfg.num_objectives, base_ckpt).eval(), cfg)
        ref = None
        for seed in seeds:
            base, base_point = evaluate_base(base_model, cfg, score, cfg.evaluation.seed + seed)
            if ref is None:  # derived once (first seed) and shared by every method and seed
                ref = shared_reference(cfg, base)
            result = evaluate_seed(cfg, seed, per_seed_runs[seed], score, base_ckpt, base, base_point, ref)
            summary += result.summary
            for p in result.points:
                point_rows += [{"seed": seed, **row} for row in p.rows(names)]
            sweeps = {"slider", "soups"} | {v.name for v in cfg.compare.variants}
            figures.append((seed, front_plot(result.points, sweeps, names, ref, f"{cfg.name}, seed {seed}")))
    finally:
        client.close()

    spread, spread_rows = seed_spreads(point_rows, names)
    for row in summary:
        row["seed_spread"] = spread.get(row["method"], np.nan)
    pq.write_table(pa.Table.from_pylist(summary), out_dir / "comparison.parquet")
    pq.write_table(pa.Table.from_pylist(point_rows), out_dir / "points.parquet")
    if spread_rows:
        pq.write_table(pa.Table.from_pylist(spread_rows), out_dir / "seed_spread.parquet")
    seeds_txt = ",".join(map(str, seeds))
    md = (f"# {cfg.name}: slider vs. baselines (seeds {seeds_txt})\n\n"
          f"Hypervolume reference point (shared): {np.round(ref, 4).tolist()}; "
          f"{cfg.loop.steps} steps x {samples_per_step(cfg)} samples per training run. Coverage: share of the "
          f"per-sample front of all methods reached within {coverage_tolerance(cfg):.3g} of its range; seed "
          "spread: std over seeds of each point's mean, as a share of the objective's range (seed_spread.parquet).\n\n"
          + markdown_table(summary, names))
    atomic_write_text(out_dir / "comparison.md", md)
    for seed, fig in figures:
        fig.savefig(out_dir / f"pareto_seed{seed}.png")

    tracker = Tracker.start(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"run_name": f"compare/{cfg.name}"})}))
    tracker.set_tags({"paretoslider.seeds": seeds_txt, "paretoslider.reference_point": np.round(ref, 6).tolist()})
    for name in ["comparison.parquet", "points.parquet", "comparison.md"] + ["seed_spread.parquet"] * bool(spread_rows):
        tracker.log_artifact(out_dir / name, "compare")
    for seed, fig in figures:
        tracker.log_figure(fig, f"compare/pareto_seed{seed}.png")
    for row in summary:
        tracker.log_metrics({f"hypervolume/{row['method']}": row["hypervolume"]}, row["seed"])
    tracker.end("FINISHED")
    console.print(md)
    return summary

"""The comparison: config derivation and tables (fast), and a short compare on a real local Ray (slow)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import TINY_MODEL
from infra.config import Config
from pipelines.compare import markdown_table, matched, same_training, seed_spreads, soup_state, training_runs
from pipelines.evaluate import FrontPoints


def compare_cfg(tmp_path, base, **compare) -> Config:
    return Config.model_validate({
        "name": "cmp",
        "model": TINY_MODEL,
        "pretrain": {"checkpoint": str(base)},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "sampler": {"num_steps": 3}},
        "preferences": {"slots_per_prompt": 2},
        "loop": {"steps": 3, "checkpoint_every": 3, "scatter_every": 3},
        "evaluation": {"points_per_edge": 3, "num_samples": 32},
        "compare": {"results_dir": str(tmp_path / "results"), "fixed_points_per_edge": 3, **compare},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    })


def test_training_runs_share_the_budget_and_differ_only_where_they_should(tmp_path):
    cfg = compare_cfg(tmp_path, "base.pt", variants=[{"name": "paper", "overrides": ["algorithm.scalarisation=late"]}])
    runs = training_runs(cfg, seed=2)
    assert [r.key for r in runs] == ["slider", "paper", "fixed_w0.00-1.00", "fixed_w0.50-0.50", "fixed_w1.00-0.00"]
    for r in runs:
        assert r.cfg.loop.steps == 3 and r.cfg.loop.seed == 2
        assert r.cfg.rollout == cfg.rollout and r.cfg.preferences == cfg.preferences
        assert r.cfg.run_dir == str(tmp_path / "results" / "cmp" / "seed2" / r.key)
    assert runs[0].cfg.algorithm.scalarisation == "tchebycheff" and runs[1].cfg.algorithm.scalarisation == "late"
    assert runs[3].cfg.algorithm.fixed_preference == [0.5, 0.5] and runs[3].cfg.algorithm.scalarisation == "early"
    soups_only = compare_cfg(tmp_path, "base.pt", methods=["soups"], fixed_points_per_edge=5)
    assert [r.key for r in training_runs(soups_only, 0)] == ["fixed_w0.00-1.00", "fixed_w1.00-0.00"]


def test_a_cached_run_is_reused_only_for_the_same_training(tmp_path):
    cfg = compare_cfg(tmp_path, "base.pt")
    saved = cfg.model_dump(mode="json")
    assert same_training(saved, cfg)
    # Evaluation and comparison settings do not change what was trained.
    assert same_training({**saved, "evaluation": {"points_per_edge": 5}}, cfg)
    # A run written before an option existed (its key absent) is that option at its default ...
    del saved["preferences"]["antithetic"]
    assert same_training(saved, cfg)
    # ... and not the option switched on.
    on = cfg.model_copy(update={"preferences": cfg.preferences.model_copy(update={"antithetic": True})})
    assert not same_training(saved, on)
    assert not same_training({**saved, "learner": {**saved["learner"], "lr": 1.0}}, cfg)
    assert not same_training({**saved, "loop": {**saved["loop"], "stepz": 3}}, cfg)  # a key the schema lacks


def test_soup_is_the_weighted_sum_of_states():
    a = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor(3.0)}
    b = {"x": torch.tensor([5.0, 6.0]), "y": torch.tensor(-1.0)}
    mix = soup_state([a, b], np.array([0.25, 0.75]))
    assert mix["x"].tolist() == [4.0, 5.0] and mix["y"].item() == 0.0


def hypervolume_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by ``points`` above ``ref`` (maximisation), by a sweep in falling first objective:
    each point adds the strip between its second objective and the best one seen so far."""
    area, best_y = 0.0, ref[1]
    for x, y in sorted(map(tuple, np.asarray(points, float)), reverse=True):
        if x > ref[0] and y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def test_hypervolume_2d_reference_on_a_hand_made_front():
    # Three steps above (0, 0): 3*1 + 2*(2-1) + 1*(3-2) = 6; a dominated and an out-of-reference point add nothing.
    assert hypervolume_2d([[3, 1], [2, 2], [1, 3], [1, 1], [-1, 5]], np.zeros(2)) == 6.0
    from policies.fronts import hypervolume

    assert hypervolume(np.array([[3, 1], [2, 2], [1, 3], [1, 1]]), np.zeros(2)) == pytest.approx(6.0)


def points(method, w, r) -> FrontPoints:
    w, r = np.asarray(w, float), np.asarray(r, float)
    return FrontPoints(method, w, r, np.zeros_like(r), np.zeros(len(r)), [r[i:i + 1] for i in range(len(r))])


def test_matched_counts_and_markdown():
    slider = points("slider", [[0, 1], [0.5, 0.5], [1, 0]], [[0, 3], [2, 2], [3, 0]])
    other = points("fixed", [[0, 1], [0.5, 0.5], [1, 0]], [[0, 2], [2.5, 2.5], [3, 0]])
    assert matched(slider, other) == (1, 1)  # better at w=(0,1), worse at (0.5,0.5), tie at (1,0)
    with pytest.raises(ValueError, match="not evaluated"):
        matched(slider, points("fixed", [[0.25, 0.75]], [[1, 1]]))
    summary = [{"seed": s, "method": "slider", "training_runs": 1, "total_samples": 100, "hypervolume": hv}
               for s, hv in ((0, 1.0), (1, 3.0))]
    md = markdown_table(summary, ["a", "b"])
    assert "| slider | 1 | 100 | 2.000 ± 1.000 |" in md


def test_seed_spread_per_point_and_as_a_share_of_each_objective_range():
    def row(seed, method, w, r):
        return {"seed": seed, "method": method, "w_a": w, "w_b": 1 - w, "r_a": r[0], "r_b": r[1]}

    rows = [row(0, "slider", 0.0, (0.0, 4.0)), row(0, "slider", 1.0, (4.0, 0.0)), row(0, "base", np.nan, (1.0, 1.0)),
            row(1, "slider", 0.0, (2.0, 4.0)), row(1, "slider", 1.0, (4.0, 0.0)), row(1, "base", np.nan, (1.0, 1.0))]
    share, per_point = seed_spreads(rows, ["a", "b"])
    assert list(share) == ["slider"]  # the base takes no w
    # std over the 2 seeds: 1 at (w=0, a), 0 elsewhere; ranges of a and b over every mean: 4 and 4.
    assert share["slider"] == pytest.approx((1 / 4) / 4)
    assert per_point == [{"method": "slider", "w_a": 0.0, "w_b": 1.0, "std_a": 1.0, "std_b": 0.0},
                         {"method": "slider", "w_a": 1.0, "w_b": 0.0, "std_a": 0.0, "std_b": 0.0}]
    assert seed_spreads(rows[:3], ["a", "b"]) == ({}, [])  # one seed: no spread
    md = markdown_table([{"seed": s, "method": "slider", "seed_spread": 0.0625, "coverage": c}
                         for s, c in ((0, 0.5), (1, 0.7))], ["a", "b"])
    assert "| 0.60 ± 0.10 | 0.062 |" in md  # coverage over seeds; the spread is one number across them


@pytest.mark.slow
def test_compare_end_to_end_on_local_ray(ray_local, tiny_base, tmp_path):
    from pipelines.compare import compare

    cfg = compare_cfg(tmp_path, tiny_base, variants=[{"name": "paper", "overrides": ["algorithm.scalarisation=late"]}])
    cfg.rewards.backend = "local"  # six Serve deployments would double the run time; test_train covers Serve
    summary = compare(cfg, [0], progress=False)
    out = tmp_path / "results" / "cmp"
    table = pq.read_table(out / "comparison.parquet").to_pylist()
    assert [r["method"] for r in table] == ["slider", "paper", "soups", "fixed", "base"]
    by = {r["method"]: r for r in table}
    assert by["slider"]["hv_ratio_to_slider"] == pytest.approx(1.0)
    assert by["fixed"]["training_runs"] == 3 and by["soups"]["training_runs"] == 2
    assert by["fixed"]["total_samples"] == 3 * 3 * 2 * 2 * 4
    assert by["base"]["training_runs"] == 0 and by["base"]["points"] == 1
    pts = pq.read_table(out / "points.parquet").to_pandas()
    client = MlflowClient(cfg.tracking.tracking_uri)
    runs = client.search_runs(client.get_experiment_by_name("paretoslider").experiment_id,
                              filter_string="attributes.run_name = 'compare/cmp'")
    ref = np.array(json.loads(runs[0].data.tags["paretoslider.reference_point"]))
    # Each method's hypervolume is that of its own points' mean rewards. The tag keeps the reference point
    # to 6 decimals, which moves an area by at most 5e-7 per unit of the front's extent (here < 20).
    for r in table:
        mine = pts[pts.method == r["method"]][["r_target_a", "r_target_b"]].to_numpy()
        assert r["hypervolume"] == pytest.approx(hypervolume_2d(mine, ref), rel=0, abs=1e-5), r["method"]
        assert np.isfinite(r["drift"])
    assert by["slider"]["hypervolume"] > 0
    assert len(pts[pts.method == "slider"]) == 3 and len(pts[pts.method == "fixed"]) == 3
    assert (pts[["ci_target_a", "ci_target_b"]] > 0).all().all()
    assert (out / "comparison.md").read_text().count("\n| ") == 7 and (out / "pareto_seed0.png").exists()
    # The soup at lam = (1, 0) is the single-reward model itself: equal only if sampled from the same noise.
    corner = pts[(pts.w_target_a == 1.0) & pts.method.isin(["soups", "fixed"])]
    assert len(corner) == 2 and corner.r_target_a.nunique() == 1 and corner.r_target_b.nunique() == 1
    assert len(runs) == 1 and "hypervolume/slider" in runs[0].data.metrics
    # A second call reuses every checkpoint (no training) and gives the same numbers.
    again = compare(cfg, [0], progress=False)
    assert [r["hypervolume"] for r in again] == pytest.approx([r["hypervolume"] for r in summary])
    assert len(client.search_runs(runs[0].info.experiment_id)) == 5 + 2  # 5 trainings + 2 compare runs

    # `evaluate` on the slider, judged by held-out rewards (Gaussian closeness: scores in [0, 1]).
    from pipelines.evaluate import evaluate_run

    held_out = [{"name": "toy2d_target", "label": n, "args": {"target": t, "kind": "gaussian", "scale": 2.0}}
                for n, t in (("target_a", [4.0, 0.0]), ("target_b", [0.0, 4.0]))]
    tree = cfg.model_dump()
    tree["evaluation"]["rewards"] = held_out
    ev_cfg = Config.model_validate(tree)
    result = evaluate_run(ev_cfg, out / "seed0" / "slider", progress=False)
    front = pq.read_table(out / "seed0" / "slider" / "eval" / "front.parquet").to_pandas()
    assert list(front.method) == ["slider"] * 3 + ["base"]
    assert front.r_target_a.between(0, 1).all() and (front.r_target_a > 0).any()
    slider_front = front[front.method == "slider"][["r_target_a", "r_target_b"]].to_numpy()
    assert len(result.reference_point) == 2
    assert result.summary["hypervolume"] == pytest.approx(hypervolume_2d(slider_front, result.reference_point),
                                                          rel=1e-9, abs=1e-12)
    assert (out / "seed0" / "slider" / "eval" / "front.png").exists()

"""The training spine end to end on a real local Ray + Serve + MLflow (SQLite) + DeepSpeed learner."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import all_group_ids, tiny_cfg
from infra.checkpoint import load_latest_checkpoint
from infra.config import load_config


def test_short_train_logs_everything(ray_local, tiny_base, tmp_path):
    from pipelines.train import train

    cfg = tiny_cfg(tmp_path, tiny_base)
    result = train(cfg, progress=False)
    assert result.points.mean.shape == (3, 2) and np.isfinite(result.points.mean).all()
    step, blob = load_latest_checkpoint(cfg.run_dir)
    assert step == 6 and blob["loop"]["version"] == 6
    assert [tuple(x) for x in blob["loop"]["consumed"].tolist()] == all_group_ids(cfg, 6)
    assert (tmp_path / "run" / "config.yaml").exists()

    client = MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(blob["loop"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["learner.lr"] == str(cfg.learner.lr)
    history = client.get_metric_history(run.info.run_id, "reward/target_a")
    assert sorted(m.step for m in history) == list(range(1, 7))
    for key in ("loss/policy", "loss/kl", "loop/staleness", "loop/samples_per_s", "time/train_s",
                "eval/hypervolume", "eval/best_sample_hv", "eval/monotonicity_target_a", "reward_std/target_a", "reward_max/target_b", "reward_latency_s/target_b"):
        assert key in run.data.metrics, key
    assert any(k.startswith("reward_by_pref/target_a/") for k in run.data.metrics)
    assert run.data.metrics["reward_min/target_a"] <= run.data.metrics["reward/target_a"]
    assert run.data.metrics["reward_latency_s/target_a"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "scatter", "eval"} <= artifacts
    assert max(m.value for m in client.get_metric_history(run.info.run_id, "loop/staleness")) <= 1
    # Per step (2 prompts x 2 slots x 4 samples = 16) the driver fetched the rollout metadata, float32 w
    # [16, 2] and int64 group indices [16], and the float32 scores [16, 2]: 128 + 128 + 128 bytes. On the
    # scatter steps 3 and 6 it also fetched the figure's batch: samples, w, indices and rewards, 4 x 128.
    fetched = client.get_metric_history(run.info.run_id, "loop/driver_bytes_in")
    assert [m.value for m in sorted(fetched, key=lambda m: m.step)] == [384.0, 384.0, 896.0] * 2


class Crash(RuntimeError):
    pass


def test_crash_then_resume_trains_every_group_once(ray_local, tiny_base, tmp_path, monkeypatch):
    from pipelines import train as train_mod

    cfg = tiny_cfg(tmp_path, tiny_base, steps=8, checkpoint_every=3)
    # Early scalarisation in the first batch's units: the units are loop state the resume must keep.
    cfg = cfg.model_copy(update={"algorithm": cfg.algorithm.model_copy(
        update={"scalarisation": "early", "reward_scale": "first_batch_std"})})
    original = train_mod.Trainer.reward_metrics

    def crash_at_step_5(self, batch):
        if self.state.step == 4:  # while training step index 4, i.e. after the checkpoint at 3
            raise Crash("injected")
        return original(self, batch)

    monkeypatch.setattr(train_mod.Trainer, "reward_metrics", crash_at_step_5)
    with pytest.raises(Crash):
        train_mod.train(cfg, progress=False)
    step, blob = load_latest_checkpoint(cfg.run_dir)
    assert step == 3
    run_id = blob["loop"]["mlflow_run_id"]
    first_units = blob["loop"]["first_units"]
    client = MlflowClient(cfg.tracking.tracking_uri)
    assert client.get_run(run_id).info.status == "FAILED"

    with pytest.raises(FileExistsError, match="--resume"):
        train_mod.Trainer(cfg, resume=False, progress=False)

    monkeypatch.setattr(train_mod.Trainer, "reward_metrics", original)
    train_mod.train(cfg, resume=True, progress=False)
    step, blob = load_latest_checkpoint(cfg.run_dir)
    consumed = [tuple(x) for x in blob["loop"]["consumed"].tolist()]
    assert step == 8 and blob["loop"]["mlflow_run_id"] == run_id
    assert consumed == all_group_ids(cfg, 8) and len(set(consumed)) == len(consumed)
    # The units are the std of the first step's rewards (as logged), kept across the resume; float32
    # scores: their std agrees to ~1e-6 relative.
    assert blob["loop"]["first_units"] == first_units
    for label, unit in zip(("target_a", "target_b"), first_units, strict=True):
        logged = [m.value for m in client.get_metric_history(run_id, f"reward_std/{label}") if m.step == 1]
        assert logged and unit == pytest.approx(logged[0] + 1e-4, rel=1e-5)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "reward/target_a"))
    assert steps == list(range(1, 9))  # step 4, trained by both attempts, appears once
    # The failed attempt's step 4, which no checkpoint kept, is an artifact instead.
    assert [a.path for a in client.list_artifacts(run_id, "metrics")] == ["metrics/uncommitted_0.json"]


def test_bad_override_fails_before_anything_starts(tmp_path):
    from infra.config import ConfigError

    with pytest.raises(ConfigError, match=r"rollout\.sampler\.kind"):
        load_config(None, ["algorithm.objective=grpo"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["loop.stepz=3"])
    # The sweep's knobs live in `evaluation` alone; the old copies name their replacement.
    for old, new in (("preferences.sweep_points", "evaluation.points_per_edge"),
                     ("loop.eval_samples", "evaluation.num_samples")):
        with pytest.raises(ConfigError, match=rf"{old}: removed; set {new} instead"):
            load_config(None, [f"{old}=5"])
    with pytest.raises(ConfigError, match=r"evaluation\.every \(3\) must be a multiple of loop\.checkpoint_every \(2\)"):
        load_config(None, ["evaluation.every=3", "loop.checkpoint_every=2"])


def test_sweeps_run_on_the_actors_and_match_evaluate(ray_local, tiny_base, tmp_path, monkeypatch):
    """The driver loads no model for its sweeps (one mid-run, `evaluation.every`, and the final one);
    `paretoslider evaluate` of the checkpoint, which samples in process from the same noise, gives the
    same front; MLflow holds each sweep as a table, a Pareto plot and summary metrics at its step."""
    import json
    from pathlib import Path

    import policies.policy
    from pipelines.evaluate import evaluate_run
    from pipelines.train import train
    from scipy.stats import spearmanr
    from test_compare import hypervolume_2d

    cfg = tiny_cfg(tmp_path, tiny_base, steps=4, checkpoint_every=2)
    cfg.evaluation.every = 2
    cfg.rollout.num_actors = 2  # the sweep's 3 points are split 2 + 1 over the actors
    cfg.registry.register_on_finish = False  # registration loads the base in the driver (a separate item)

    def no_model_here(*args, **kwargs):
        raise AssertionError("the driver loaded a model")

    monkeypatch.setattr(policies.policy, "load_base", no_model_here)  # every build_policy goes through it
    result = train(cfg, progress=False)
    monkeypatch.undo()

    evaluated = evaluate_run(cfg, cfg.run_dir, progress=False)
    # Bit-identical on one CPU thread per process (measured); the tolerance admits other thread counts.
    for mine, theirs in ((result.points, evaluated.points), (result.base, evaluated.base)):
        np.testing.assert_allclose(mine.mean, theirs.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mine.half_width, theirs.half_width, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.reference_point, evaluated.reference_point, rtol=1e-5, atol=1e-6)

    _, blob = load_latest_checkpoint(cfg.run_dir)
    run_id = blob["loop"]["mlflow_run_id"]
    client = MlflowClient(cfg.tracking.tracking_uri)
    assert {"eval/front.json", "eval/front.png", "eval/front.parquet", "eval/step_000002"} <= {
        a.path for a in client.list_artifacts(run_id, "eval")}
    assert {"eval/step_000002/front.json", "eval/step_000002/front.png"} <= {
        a.path for a in client.list_artifacts(run_id, "eval/step_000002")}
    table = json.loads(Path(client.download_artifacts(run_id, "eval/front.json", str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert [r["method"] for r in rows] == ["slider"] * 3 + ["base"]
    front = np.array([[r["r_target_a"], r["r_target_b"]] for r in rows[:3]])
    np.testing.assert_allclose(front, result.points.mean, rtol=1e-9)  # the JSON keeps 10 digits
    ref = np.array(json.loads(client.get_run(run_id).data.tags["paretoslider.reference_point"]))
    metrics = {k: client.get_metric_history(run_id, k) for k in ("eval/hypervolume", "eval/monotonicity_target_a")}
    assert all(sorted(m.step for m in h) == [2, 4] for h in metrics.values())  # the mid-run and the final sweep
    metrics = {k: max(h, key=lambda m: m.step) for k, h in metrics.items()}
    # The tag keeps the reference point to 6 decimals: an area moves by < 1e-5 here.
    assert metrics["eval/hypervolume"].value == pytest.approx(hypervolume_2d(front, ref), abs=1e-5)
    w = np.array([[r["w_target_a"], r["w_target_b"]] for r in rows[:3]])
    assert metrics["eval/monotonicity_target_a"].value == pytest.approx(
        spearmanr(w[:, 0], front[:, 0]).statistic, nan_ok=True)
    assert not any(k.startswith("sweep/") for k in client.get_run(run_id).data.metrics)


# SQLite: every process samples twice a second (concurrent writers to one file). Server: the interval
# outlasts the job, so each role's one sample is the one its monitor logs when the role shuts down.
@pytest.mark.parametrize("store,interval_s", [("sqlite", 0.5), ("server", 3600.0)])
def test_every_role_logs_system_metrics_into_the_run(ray_local, tiny_base, tmp_path, request, store, interval_s):
    import os
    import socket

    import torch

    from pipelines.train import train

    cfg = tiny_cfg(tmp_path, tiny_base, steps=3)
    uri = cfg.tracking.tracking_uri if store == "sqlite" else request.getfixturevalue("mlflow_server")
    cfg.tracking = cfg.tracking.model_copy(update={"tracking_uri": uri, "system_metrics": True,
                                                   "system_metrics_interval_s": interval_s})
    train(cfg, progress=False)
    client = MlflowClient(uri)
    run = client.get_run(load_latest_checkpoint(cfg.run_dir)[1]["loop"]["mlflow_run_id"])
    system = {k: v for k, v in run.data.metrics.items() if k.startswith("system/")}
    roles = {k.split("/")[1] for k in system}
    # One series per process: the driver, the learner rank, the rollout actor, each objective's replica.
    assert roles == {"driver", "learner_0", "rollout_0", "reward_target_a_0", "reward_target_b_0"}
    for role in roles:
        assert system[f"system/{role}/process_memory_rss_megabytes"] > 10
        assert 0 <= system[f"system/{role}/process_cpu_utilization_percentage"] <= 100 * os.cpu_count()
        assert 0 <= system[f"system/{role}/cpu_utilization_percentage"] <= 100
        assert system[f"system/{role}/system_memory_usage_megabytes"] > 0
    assert any("/gpu_" in k for k in system) == torch.cuda.is_available()
    assert all(run.data.tags[f"system/{role}/node"].startswith(socket.gethostname()) for role in roles)
    samples = {role: client.get_metric_history(run.info.run_id, f"system/{role}/process_memory_rss_megabytes")
               for role in roles}
    if interval_s > 60:
        assert all([m.step for m in h] == [0] for h in samples.values())
    else:
        assert len(samples["driver"]) >= 2
    # Training metrics are unaffected: each step once, as before.
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "reward/target_a")) == [1, 2, 3]

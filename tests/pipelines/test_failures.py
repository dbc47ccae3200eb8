"""Injected failures on a real local Ray: dead rollout actor, dead reward replica, dead learner,
hung reward. Every run either finishes with each group trained exactly once or fails loudly."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient

from actors.learner import LearnerDiedError
from infra.checkpoint import load_latest_checkpoint
from pipelines import train as train_mod
from reward_servers.base import RewardInputs, RewardServerError
from reward_servers.registry import register
from conftest import all_group_ids, tiny_cfg


def consumed_ids(cfg) -> list[tuple[int, int, int]]:
    _, blob = load_latest_checkpoint(cfg.run_dir)
    return [tuple(x) for x in blob["loop"]["consumed"].tolist()]


def inject_once(monkeypatch, at_step: int, action) -> None:
    """Run ``action(trainer)`` once, right before the first reward call of step index ``at_step`` (the
    loop scores a step's rollout calls as they return, while earlier steps train)."""
    original = train_mod.Trainer.score

    def score(self, chunk):
        if chunk.step == at_step and not getattr(self, "_injected", False):
            self._injected = True
            action(self)
        return original(self, chunk)

    monkeypatch.setattr(train_mod.Trainer, "score", score)


@pytest.mark.slow
@pytest.mark.parametrize("weight_sync", ["object_store", "collective"])
def test_killed_rollout_actor_is_restarted_and_its_groups_reissued(ray_local, tiny_base, tmp_path, monkeypatch,
                                                                   weight_sync):
    """Collective sync: the restarted actor is in no group and holds its initial weights, so its re-run
    rollout is refused, the group re-forms, and the chunk is sampled again with the current weights."""
    cfg = tiny_cfg(tmp_path, tiny_base, steps=6)
    cfg.tracking.system_metrics = True  # what this test also checks: system metrics across the failure
    cfg.cluster.weight_sync = weight_sync
    cfg.tracking.system_metrics_interval_s = 0.5
    restarted, killed_at = [], []
    original_close = train_mod.Trainer.close

    def close(self):
        restarted.append(ray.get(self.actors[0].was_restarted.remote()))
        original_close(self)

    def kill(trainer):
        killed_at.append(time.time())
        ray.kill(trainer.actors[0], no_restart=False)

    monkeypatch.setattr(train_mod.Trainer, "close", close)
    # step 3's rollout is in flight on the actor when it dies (max_staleness=1)
    inject_once(monkeypatch, 2, kill)
    train_mod.train(cfg, progress=False)
    assert consumed_ids(cfg) == all_group_ids(cfg, 6)
    assert restarted == [True]
    # The restarted actor monitors again (its constructor holds the run) and continues the sample count.
    run_id = load_latest_checkpoint(cfg.run_dir)[1]["loop"]["mlflow_run_id"]
    history = MlflowClient(cfg.tracking.tracking_uri).get_metric_history(
        run_id, "system/rollout_0/process_memory_rss_megabytes")
    steps = [m.step for m in history]
    assert len(set(steps)) == len(steps)
    assert max(m.timestamp for m in history) / 1000 > killed_at[0]


@pytest.mark.slow
def test_killed_reward_replica_is_replaced_and_scoring_retried(ray_local, tiny_base, tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, tiny_base, steps=5)
    cfg.tracking.system_metrics = True  # what this test also checks: system metrics across the failure
    cfg.rewards.retries = 4
    killed_at = []

    def kill_replica(trainer):
        replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["name"].startswith("SERVE_REPLICA::rewards#reward-target_a#")]
        assert replicas, "no reward replica found"
        killed_at.append(time.time())
        ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)

    inject_once(monkeypatch, 2, kill_replica)
    train_mod.train(cfg, progress=False)
    assert consumed_ids(cfg) == all_group_ids(cfg, 5)
    _, blob = load_latest_checkpoint(cfg.run_dir)
    client = MlflowClient(cfg.tracking.tracking_uri)
    history = client.get_metric_history(blob["loop"]["mlflow_run_id"], "reward/target_a")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]  # every step scored, none twice
    assert all(math.isfinite(m.value) for m in history)
    # The replacement takes over rank 0, so its system metrics continue the same series.
    metrics = client.get_run(blob["loop"]["mlflow_run_id"]).data.metrics
    assert {k.split("/")[1] for k in metrics if k.startswith("system/reward_target_a")} == {"reward_target_a_0"}
    replica = client.get_metric_history(blob["loop"]["mlflow_run_id"],
                                        "system/reward_target_a_0/process_memory_rss_megabytes")
    assert max(m.timestamp for m in replica) / 1000 > killed_at[0]


@pytest.mark.slow
def test_killed_learner_fails_loudly_then_resume_finishes(ray_local, tiny_base, tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, tiny_base, steps=6, checkpoint_every=2)
    inject_once(monkeypatch, 3, lambda trainer: ray.kill(trainer.learner.workers[0], no_restart=True))
    with pytest.raises(LearnerDiedError, match="--resume"):
        train_mod.train(cfg, progress=False)
    assert load_latest_checkpoint(cfg.run_dir)[0] == 2
    monkeypatch.undo()
    train_mod.train(cfg, resume=True, progress=False)
    assert consumed_ids(cfg) == all_group_ids(cfg, 6)


DRIVER = Path(__file__).with_name("sigkill_driver.py")
ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_sigkilled_driver_resumes_with_one_value_per_step(tiny_base, tmp_path):
    """Attempt 1 dies between the checkpoints 3 and 6, attempt 2 between writing checkpoint 6 and
    committing its metrics, attempt 3 in the final sweep, attempt 4 finishes: each step appears once,
    with the kept training's value."""
    cfg = tiny_cfg(tmp_path, tiny_base, steps=8, checkpoint_every=3, scatter_every=100)
    cfg.tracking.system_metrics = True  # what this test also checks: system metrics across the failure
    config, record = tmp_path / "config.json", tmp_path / "record.jsonl"
    config.write_text(cfg.model_dump_json())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def attempt(n: int, *kill: str) -> int:
        done = subprocess.run([sys.executable, str(DRIVER), str(config), str(n), str(record), *kill], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode in (0, -signal.SIGKILL), done.stderr[-4000:]
        return done.returncode

    client = MlflowClient(cfg.tracking.tracking_uri)
    assert attempt(1, "--kill-after-step", "4") == -signal.SIGKILL
    step, blob = load_latest_checkpoint(cfg.run_dir)
    run_id = blob["loop"]["mlflow_run_id"]
    assert step == 3 and [m.step for m in client.get_metric_history(run_id, "probe/attempt")] == [1, 2, 3]
    assert attempt(2, "--kill-before-commit") == -signal.SIGKILL
    assert load_latest_checkpoint(cfg.run_dir)[0] == 6
    assert sorted(m.step for m in client.get_metric_history(run_id, "probe/attempt")) == [1, 2, 3]
    assert attempt(3, "--kill-in-sweep") == -signal.SIGKILL
    sweep_keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("eval/")]
    assert "eval/hypervolume" in sweep_keys
    table = json.loads(Path(client.download_artifacts(run_id, "eval/front.json", str(tmp_path / "a3"))).read_text())
    assert attempt(4) == 0
    for key in sweep_keys:  # attempt 4 swept the same checkpoint again: the summary stays one value at step 8
        assert [m.step for m in client.get_metric_history(run_id, key)] == [8], key
    again = json.loads(Path(client.download_artifacts(run_id, "eval/front.json", str(tmp_path / "a4"))).read_text())
    assert again == table and len(table["data"]) == cfg.evaluation.points_per_edge + 1  # not appended to

    records = [json.loads(line) for line in record.read_text().splitlines()]
    trained = sorted((r["step"], r["attempt"]) for r in records)
    assert trained == [(1, 1), (2, 1), (3, 1), (4, 1), (4, 2), (5, 2), (6, 2), (7, 3), (8, 3)]
    kept = {(r["step"], r["attempt"]): r["metrics"] for r in records}
    kept_attempt = {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2, 7: 3, 8: 3}  # a resume retrains the steps after its checkpoint
    keys = {k for metrics in kept.values() for k in metrics}
    assert {"probe/attempt", "reward/target_a", "loss/policy", "loop/samples_per_s"} <= keys
    for key in keys:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(s, pytest.approx(kept[s, a][key], rel=1e-12, nan_ok=True))
                           for s, a in kept_attempt.items() if key in kept[s, a]], key
    assert client.get_run(run_id).info.status == "FINISHED"
    # System metrics are logged live, not staged; each attempt continues the sample count, none repeats.
    system = [k for k in client.get_run(run_id).data.metrics if k.startswith("system/")]
    assert "system/driver/process_memory_rss_megabytes" in system
    for key in system:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(set(steps)) == len(steps), key


@register("test_hangs")
class Hangs:
    name = "test_hangs"
    inputs = ("samples",)
    range = (0.0, 1.0)
    direction = "max"

    def score(self, batch: RewardInputs) -> np.ndarray:
        import time

        time.sleep(20)
        return np.zeros(len(batch), dtype=np.float32)


def test_hung_reward_server_times_out_with_its_name(ray_local, tiny_base, tmp_path):
    cfg = tiny_cfg(tmp_path, tiny_base, steps=3)
    cfg.rewards = cfg.rewards.model_validate({
        "backend": "local", "timeout_s": 3.0, "retries": 0,
        "objectives": [{"name": "toy2d_target", "label": "target_a", "args": {"target": [4, 0]}},
                       {"name": "test_hangs", "label": "stuck"}]})
    with pytest.raises(RewardServerError, match="'stuck'.*timed out"):
        train_mod.train(cfg, progress=False)
    client = MlflowClient(cfg.tracking.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert runs[0].info.status == "FAILED"


def live_placement_groups() -> list[str]:
    from ray.util import placement_group_table

    return sorted(pg["name"] for pg in placement_group_table().values()
                  if pg["name"].startswith("paretoslider-") and pg["state"] != "REMOVED")


def test_failed_start_releases_the_reward_app_and_every_pool(ray_local, tiny_base, tmp_path, monkeypatch):
    from ray import serve

    # An unplaceable learner pool (a GPU on a CPU-only cluster): the rollout pool was already reserved.
    cfg = tiny_cfg(tmp_path, tiny_base)
    cfg.cluster.placement_groups, cfg.cluster.ready_timeout_s = True, 2.0
    cfg.learner.num_gpus_per_worker = 1.0
    with pytest.raises(RuntimeError, match="pool 'learner' could not be placed"):
        train_mod.train(cfg, progress=False)
    assert live_placement_groups() == []
    assert "rewards" not in serve.status().applications

    # A learner that fails after the reward app is up: the app and both pools go with it.
    def broken_learner(*args, **kwargs):
        assert "rewards" in serve.status().applications and len(live_placement_groups()) == 2
        raise RuntimeError("learner could not start")

    monkeypatch.setattr(train_mod, "LearnerGroup", broken_learner)
    cfg.learner.num_gpus_per_worker, cfg.run_dir = 0.0, str(tmp_path / "run2")
    with pytest.raises(RuntimeError, match="learner could not start"):
        train_mod.train(cfg, progress=False)
    assert live_placement_groups() == []
    assert "rewards" not in serve.status().applications


def test_weights_an_actor_did_not_receive_from_the_learner_stop_the_run(ray_local, tiny_base, tmp_path):
    from actors.weight_sync import WeightHandle, WeightSyncError

    trainer = train_mod.Trainer(tiny_cfg(tmp_path, tiny_base), progress=False)
    try:
        # Actor 0 gets the published version number with other tensors (a corrupt or foreign transfer).
        state = ray.get(trainer.handle.refs[0])
        corrupt = {k: v + 1e-3 * (i == 0) for i, (k, v) in enumerate(sorted(state.items()))}
        ray.get(trainer.actors[0].apply_weights.remote(WeightHandle(trainer.handle.version, [ray.put(corrupt)], 0)))
        with pytest.raises(WeightSyncError, match="rollout actor 0 holds policy version 1 with weights digest"):
            trainer.run()
    finally:
        trainer.close()


def test_a_lora_target_that_binds_nothing_stops_the_start(ray_local, tiny_base, tmp_path):
    from actors.weight_sync import WeightSyncError

    cfg = tiny_cfg(tmp_path, tiny_base)
    cfg.model.lora_targets = ["fc1", "to_q"]  # toy2d has no to_q: peft adapts fc1 and silently skips it
    with pytest.raises(WeightSyncError, match=r"model.lora_targets \['to_q'\] bound no module"):
        train_mod.train(cfg, progress=False)
    assert live_placement_groups() == []

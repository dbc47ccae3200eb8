"""The streaming loop on a real local Ray + Serve, with stage-cost simulation (``simulate.enabled``):
samples stay out of the driver, and scoring, training and rollouts overlap."""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from infra.checkpoint import load_latest_checkpoint
from infra.config import load_config
from pipelines import train as train_mod


def sim_cfg(tmp_path, tag: str, *overrides: str):
    # 2 prompts x 2 slots x 4 samples = 16 samples (4 groups) a step, over 2 objectives.
    return load_config("configs/sim_scaling.yaml", [
        f"run_dir={tmp_path / tag}", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "rollout.prompts_per_step=2", "preferences.slots_per_prompt=2", "rollout.group_size=4",
        "loop.steps=5", "loop.checkpoint_every=5", *overrides])


def driver_bytes(cfg) -> list[float]:
    _, blob = load_latest_checkpoint(cfg.run_dir)
    history = MlflowClient(cfg.tracking.tracking_uri).get_metric_history(blob["loop"]["mlflow_run_id"],
                                                                         "loop/driver_bytes_in")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def test_the_driver_fetches_the_same_bytes_whatever_the_payload(ray_local, tmp_path):
    """8-byte samples, then 256 KiB samples with a 64 px image each and 1 MiB of conditions per group
    (two calls per actor and two actors): the driver fetches, per step, only the metadata (float32 w
    [16, 2], int64 group indices [16]) and the float32 scores [16, 2], 128 + 128 + 128 bytes."""
    small = sim_cfg(tmp_path, "small", "simulate.sample_bytes=8")
    large = sim_cfg(tmp_path, "large", "simulate.sample_bytes=262144", "simulate.image_size=64",
                    "simulate.condition_bytes=1048576", "rollout.num_actors=2", "rollout.groups_per_call=1")
    for cfg in (small, large):
        train_mod.train(cfg, progress=False)
    assert driver_bytes(small) == driver_bytes(large) == [384.0] * 5


def test_scoring_and_training_overlap_and_steps_queue_at_the_learner(ray_local, tmp_path, monkeypatch):
    """A learner step costs 0.4 s, rollouts and rewards milliseconds: with max_staleness=1 the rewards
    of step k+1 come back while step k trains, and step k+1 waits at the learner (submitted before step
    k is done) instead of behind the driver."""
    cfg = sim_cfg(tmp_path, "overlap", "simulate.train_s_per_sample=0.025", "simulate.rollout_s_per_sample=0.0005")
    events: list[tuple[str, int, float]] = []
    on_scores, submit, complete = train_mod.Trainer.on_scores, train_mod.Trainer.submit_training, \
        train_mod.Trainer.complete_step

    def scored(self, work, *args):
        events.append(("scored", work.step, time.perf_counter()))
        return on_scores(self, work, *args)

    def submitted(self, work):
        events.append(("submitted", work.step, time.perf_counter()))
        return submit(self, work)

    def completed(self, work):
        events.append(("completed", work.step, time.perf_counter()))
        return complete(self, work)

    monkeypatch.setattr(train_mod.Trainer, "on_scores", scored)
    monkeypatch.setattr(train_mod.Trainer, "submit_training", submitted)
    monkeypatch.setattr(train_mod.Trainer, "complete_step", completed)
    train_mod.train(cfg, progress=False)
    at = {(kind, step): t for kind, step, t in events}
    steps = range(cfg.loop.steps - 1)
    overlapped = [k for k in steps if at["submitted", k] < at["scored", k + 1] < at["completed", k]]
    queued = [k for k in steps if at["submitted", k + 1] < at["completed", k]]
    # Step 0 trains while step 1 is still being sampled and scored; every later pair overlaps.
    assert len(overlapped) >= len(steps) - 1, events
    assert len(queued) >= len(steps) - 1, events
    # Bounded staleness still holds: no step is sampled more than one version behind.
    _, blob = load_latest_checkpoint(cfg.run_dir)
    history = MlflowClient(cfg.tracking.tracking_uri).get_metric_history(blob["loop"]["mlflow_run_id"],
                                                                         "loop/staleness")
    assert max(m.value for m in history) <= 1

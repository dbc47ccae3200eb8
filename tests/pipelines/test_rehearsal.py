"""The sd35 GPU preset rehearsed whole on CPU: ``configs/sd35.yaml`` with only the model swapped for the
tiny SD3 and the rewards for their CPU twins (tiny PickScore-style CLIP, tiny VLM judge on the
transformers backend), everything else the preset's: bf16 learner under ZeRO-2 (2 ranks), 2 rollout
actors, collective weight sync (gloo, as learner.backend), placement groups on logical GPUs and the
preset's custom node resources of an emulated 4-node cluster, ``max_staleness: 1``, checkpoints and
registration at the end. Then the same with a rollout actor killed mid-run, then a SIGKILLed driver
resumed. Slow (minutes); CI runs it with the slow suite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from conftest import TINY_DIFFUSERS, all_group_ids, start_local_ray, stop_ray
from infra.checkpoint import load_latest_checkpoint
from infra.config import Config, load_config
from pipelines import train as train_mod
from policies.shapes import caption_grid
from reward_servers.tiny_models import build_tiny_clip, build_tiny_qwen2_vl

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "sd35.yaml"
STEPS = 4


@pytest.fixture(scope="module")
def gpu_cluster():
    """Head (driver, Serve) + the preset's three node types, each with 2 logical GPUs and the preset's CPUs."""
    from ray.cluster_utils import Cluster

    stop_ray()
    store = {"object_store_memory": 150 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, **store})
    for pool, cpus in (("rollout_pool", 16), ("learner_pool", 16), ("reward_pool", 8)):
        cluster.add_node(num_cpus=cpus, num_gpus=2, resources={pool: 2}, **store)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    stop_ray()
    cluster.shutdown()
    start_local_ray()


@pytest.fixture(scope="module")
def twins(tmp_path_factory, tiny_pipeline) -> dict[str, str]:
    root = tmp_path_factory.mktemp("twins")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(caption_grid()[:12]) + "\n")
    return {"sd3": str(tiny_pipeline("sd3")), "clip": str(build_tiny_clip(root / "clip")),
            "qwen": str(build_tiny_qwen2_vl(root / "qwen")), "prompts": str(prompts)}


def rehearsal_config(twins: dict[str, str], root: Path, address: str) -> Config:
    """The sd35 preset with the model, rewards and data swapped for CPU twins and the batch geometry shrunk."""
    preset = load_config(PRESET)
    objectives = [dict(o) for o in preset.rewards.model_dump()["objectives"]]
    objectives[0]["args"] = {**objectives[0]["args"], "model": twins["clip"], "device": "cpu"}
    judge = objectives[1]["args"]
    objectives[1]["args"] = {"model": twins["qwen"], "rubric": judge["rubric"], "template": judge["template"],
                             "max_score": judge["max_score"], "backend": "transformers"}
    tree = preset.model_dump()
    tree["model"].update(lora_rank=4, lora_alpha=8, pref_hidden_dim=16, tiny=TINY_DIFFUSERS)
    tree["model"]["diffusers"].update(pretrained=None, height=32, width=32, max_sequence_length=16)
    tree.update(run_dir=str(root / "run"), ray={"address": address},
                pretrain={**tree["pretrain"], "checkpoint": twins["sd3"]},
                tracking={**tree["tracking"], "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"})
    tree["data"].update(path=twins["prompts"], eval_prompts=2)
    tree["rewards"]["objectives"] = objectives
    tree["rollout"].update(prompts_per_step=2, group_size=4, sampler={**tree["rollout"]["sampler"], "num_steps": 6})
    tree["algorithm"]["train_timesteps"] = 5
    tree["learner"].update(world_size=2, backend="gloo", micro_batch_size=8, lr=3e-3)
    tree["loop"].update(steps=STEPS, checkpoint_every=2, scatter_every=STEPS)
    tree["evaluation"].update(points_per_edge=3, num_samples=4)
    tree["cluster"]["ready_timeout_s"] = 120
    cfg = Config.model_validate(tree)
    kept = ("dtype", "gradient_checkpointing")
    assert all(getattr(cfg.model.diffusers, k) == getattr(preset.model.diffusers, k) for k in kept)
    assert (cfg.learner.precision, cfg.learner.zero_stage, cfg.rollout.num_actors) == ("bf16", 2, 2)
    assert cfg.cluster == preset.cluster.model_copy(update={"ready_timeout_s": 120})
    assert cfg.algorithm == preset.algorithm.model_copy(update={"train_timesteps": 5})
    assert (cfg.rollout.num_gpus_per_actor, cfg.learner.num_gpus_per_worker) == (1, 1)
    assert cfg.loop.max_staleness == 1 and cfg.registry.register_on_finish
    return cfg


def trained_ids(cfg: Config) -> list[tuple[int, int, int]]:
    return [tuple(x) for x in load_latest_checkpoint(cfg.run_dir)[1]["loop"]["consumed"].tolist()]


@pytest.mark.slow
def test_sd35_preset_rehearsal_trains_registers_and_survives_failures(gpu_cluster, twins, tmp_path, monkeypatch):
    # 1. The whole preset, end to end.
    cfg = rehearsal_config(twins, tmp_path / "whole", gpu_cluster.address)
    result = train_mod.train(cfg, progress=False)
    assert trained_ids(cfg) == all_group_ids(cfg, STEPS)
    _, blob = load_latest_checkpoint(cfg.run_dir)
    ema = blob["weights"]["ema"]
    assert all(v.dtype == torch.float32 for v in ema.values())  # fp32 masters under a bf16 learner
    client = MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(blob["loop"]["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["paretoslider.registered_model"] == "models:/sd35/1"
    for name in ("realism", "watercolor"):  # both reward servers scored every step, and the scores moved
        history = [m.value for m in client.get_metric_history(run.info.run_id, f"reward/{name}")]
        assert len(history) == STEPS and len(set(history)) > 1, (name, history)
    assert result.points.mean.shape == (3, 2) and torch.isfinite(torch.as_tensor(result.points.mean)).all()

    # 2. A rollout actor dies mid-run (its step-3 rollout in flight): Ray restarts it, the collective group
    # re-forms, and every group is trained exactly once.
    killed = tmp_path / "killed"
    cfg = rehearsal_config(twins, killed, gpu_cluster.address)
    original = train_mod.Trainer.score
    formations = []

    def score(self, chunk):
        if chunk.step == 2 and not formations:
            formations.append(self.group_id)
            ray.kill(self.actors[1], no_restart=False)
        return original(self, chunk)

    monkeypatch.setattr(train_mod.Trainer, "score", score)
    original_close = train_mod.Trainer.close
    monkeypatch.setattr(train_mod.Trainer, "close", lambda self: (formations.append(self.group_id),
                                                                  original_close(self)))
    train_mod.train(cfg, progress=False)
    monkeypatch.undo()
    assert trained_ids(cfg) == all_group_ids(cfg, STEPS)
    assert formations[1] == formations[0] + 1  # the group formed once more, after the restart

    # 3. The driver is SIGKILLed between checkpoints (after step 3), then resumed with --resume.
    cfg = rehearsal_config(twins, tmp_path / "resumed", gpu_cluster.address)
    config, record = tmp_path / "resumed" / "config.json", tmp_path / "resumed" / "record.jsonl"
    config.parent.mkdir()
    config.write_text(cfg.model_dump_json())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    driver = ROOT / "tests" / "pipelines" / "sigkill_driver.py"

    def attempt(n: int, *kill: str) -> int:
        done = subprocess.run([sys.executable, str(driver), str(config), str(n), str(record), *kill], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert done.returncode in (0, -signal.SIGKILL), done.stderr[-4000:]
        return done.returncode

    assert attempt(1, "--kill-after-step", "3") == -signal.SIGKILL
    assert load_latest_checkpoint(cfg.run_dir)[0] == 2
    assert attempt(2) == 0
    assert trained_ids(cfg) == all_group_ids(cfg, STEPS)
    steps = sorted((json.loads(line)["step"], json.loads(line)["attempt"]) for line in record.read_text().splitlines())
    assert steps == [(1, 1), (2, 1), (3, 1), (3, 2), (4, 2)]

"""A registered model served on an emulated multi-node cluster (``ray.cluster_utils.Cluster``) after
every driver-side file is gone: the driver never loads the model, replicas on another node fetch it
from the registry's artifact store, and a replica started on a third node after the second one died
answers with the same samples."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from conftest import TINY_MODEL
from endpoint import free_port
from image_slider_run import no_model_in_the_driver, write_run_dir
from infra.config import Config
from pipelines.slider_model import SliderModel
from pipelines.slider_requests import GenerationSpec

pytestmark = pytest.mark.slow
NAME = "toy2d-portable"
POINTS = 32
REQUESTS = [((1.0, 0.0), 3), ((0.25, 0.75), 8)]


def toy_run(root: Path, base: Path) -> Config:
    """A tiny toy2d run on ``base`` with an MLflow run in a SQLite store under ``root``."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("portable", artifact_location=str(root / "mlartifacts")))
    cfg = Config.model_validate({"name": "portable", "run_dir": str(root / "run"), "model": TINY_MODEL,
                                 "pretrain": {"checkpoint": str(base)}, "rollout": {"sampler": {"num_steps": 3}},
                                 "tracking": {"tracking_uri": uri}, "registry": {"model_name": NAME}})
    return write_run_dir(cfg, base, run.info.run_id)


def replica_node() -> str:
    from ray.util.state import list_actors

    alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "SliderServer" in a.class_name]
    assert len(alive) == 1, alive
    return alive[0].node_id


def post(url: str, w, seed: int) -> np.ndarray:
    r = requests.post(f"{url}/v1/generate", json={"preference": list(w), "seed": seed},
                      headers={"Accept": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["points"], dtype=np.float32)


def test_replicas_on_other_nodes_serve_the_registered_model_with_no_driver_files(
        ray_multinode, tiny_base, tmp_path, monkeypatch):
    import ray
    from ray import serve

    from pipelines.registry import register_model
    from pipelines.serve import deploy_slider

    root = tmp_path / "train-host"
    root.mkdir()
    cfg = toy_run(root, Path(shutil.copy(tiny_base, root / "base.pt")))
    # The reference samples: the run directory loaded in this process, before anything is removed.
    model = SliderModel.from_run_dir(cfg.run_dir)
    want = [model.generate([GenerationSpec(w, seed, model.default_steps, POINTS)])[0] for w, seed in REQUESTS]
    del model

    with monkeypatch.context() as patch:
        no_model_in_the_driver(patch)
        version = register_model(cfg.run_dir)
    assert (version.name, str(version.version)) == (NAME, "1")
    shutil.rmtree(cfg.run_dir)
    Path(cfg.pretrain.checkpoint).unlink()
    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    assert sorted(p.name for p in root.iterdir()) == ["mlartifacts", "mlflow.db"]  # the store, nothing else

    second = ray_multinode.add_node(num_cpus=2, resources={"slider_node": 1})
    ray_multinode.wait_for_nodes()
    ray.init(address=ray_multinode.address)
    serve_cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={
        "port": free_port(), "num_cpus": 0.5, "points_per_request": POINTS, "resources": {"slider_node": 0.5}})})
    with monkeypatch.context() as patch:
        no_model_in_the_driver(patch)
        endpoint = deploy_slider(serve_cfg, f"models:/{NAME}/1")
    try:
        assert replica_node() == second.node_id
        for (w, seed), expected in zip(REQUESTS, want):
            np.testing.assert_allclose(post(endpoint.url, w, seed), expected, atol=1e-6)

        # The replica's node dies; Serve starts a new one on a node that joined after the files went.
        ray_multinode.remove_node(second)
        third = ray_multinode.add_node(num_cpus=2, resources={"slider_node": 1})
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{endpoint.url}/healthz", timeout=5).ok and replica_node() == third.node_id:
                    break
            except (requests.RequestException, AssertionError):
                pass
            assert time.monotonic() < deadline, "no replica came up on the third node"
            time.sleep(2)
        for (w, seed), expected in zip(REQUESTS, want):
            np.testing.assert_allclose(post(endpoint.url, w, seed), expected, atol=1e-6)
        info = requests.get(f"{endpoint.url}/v1/objectives", timeout=10).json()
        assert json.dumps(info["model"]["kind"]) == '"toy2d"' and info["model"]["step"] == 5
    finally:
        endpoint.close()
        serve.shutdown()

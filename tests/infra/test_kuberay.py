"""The KubeRay manifests parse and describe the three pools with the custom resources the config pins."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2] / "infra" / "kuberay"


def worker_resources(groups: list[dict]) -> dict[str, dict]:
    out = {}
    for g in groups:
        custom = json.loads(json.loads(g["rayStartParams"]["resources"]))
        gpus = int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        out[g["groupName"]] = {"custom": custom, "gpus": gpus}
    return out


def test_raycluster_has_three_gpu_pools():
    doc = yaml.safe_load((ROOT / "raycluster.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    pools = worker_resources(doc["spec"]["workerGroupSpecs"])
    assert pools["rollout-gpu"]["custom"] == {"rollout_pool": 8} and pools["rollout-gpu"]["gpus"] == 8
    assert pools["learner-gpu"]["custom"] == {"learner_pool": 8}
    assert pools["reward-gpu"]["custom"] == {"reward_pool": 4}
    assert doc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_rayjob_runs_the_cli_against_the_cluster():
    doc = yaml.safe_load((ROOT / "rayjob.yaml").read_text())
    assert doc["kind"] == "RayJob"
    assert doc["spec"]["entrypoint"].startswith("paretoslider train") and "--address auto" in doc["spec"]["entrypoint"]
    pools = worker_resources(doc["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert set(pools) == {"rollout-gpu", "learner-gpu"}


def pod_specs(doc: dict) -> list[dict]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def test_every_pod_has_a_memory_backed_shm_shared_storage_and_the_hub_token():
    for name in ("raycluster.yaml", "rayjob.yaml"):
        doc = yaml.safe_load((ROOT / name).read_text())
        for pod in pod_specs(doc):
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes["dshm"]["emptyDir"]["medium"] == "Memory", name
            assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == "paretoslider-shared", name
            for container in pod["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                assert mounts == {"/dev/shm": "dshm", "/shared": "shared"}, name
                token = next(e for e in container["env"] if e["name"] == "HF_TOKEN")
                assert token["valueFrom"]["secretKeyRef"]["optional"] is True
    entry = yaml.safe_load((ROOT / "rayjob.yaml").read_text())["spec"]["entrypoint"]
    assert "--set run_dir=/shared/" in entry  # learner ranks on other pods write where --resume reads

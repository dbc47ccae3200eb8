"""ray_cluster.yaml is valid for the installed Ray and gives each pool its own GPU node type."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"
POOLS = {"rollout_gpu": "rollout_pool", "learner_gpu": "learner_pool", "reward_gpu": "reward_pool"}


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def ray_validate(config: dict) -> None:
    """What `ray up` does before launching anything: fill provider defaults, then validate."""
    validate_config(prepare_config(copy.deepcopy(config)))


def test_valid_against_rays_schema_and_validator(cluster, schema):
    jsonschema.validate(cluster, schema)
    ray_validate(cluster)


def test_each_pool_has_a_gpu_node_type_with_its_resource(cluster):
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    assert types[cluster["head_node_type"]]["resources"].get("CPU") == 0
    for node_type, pool in POOLS.items():
        res = types[node_type]["resources"]
        assert res["GPU"] >= 1 and res[pool] == res["GPU"], (node_type, res)
        assert not ({"rollout_pool", "learner_pool", "reward_pool"} - {pool}) & set(res)
        assert 0 <= types[node_type]["min_workers"] <= types[node_type]["max_workers"]
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cluster["max_workers"]


def test_setup_installs_the_repo_and_vllm_only_on_reward_nodes(cluster):
    assert cluster["file_mounts"] == {"~/paretoslider": "."}
    prepared = prepare_config(copy.deepcopy(cluster))
    common = prepared["worker_setup_commands"]
    reward = prepared["available_node_types"]["reward_gpu"]["worker_setup_commands"]
    assert any("paretoslider" in c and "[vllm]" not in c for c in common)
    assert any("paretoslider[vllm]" in c for c in reward)
    # A node type's list replaces the global ones, so it must carry the same Ray pin.
    pin = [c for c in common if "ray[" in c]
    assert pin and all(c in reward for c in pin)
    assert f"=={ray.__version__}" in pin[0], "cluster Ray must match the Ray that submits jobs"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["available_node_types"]["rollout_gpu"].update(gpus=8), "'gpus' was"),
        (
            lambda c: c["available_node_types"]["learner_gpu"]["resources"].update(learner_pool=.5),
            "not of type 'integer'",
        ),
        (lambda c: c.update(head_node_type="missing"), "head_node_type"),
        (lambda c: c.update(max_workers=1), "sum of `min_workers`"),
    ],
    ids=["unknown_key", "fractional_resource", "unknown_head_type", "min_workers_over_max"],
)
def test_broken_copies_are_rejected(cluster, mutate, message):
    bad = copy.deepcopy(cluster)
    mutate(bad)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=message):
        ray_validate(bad)

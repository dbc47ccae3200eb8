"""Resource pools on logical GPUs and an emulated multi-node cluster: where every actor lands."""

from __future__ import annotations

import pytest
import ray

from infra.config import Config
from infra.pools import build_pools, release_pools


@ray.remote(num_cpus=0)
class Probe:
    def where(self) -> tuple[str, list]:
        return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]


def place(pool, n: int) -> list[tuple[str, list]]:
    probes = [Probe.options(**pool.options(i)).remote() for i in range(n)]
    out = ray.get([p.where.remote() for p in probes], timeout=60)
    for p in probes:
        ray.kill(p)
    return out


@pytest.fixture(scope="module")
def nodes(ray_multinode):
    """Three worker nodes with logical GPUs: a rollout node, a learner node, a colocation node."""
    out = {
        "rollout": ray_multinode.add_node(num_cpus=2, num_gpus=4, resources={"rollout_pool": 4}),
        "learner": ray_multinode.add_node(num_cpus=2, num_gpus=2, resources={"learner_pool": 2}),
        "colo": ray_multinode.add_node(num_cpus=4, num_gpus=2, resources={"colo": 2}),
    }
    ray_multinode.wait_for_nodes()
    ray.init(address=ray_multinode.address)
    return out


def test_pools_follow_custom_node_resources(nodes):
    rollout_node, learner_node = nodes["rollout"], nodes["learner"]
    cfg = Config.model_validate({
        "rollout": {"num_actors": 4, "num_gpus_per_actor": 1, "num_cpus_per_actor": 0.25},
        "learner": {"world_size": 2, "num_gpus_per_worker": 1, "num_cpus_per_worker": 0.5},
        "cluster": {"placement_groups": True, "rollout": {"resources": {"rollout_pool": 1}, "strategy": "SPREAD"},
                    "learner": {"resources": {"learner_pool": 1}, "strategy": "STRICT_PACK"}},
    })
    rollout, learner = build_pools(cfg)
    try:
        ro = place(rollout, 4)
        le = place(learner, 2)
    finally:
        release_pools(rollout, learner)
    assert {n for n, _ in ro} == {rollout_node.node_id}
    assert {n for n, _ in le} == {learner_node.node_id}
    assert sorted(g for _, gpus in ro for g in gpus) == ["0", "1", "2", "3"]  # one GPU each, no sharing
    assert sorted(g for _, gpus in le for g in gpus) == ["0", "1"]


def test_colocated_pool_shares_gpus_fractionally(nodes):
    node = nodes["colo"]
    cfg = Config.model_validate({
        "rollout": {"num_actors": 2, "num_gpus_per_actor": 0.5, "num_cpus_per_actor": 0.25},
        "learner": {"world_size": 2, "num_gpus_per_worker": 0.5, "num_cpus_per_worker": 0.5},
        "loop": {"max_staleness": 0},
        "cluster": {"placement_groups": True, "colocate": True,
                    "learner": {"resources": {"colo": 1}, "strategy": "STRICT_PACK"}},
    })
    rollout, learner = build_pools(cfg)
    try:
        assert rollout.placement_group is learner.placement_group
        assert rollout.bundles == [{"CPU": 0.75, "colo": 1, "GPU": 1.0}] * 2
        ro, le = place(rollout, 2), place(learner, 2)
    finally:
        release_pools(rollout, learner)
    assert {n for n, _ in ro + le} == {node.node_id}
    # rollout actor i shares learner rank i's GPU
    assert [g for _, g in ro] == [g for _, g in le] and len({g[0] for _, g in le}) == 2


def test_pool_that_cannot_fit_fails_fast_with_what_it_asked_for(nodes):
    cfg = Config.model_validate({
        "rollout": {"num_actors": 9, "num_gpus_per_actor": 1},
        "cluster": {"placement_groups": True, "ready_timeout_s": 3},
    })
    with pytest.raises(RuntimeError, match=r"pool 'rollout'.*9 bundle\(s\).*'GPU': 1"):
        build_pools(cfg)


def test_without_placement_groups_actors_ask_for_their_own_resources():
    cfg = Config.model_validate({"rollout": {"num_actors": 2, "num_gpus_per_actor": 0.5},
                                 "cluster": {"rollout": {"resources": {"rollout_pool": 1}}}})
    rollout, learner = build_pools(cfg)
    assert rollout.placement_group is None
    assert rollout.options(1) == {"num_cpus": 0.5, "num_gpus": 0.5, "resources": {"rollout_pool": 1}}
    assert learner.options(0) == {"num_cpus": 0.5, "num_gpus": 0.0}


def test_colocate_config_rules():
    from infra.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="max_staleness=0"):
        load_config(None, ["cluster.colocate=true", "cluster.placement_groups=true"])
    with pytest.raises(ConfigError, match="max_inflight_groups"):
        load_config(None, ["cluster.max_inflight_groups=3"])
    shared_gpus = ["cluster.colocate=true", "cluster.placement_groups=true", "loop.max_staleness=0",
                   "learner.num_gpus_per_worker=0.5", "rollout.num_gpus_per_actor=0.5"]
    with pytest.raises(ConfigError, match="two NCCL ranks"):
        load_config(None, shared_gpus + ["cluster.weight_sync=collective"])
    assert load_config(None, shared_gpus).cluster.weight_sync == "object_store"

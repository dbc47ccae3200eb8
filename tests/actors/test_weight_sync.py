"""Collective weight sync (gloo here, NCCL on GPUs) against the object-store path."""

from __future__ import annotations

import pytest
import torch

from actors.weight_sync import bucket_names
from conftest import all_group_ids, tiny_cfg


def test_bucket_names_cover_everything_in_a_fixed_order():
    state = {"b": torch.zeros(10), "a": torch.zeros(300), "c": torch.zeros(5)}
    assert bucket_names(state, bucket_bytes=1230) == [["a"], ["b", "c"]]
    assert bucket_names(state, bucket_bytes=10**6) == [["a", "b", "c"]]
    assert bucket_names(state, bucket_bytes=4) == [["a"], ["b"], ["c"]]


@pytest.mark.slow
def test_collective_sync_trains_like_the_object_store(ray_local, tiny_base, tmp_path):
    from infra.checkpoint import load_latest_checkpoint
    from pipelines.train import train

    results = {}
    for mode in ("object_store", "collective"):
        cfg = tiny_cfg(tmp_path / mode, tiny_base, steps=4)
        cfg.rollout.num_actors = 2
        cfg.rollout.num_cpus_per_actor = 0.25
        cfg.cluster.weight_sync = mode
        cfg.cluster.weight_sync_bucket_mb = 0.001  # many small buckets
        train(cfg, progress=False)
        _, blob = load_latest_checkpoint(cfg.run_dir)
        results[mode] = blob
        assert [tuple(x) for x in blob["loop"]["consumed"].tolist()] == all_group_ids(cfg, 4)
    a, b = results["object_store"]["weights"]["trainable"], results["collective"]["weights"]["trainable"]
    # Same groups, same seeds, same weights on the actors at every step -> the same training.
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

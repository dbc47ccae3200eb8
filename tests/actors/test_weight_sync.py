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


def test_broadcast_casts_into_bf16_receivers_and_both_ends_digest_the_same_bytes():
    """A float32 sender (the learner's master copies) and bf16 receivers (an actor's bf16 adapters):
    buckets are cut in wire bytes on every rank, receivers cast, and the digests both ends report equal
    the digest of the sent state computed here."""
    import socket
    import threading

    from actors.weight_sync import CollectiveGroup, state_digest

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gen = torch.Generator().manual_seed(0)
    sent = {"b": torch.randn(10, generator=gen), "a": torch.randn(300, generator=gen), "c": torch.randn(5, generator=gen)}
    received = {k: torch.zeros(v.shape, dtype=torch.bfloat16) for k, v in sent.items()}
    digests = {}

    def member(rank: int, state: dict) -> None:
        digests[rank] = CollectiveGroup("127.0.0.1", port, rank, 2, "gloo", timeout_s=60).broadcast_state(state, 500)

    threads = [threading.Thread(target=member, args=args) for args in ((0, sent), (1, received))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert digests[0] == digests[1] == state_digest(sent)
    assert all(torch.equal(received[k], sent[k].to(torch.bfloat16)) for k in sent)
    assert state_digest({**sent, "c": sent["c"] + 1e-6}) != digests[0]


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

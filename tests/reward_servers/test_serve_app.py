"""The reward app on a real local Ray + Serve: same scores as in-process, batching, named failures."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import ray
from ray import serve

from infra.config import RewardSpec, RewardsConfig
from reward_servers.base import RewardInputs, RewardRef, RewardServerError
from reward_servers.client import RewardClient
from reward_servers.serve_app import deployment_name

import reward_fakes  # test-only rewards (registers them)

OBJECTIVES = [
    RewardSpec(name="toy2d_target", label="target_a", args={"target": [4.0, 0.0]}),
    RewardSpec(
        name="toy2d_target", label="target_b", args={"target": [0.0, 4.0], "kind": "gaussian", "scale": 2.0}
    ),
    RewardSpec(name="fake_prompt_length", label="words"),
]


def batch(n: int, seed: int) -> RewardInputs:
    rng = np.random.default_rng(seed)
    return RewardInputs(rng.normal(size=(n, 2)) * 3, ["x" * int(k) for k in rng.integers(0, 20, size=n)])


@pytest.fixture(scope="module")
def ray_serve(ray_local):
    # Serve replicas cannot import the test-only rewards by module name; ship them by value.
    ray_local.cloudpickle.register_pickle_by_value(reward_fakes)
    yield
    # The session's Ray stays up; Serve goes so a later module can start it with its own HTTP options.
    serve.shutdown()
    ray_local.cloudpickle.unregister_pickle_by_value(reward_fakes)


@pytest.fixture(scope="module")
def cfg() -> RewardsConfig:
    # A long batch window so that concurrent submits surely meet in one batch.
    return RewardsConfig(objectives=OBJECTIVES, max_batch_size=8, batch_wait_timeout_s=0.2)


@pytest.fixture(scope="module")
def client(ray_serve, cfg):
    with RewardClient(cfg, app_name="rewards_test") as c:
        yield c


@pytest.fixture(scope="module")
def local(cfg):
    with RewardClient(cfg.model_copy(update={"backend": "local"})) as c:
        yield c


def test_serve_scores_equal_local_scores(client, local):
    assert client.objective_names == local.objective_names == ["target_a", "target_b", "words"]
    assert client.ranges == local.ranges == [(-math.inf, 0.0), (0.0, 1.0), (0.0, math.inf)]
    assert client.directions == ["max", "max", "max"]
    inputs = batch(16, seed=0)
    scores = client.submit(inputs).result()
    assert scores.shape == (16, 3) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, local.score(inputs), rtol=1e-6)
    np.testing.assert_allclose(scores[:, 2], [len(p) for p in inputs.prompts])


def test_concurrent_submits_are_batched(client, local):
    stats = serve.get_deployment_handle(deployment_name("words"), app_name="rewards_test")
    before = len(stats.batch_sizes.remote().result())
    inputs = [batch(n, seed=n) for n in range(1, 9)]
    pending = [client.submit(x) for x in inputs]
    for x, p in zip(inputs, pending):
        np.testing.assert_allclose(p.result(), local.score(x), rtol=1e-6)
    sizes = stats.batch_sizes.remote().result()[before:]
    assert sum(sizes) == 8
    assert max(sizes) > 1, f"requests were not batched: {sizes}"


def test_missing_prompts_are_rejected_at_submit(client):
    with pytest.raises(ValueError, match=r"reward 'words' \(fake_prompt_length\) needs 'prompts'"):
        client.submit(RewardInputs(np.zeros((2, 2))))


def by_value(inputs: RewardInputs) -> RewardInputs:
    return inputs


def by_reference(inputs: RewardInputs) -> RewardRef:
    """As the training loop sends a batch: the client then calls each objective's deployment itself."""
    return RewardRef.of(inputs, ray.put(inputs))


@pytest.mark.parametrize("send", [by_value, by_reference])
def test_failing_reward_is_retried_then_named(ray_serve, monkeypatch, send):
    monkeypatch.setattr("reward_servers.client.BACKOFF_S", 0.01)
    boom = RewardSpec(name="fake_faulty", label="boom", args={"raise_error": True})
    cfg = RewardsConfig(objectives=[OBJECTIVES[0], boom], retries=1)
    with RewardClient(cfg, app_name="rewards_boom") as client:
        with pytest.raises(RewardServerError) as err:
            client.score(send(batch(4, seed=1)))
    assert str(err.value) == (
        "reward server 'boom' (fake_faulty) failed: ZeroDivisionError: bad batch (gave up after 2 attempts)"
    )
    assert err.value.objective == "boom"


@pytest.mark.parametrize("send", [by_value, by_reference])
def test_hung_reward_times_out_named(ray_serve, send):
    slow = RewardSpec(name="fake_faulty", label="slow", args={"sleep_s": 3.0})
    cfg = RewardsConfig(objectives=[OBJECTIVES[0], slow], timeout_s=0.5, retries=0)
    with RewardClient(cfg, app_name="rewards_slow") as client:
        start = time.monotonic()
        with pytest.raises(RewardServerError) as err:
            client.score(send(batch(4, seed=2)))
        assert time.monotonic() - start < 2.5
    assert str(err.value) == "reward server 'slow' (fake_faulty) timed out after 0.5s (gave up after 1 attempt)"
    assert err.value.objective == "slow"


def test_reward_that_fails_to_start_is_named(ray_serve):
    bad = RewardSpec(name="toy2d_target", label="target_c", args={"target": [1.0, 2.0], "kind": "cosine"})
    with pytest.raises(RewardServerError) as err:
        RewardClient(RewardsConfig(objectives=[OBJECTIVES[0], bad]), app_name="rewards_bad")
    assert str(err.value) == (
        "reward server 'target_c' (toy2d_target) failed to start: ValueError: reward 'target_c' (toy2d_target): "
        "'kind' must be one of ['neg_distance', 'gaussian'], got 'cosine'"
    )
    assert "rewards_bad" not in serve.status().applications


def test_a_batch_is_split_over_an_objectives_replicas_and_gathered_in_order(ray_serve):
    """Two replicas of one objective: the 16-sample batch goes out in two slices of 8, one per replica
    (the router's second request goes to the idle replica), and comes back in order beside an objective
    with one replica."""
    cfg = RewardsConfig(objectives=[RewardSpec(name="fake_replica_pid", label="pid", num_replicas=2),
                                    RewardSpec(name="fake_prompt_length", label="words")],
                        batch_wait_timeout_s=0.01)
    inputs = batch(16, seed=5)
    with RewardClient(cfg, app_name="rewards_split") as c:
        # By value, and by reference as the training loop sends it (the replicas read their slices).
        for scores in (c.score(inputs), c.score(by_reference(inputs))):
            pids = scores[:, 0]
            assert len(set(pids[:8])) == 1 and len(set(pids[8:])) == 1 and pids[0] != pids[8]  # both replicas scored
            np.testing.assert_array_equal(scores[:, 1], [len(p) for p in inputs.prompts])  # order kept


def test_a_batch_sent_by_reference_scores_as_by_value_and_names_what_it_lacks(client, local):
    inputs = batch(12, seed=8)
    ref = RewardRef.of(inputs, ray.put(inputs))
    assert ref.kinds == ("samples", "prompts") and len(ref) == 12
    np.testing.assert_array_equal(client.score(ref), client.score(inputs))
    np.testing.assert_array_equal(local.score(ref), client.score(inputs))
    bare = RewardInputs(inputs.samples)
    with pytest.raises(ValueError, match="'words' .* needs 'prompts'"):
        client.submit(RewardRef.of(bare, ray.put(bare)))

"""Rewards, registry, RewardInputs and the in-process client (no Ray)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from infra.config import RewardSpec, RewardsConfig
from reward_servers.base import RewardInputs, RewardServerError
from reward_servers.client import RewardClient
from reward_servers.registry import build_reward, register, registered_names

import reward_fakes  # test-only rewards (registers them)


def spec(name: str, label: str | None = None, **args) -> RewardSpec:
    return RewardSpec(name=name, label=label, args=args)


def points(*xy: tuple[float, float]) -> RewardInputs:
    return RewardInputs(np.array(xy, dtype=np.float32))


# --- toy2d rewards ---------------------------------------------------------------------------------


def test_target_neg_distance_in_units_of_scale():
    reward = build_reward(spec("toy2d_target", target=[3, 4]))
    np.testing.assert_allclose(reward.score(points((0, 0), (3, 4), (6, 8))), [-5, 0, -5])
    assert reward.range == (-math.inf, 0.0) and reward.direction == "max"
    half = build_reward(spec("toy2d_target", target=[3, 4], scale=2.0))
    np.testing.assert_allclose(half.score(points((0, 0), (3, 4))), [-2.5, 0])


def test_target_gaussian():
    reward = build_reward(spec("toy2d_target", target=[0, 0], kind="gaussian", scale=2.0))
    scores = reward.score(points((0, 0), (2, 0), (0, 4)))
    np.testing.assert_allclose(scores, [1.0, math.exp(-0.5), math.exp(-2.0)], rtol=1e-6)
    assert scores.dtype == np.float32 and reward.range == (0.0, 1.0)


def test_axis_projects_on_unit_direction_and_clips():
    reward = build_reward(spec("toy2d_axis", axis=[3, 4], low=-2, high=5))
    np.testing.assert_allclose(reward.score(points((1, 1), (10, 0), (-10, 0))), [1.4, 5.0, -2.0], rtol=1e-6)
    assert reward.range == (-2.0, 5.0)


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("toy2d_target", {"target": [1, 2, 3]}, "'target' must be two finite numbers"),
        ("toy2d_target", {"target": "far"}, "'target' must be two finite numbers"),
        ("toy2d_target", {"target": [1, 2], "kind": "cosine"}, "'kind' must be one of ['neg_distance', 'gaussian']"),
        ("toy2d_target", {"target": [1, 2], "scale": 0}, "'scale' must be a positive number"),
        ("toy2d_axis", {"axis": [0, 0]}, "'axis' must be a non-zero vector"),
        ("toy2d_axis", {"low": 1, "high": 1}, "low < high"),
    ],
)
def test_toy2d_args_are_validated(name, args, message):
    with pytest.raises(ValueError, match=f"reward 'obj' \\({name}\\): ") as err:
        build_reward(spec(name, "obj", **args))
    assert message in str(err.value)


def test_toy2d_rejects_non_2d_samples():
    reward = build_reward(spec("toy2d_target", target=[0, 0]))
    with pytest.raises(ValueError, match=r"toy2d_target scores 2-D points \[B, 2\], got samples of shape \(4, 3\)"):
        reward.score(RewardInputs(np.zeros((4, 3))))


# --- registry ----------------------------------------------------------------------------------------


def test_unknown_reward_lists_registered_names():
    known = "registered rewards: .*toy2d_axis, toy2d_target"
    with pytest.raises(ValueError, match=f"unknown reward 'toy2d_targte'; {known}"):
        build_reward(spec("toy2d_targte"))
    assert {"toy2d_target", "toy2d_axis"} <= set(registered_names())


def test_bad_args_name_the_reward_and_show_the_signature():
    with pytest.raises(ValueError) as err:
        build_reward(spec("toy2d_target", "target_a", target=[1, 2], knd="gaussian"))
    assert str(err.value) == (
        "reward 'target_a' (toy2d_target): bad args {'target': [1, 2], 'knd': 'gaussian'}: "
        "got an unexpected keyword argument 'knd'; expected toy2d_target(target, kind='neg_distance', scale=1.0)"
    )
    with pytest.raises(ValueError, match="missing a required argument: 'target'"):
        build_reward(spec("toy2d_target"))


def test_a_name_cannot_be_registered_by_two_classes():
    with pytest.raises(ValueError, match="'toy2d_target' is already registered by reward_servers.toy2d.Toy2dTarget"):
        register("toy2d_target")(reward_fakes.PromptLength)


# --- RewardInputs -------------------------------------------------------------------------------------


def test_split_then_concat_round_trips():
    batch = RewardInputs(np.arange(12).reshape(6, 2), [f"p{i}" for i in range(6)], np.ones((6, 3, 4, 4)))
    parts = batch.split([1, 3, 2])
    assert [len(p) for p in parts] == [1, 3, 2]
    assert parts[1].prompts == ["p1", "p2", "p3"]
    np.testing.assert_array_equal(parts[2].samples, [[8, 9], [10, 11]])
    joined = RewardInputs.concat(parts)
    np.testing.assert_array_equal(joined.samples, batch.samples)
    assert joined.prompts == batch.prompts and joined.source_images.shape == (6, 3, 4, 4)
    assert joined.samples.dtype == np.float32
    with pytest.raises(ValueError, match=r"split sizes \[2, 2\] sum to 4, not the batch size 6"):
        batch.split([2, 2])


def test_concat_drops_a_field_only_some_parts_have():
    joined = RewardInputs.concat([RewardInputs(np.zeros((2, 2)), ["a", "b"]), RewardInputs(np.ones((1, 2)))])
    assert len(joined) == 3 and joined.prompts is None


def test_inputs_are_checked_at_the_boundary():
    with pytest.raises(ValueError, match="RewardInputs.prompts has 1 entries for 2 samples"):
        RewardInputs(np.zeros((2, 2)), ["a"])
    with pytest.raises(ValueError, match=r"source_images has shape \(3, 1\) for 2 samples"):
        RewardInputs(np.zeros((2, 2)), source_images=np.zeros((3, 1)))
    with pytest.raises(ValueError, match="reward 'caption' needs 'prompts' but the batch has no prompts"):
        RewardInputs(np.zeros((2, 2))).require(("samples", "prompts"), "'caption'")


# --- local client ----------------------------------------------------------------------------------------


def local_config(*objectives: RewardSpec, **kw) -> RewardsConfig:
    return RewardsConfig(objectives=list(objectives), backend="local", **kw)


def test_local_client_scores_every_objective_in_order():
    cfg = local_config(
        spec("toy2d_target", "near", target=[3, 4]),
        spec("toy2d_axis", "right", axis=[1, 0]),
        spec("fake_prompt_length", "words"),
    )
    with RewardClient(cfg) as client:
        assert client.objective_names == ["near", "right", "words"]
        assert client.directions == ["max", "max", "max"]
        assert client.ranges == [(-math.inf, 0.0), (-math.inf, math.inf), (0.0, math.inf)]
        pending = client.submit(RewardInputs(np.array([[0, 0], [3, 4]]), ["ab", "abcd"]))
        scores = pending.result()
    np.testing.assert_allclose(scores, [[-5, 0, 2], [0, 3, 4]])
    assert set(pending.latency_s) == {"near", "right", "words"} and min(pending.latency_s.values()) > 0
    assert scores.dtype == np.float32


def test_local_client_cannot_reach_external_servers():
    remote = RewardSpec(name="toy2d_axis", label="right", url="http://127.0.0.1:1/rewards")
    with pytest.raises(ValueError, match=r"objectives \['right'\] have a 'url'; external reward servers need "
                                         "rewards.backend='serve'"):
        RewardClient(local_config(remote))


def test_local_client_rejects_missing_inputs_before_scoring():
    with RewardClient(local_config(spec("fake_prompt_length", "words"))) as client:
        with pytest.raises(ValueError, match=r"reward 'words' \(fake_prompt_length\) needs 'prompts'"):
            client.submit(points((0, 0)))


def test_local_failure_is_retried_then_named(monkeypatch):
    monkeypatch.setattr("reward_servers.client.BACKOFF_S", 0.01)
    cfg = local_config(spec("toy2d_axis", "right"), spec("fake_faulty", "boom", raise_error=True), retries=2)
    with RewardClient(cfg) as client:
        with pytest.raises(RewardServerError) as err:
            client.score(points((0, 0)))
        assert client._rewards[1].calls == 3
    assert str(err.value) == (
        "reward server 'boom' (fake_faulty) failed: ZeroDivisionError: bad batch (gave up after 3 attempts)"
    )
    assert err.value.objective == "boom"


def test_local_timeout_names_the_objective():
    cfg = local_config(spec("fake_faulty", "slow", sleep_s=1.0), timeout_s=0.2, retries=0)
    with RewardClient(cfg) as client:
        start = time.monotonic()
        with pytest.raises(RewardServerError, match=r"^reward server 'slow' \(fake_faulty\) timed out after 0.2s"):
            client.score(points((0, 0)))
        assert time.monotonic() - start < 0.9

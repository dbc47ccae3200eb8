"""The reward app's HTTP face and external reward servers, on a real local Ray + Serve.

One app (``shared``) plays a shared reward cluster: its router answers ``POST /shared/score`` with
``.npz`` bodies. A second app (``job``) scores one objective locally and one on ``shared`` by URL.
"""

from __future__ import annotations

import io
import json
import math
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
from ray import serve

from infra.config import RewardSpec, RewardsConfig
from reward_servers.base import RewardInputs, RewardServerError
from reward_servers.client import RewardClient, reward_step_metrics
from reward_servers.codecs import decode_scores, encode_batch
from reward_servers.serve_app import deployment_name

import reward_fakes  # test-only rewards (registers them)

SHARED = [
    RewardSpec(name="toy2d_target", label="target_a", args={"target": [3.0, 4.0]}),
    RewardSpec(name="fake_prompt_length", label="words", num_replicas=2, max_ongoing_requests=4),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch(n: int = 5) -> RewardInputs:
    rng = np.random.default_rng(n)
    return RewardInputs(rng.normal(size=(n, 2)) * 3, ["x" * int(k) for k in rng.integers(0, 9, size=n)])


@pytest.fixture(scope="module")
def base_url(ray_local):
    ray_local.cloudpickle.register_pickle_by_value(reward_fakes)
    serve.shutdown()  # a Serve left by another module listens elsewhere
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray_local.cloudpickle.unregister_pickle_by_value(reward_fakes)


@pytest.fixture(scope="module")
def shared(base_url):
    cfg = RewardsConfig(objectives=SHARED, route_prefix="/shared")
    with RewardClient(cfg, app_name="shared") as client:
        yield client


def post(url: str, body: bytes) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_http_score_route_answers_npz(base_url, shared):
    inputs = batch()
    status, body = post(f"{base_url}/shared/score", encode_batch(inputs))
    assert status == 200
    scores, labels = decode_scores(body)
    assert labels == ["target_a", "words"]
    np.testing.assert_allclose(scores, shared.score(inputs), rtol=1e-6)
    status, body = post(f"{base_url}/shared/score", encode_batch(inputs, ["words"]))
    np.testing.assert_allclose(decode_scores(body)[0][:, 0], [len(p) for p in inputs.prompts])
    with urllib.request.urlopen(f"{base_url}/shared/objectives", timeout=30) as r:
        infos = json.loads(r.read())
    assert infos[0] == {"label": "target_a", "name": "toy2d_target", "inputs": ["samples"], "direction": "max",
                        "range": [None, 0.0]}


def test_http_bad_requests_are_4xx_with_a_message(base_url, shared):
    status, body = post(f"{base_url}/shared/score", b"not an npz")
    assert status == 400 and b"body is not a pickle-free .npz" in body
    status, body = post(f"{base_url}/shared/score", encode_batch(batch(), ["colour"]))
    assert status == 400 and b"unknown objectives ['colour']; this server scores ['target_a', 'words']" in body
    status, body = post(f"{base_url}/shared/score", encode_batch(RewardInputs(np.zeros((2, 2)))))
    assert status == 400 and b"reward 'words' (fake_prompt_length) needs 'prompts'" in body
    # An object array would need pickle to load: refused, never unpickled.
    buf = io.BytesIO()
    np.savez(buf, samples=np.zeros((1, 2)), prompts=np.array([{"a": 1}], dtype=object))
    status, body = post(f"{base_url}/shared/score", buf.getvalue())
    assert status == 400 and b"pickle" in body


def test_per_objective_replicas(shared):
    app = serve.status().applications["shared"]
    assert app.deployments[deployment_name("words")].replica_states.get("RUNNING") == 2
    assert app.deployments[deployment_name("target_a")].replica_states.get("RUNNING") == 1


def test_objective_scored_by_url(base_url, shared):
    job = [RewardSpec(name="toy2d_target", label="target_a", url=f"{base_url}/shared"),
           RewardSpec(name="toy2d_axis", label="right")]
    with RewardClient(RewardsConfig(objectives=job), app_name="job") as client:
        assert client.ranges == [(-math.inf, 0.0), (-math.inf, math.inf)]
        inputs = batch(7)
        pending = client.submit(inputs)
        scores = pending.result()
        np.testing.assert_allclose(scores[:, 0], shared.score(inputs)[:, 0], rtol=1e-6)
        np.testing.assert_allclose(scores[:, 1], inputs.samples[:, 0], rtol=1e-6)
        assert set(pending.latency_s) == {"target_a", "right"} and all(v > 0 for v in pending.latency_s.values())
    metrics = reward_step_metrics(scores, client.objective_names, pending.latency_s)
    assert metrics["reward_max/right"] == pytest.approx(float(inputs.samples[:, 0].max()))
    assert metrics["reward_std/target_a"] == pytest.approx(float(scores[:, 0].std()), rel=1e-5)
    assert metrics["reward_latency_s/right"] == pending.latency_s["right"]


def test_external_server_down_or_wrong_is_named(base_url, shared):
    dead = f"http://127.0.0.1:{free_port()}/rewards"
    with pytest.raises(RewardServerError) as err:
        RewardClient(RewardsConfig(objectives=[RewardSpec(name="toy2d_target", label="target_a", url=dead)]),
                     app_name="job_dead")
    assert str(err.value).startswith(f"reward server 'target_a' (toy2d_target) at {dead}/objectives is unreachable")
    assert err.value.objective == "target_a" and "job_dead" not in serve.status().applications
    with pytest.raises(RewardServerError, match=r"serves no objective 'target_a' \(toy2d_axis\); it serves "
                                                r"\['target_a \(toy2d_target\)', 'words \(fake_prompt_length\)'\]"):
        RewardClient(RewardsConfig(objectives=[RewardSpec(name="toy2d_axis", label="target_a",
                                                          url=f"{base_url}/shared")]), app_name="job_wrong")

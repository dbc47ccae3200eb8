"""VLM judge: digit-probability scoring, the transformers backend, and the OpenAI HTTP client.

The HTTP client is checked against a small OpenAI-compatible server run here on 127.0.0.1 (aiohttp)
that answers with the tiny model's real log-probabilities and fails on demand; the same client
against a real vLLM server is ``test_vllm_server.py``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import threading

import numpy as np
import pytest
from PIL import Image

from infra.config import RewardSpec
from reward_servers.base import RewardInputs
from reward_servers.registry import build_reward
from reward_servers.tiny_models import build_tiny_qwen2_vl
from reward_servers.vlm_judge import Question, _digits_from_top_logprobs, expected_score


def images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    x = np.random.default_rng(seed).random((n, 3, size, size)).astype(np.float32)
    x[0] = 0.0  # a black image next to noise: the judge should tell them apart
    return x


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> str:
    return str(build_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2vl")))


def judge(**args):
    return build_reward(RewardSpec(name="vlm_judge", args=args))


def test_expected_score_is_mean_digit_over_scale():
    with np.errstate(divide="ignore"):  # log(0) = -inf: a digit absent from the top log-probs
        lp = np.log([[0.5, 0.5, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
        unnormalised = np.log([[2.0, 0.0, 2.0]])
    np.testing.assert_allclose(expected_score(lp), [0.1, 1.0], rtol=1e-6)
    # Unnormalised log-probabilities (a top-k subset) are renormalised over the digits.
    np.testing.assert_allclose(expected_score(unnormalised), [0.5])


def test_top_logprobs_are_merged_per_digit():
    top = [("7", math.log(0.3)), (" 7", math.log(0.1)), ("a", math.log(0.5)), ("9", math.log(0.05)),
           ("12", -1.0)]
    lp = _digits_from_top_logprobs(top, max_score=7)
    assert lp[7] == pytest.approx(math.log(0.4)) and np.isneginf(lp[:7]).all()


def test_args_are_checked(qwen_dir):
    with pytest.raises(ValueError, match=r"'rubric' must be one of \['edit_preservation', 'edit_success', "):
        judge(model=qwen_dir, rubric="beauty")
    with pytest.raises(ValueError, match="backend 'openai' needs 'url'"):
        judge(model="Qwen/Qwen2.5-VL-7B-Instruct", backend="openai")
    with pytest.raises(ValueError, match="'model' must be a local checkpoint directory for backend 'transformers'"):
        judge(model="Qwen/Qwen2.5-VL-7B-Instruct")
    with pytest.raises(ValueError, match="'max_score' must be 1..9"):
        judge(model=qwen_dir, max_score=10)


def test_transformers_batch_equals_one_by_one(qwen_dir):
    r = judge(model=qwen_dir, rubric="prompt_adherence", max_score=5)
    assert r.inputs == ("samples", "prompts") and r.range == (0.0, 1.0)
    batch = RewardInputs(images(3), ["a red circle", "two green squares on a white table", "x"])
    lp = r.digit_logprobs(batch)
    assert lp.shape == (3, 6)
    # Left padding: a prompt's score does not depend on the longer prompts it is batched with.
    for i, part in enumerate(batch.split([1, 1, 1])):
        np.testing.assert_allclose(r.digit_logprobs(part)[0], lp[i], atol=1e-4)
    scores = r.score(batch)
    assert ((0 <= scores) & (scores <= 1)).all() and np.ptp(scores) > 1e-3


def test_edit_rubric_shows_source_first(qwen_dir):
    r = judge(model=qwen_dir, rubric="edit_preservation")
    assert r.inputs == ("samples", "prompts", "source_images")
    x, src = images(2, seed=1), images(2, seed=2)
    q = r.questions(RewardInputs(x, ["make it red", "add a hat"], src))[1]
    assert len(q.images) == 2 and "add a hat" in q.text and "0 to 9" in q.text
    np.testing.assert_array_equal(np.asarray(q.images[0]), np.rint(src[1].transpose(1, 2, 0) * 255))
    swapped = r.score(RewardInputs(src, ["make it red", "add a hat"], x))
    assert not np.allclose(r.score(RewardInputs(x, ["make it red", "add a hat"], src)), swapped)


# --- the OpenAI HTTP backend -----------------------------------------------------------------------------


class OpenAIServer:
    """``/v1/chat/completions`` with the tiny model's digit log-probabilities; fails ``fail`` times first."""

    def __init__(self, model_dir: str, fail: int = 0, status: int = 503):
        from aiohttp import web

        from reward_servers.vlm_judge import TransformersJudge

        self.model = TransformersJudge(model_dir, max_score=9, device="cpu")
        self.fail, self.status, self.bodies = fail, status, []
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.complete)
        self.runner = web.AppRunner(app)
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def complete(self, request):
        from aiohttp import web

        body = await request.json()
        self.bodies.append(body)
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=self.status, text="overloaded")
        content = body["messages"][0]["content"]
        pics = [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1])))
                for p in content if p["type"] == "image_url"]
        lp = self.model.digit_logprobs([Question(pics, content[-1]["text"])])[0]
        top = [{"token": str(d), "logprob": float(v)} for d, v in enumerate(lp)][: body["top_logprobs"]]
        return web.json_response({"choices": [{"logprobs": {"content": [{"token": "0", "top_logprobs": top}]}}]})

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def server(qwen_dir, request):
    s = OpenAIServer(qwen_dir, **getattr(request, "param", {}))
    yield s
    s.close()


@pytest.mark.parametrize("server", [{"fail": 2}], indirect=True)
def test_http_backend_agrees_with_transformers_and_retries(qwen_dir, server):
    local = judge(model=qwen_dir, rubric="edit_success")
    remote = judge(model=qwen_dir, rubric="edit_success", backend="openai", url=server.url, retries=2)
    remote.backend.backoff_s = 0.01
    batch = RewardInputs(images(3, seed=3), ["make it red", "add a hat", "x"], images(3, seed=4))
    np.testing.assert_allclose(remote.digit_logprobs(batch), local.digit_logprobs(batch), atol=1e-5)
    body = server.bodies[-1]
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 10
    # The digits get the +100 bias so a server returning processed log-probs lists exactly them.
    assert sorted(body["logit_bias"]) == sorted(str(i) for i in local.backend.digit_ids)
    assert len(server.bodies) == 3 + 2  # two 503s retried


@pytest.mark.parametrize("server", [{"fail": 5}], indirect=True)
def test_http_backend_gives_up_naming_the_server(qwen_dir, server):
    remote = judge(model=qwen_dir, backend="openai", url=server.url, retries=1)
    remote.backend.backoff_s = 0.01
    with pytest.raises(ConnectionError, match=r"VLM server http://127.0.0.1:\d+/v1/chat/completions failed after "
                                              r"2 attempts: ConnectionError: HTTP 503: overloaded"):
        remote.score(RewardInputs(images(1), ["a cat"]))


@pytest.mark.parametrize("server", [{"fail": 1, "status": 400}], indirect=True)
def test_http_client_error_is_not_retried(qwen_dir, server):
    remote = judge(model=qwen_dir, backend="openai", url=server.url, retries=3)
    with pytest.raises(ValueError, match="refused the request: HTTP 400: overloaded"):
        remote.score(RewardInputs(images(1), ["a cat"]))
    assert len(server.bodies) == 1

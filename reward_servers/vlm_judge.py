"""VLM judge: a vision-language model reads a rubric and the image(s); the score is read off its
next-token distribution over the rubric's digits, never off generated text.

For a rubric with scale 0..K and digit log-probabilities ``l_d`` (renormalised over the digits),
``score = sum_d d softmax(l)_d / K`` in [0, 1] (paper: Qwen2.5-VL on vLLM, 0-5 or 0-9 scales).

Three backends build the same prompt and return the same digit log-probabilities:

- ``transformers``: the model in-process (CPU fallback, tests); Qwen2-VL / Qwen2.5-VL checkpoints.
- ``openai``: any OpenAI-compatible server (vLLM's ``api_server``) at ``url``: images as PNG data
  URLs, ``max_tokens=1``, ``top_logprobs``; async, with per-request timeouts and retries.
- ``vllm``: a vLLM engine inside this process (a Ray Serve replica with a GPU; ``pip install
  .[vllm]``).

vLLM returns at most 20 log-probabilities and by default *raw* ones (before ``logit_bias``): a big
judge puts its mass on the digits anyway, a small one may not. With a tokenizer at hand the judge
adds a +100 ``logit_bias`` on the digits and the engine (or server, ``--logprobs-mode
processed_logprobs``) returns the biased log-probabilities, whose top entries are then exactly the
digits; the constant bias cancels in the renormalisation, so the score is unchanged.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from reward_servers.base import RewardInputs
from reward_servers.codecs import as_images, png_data_url, to_pil
from reward_servers.registry import register

BACKENDS = ("transformers", "openai", "vllm")
DIGIT_BIAS = 100.0
"""Logit bias put on the digit tokens (see the module docstring)."""


@dataclass(frozen=True)
class Rubric:
    """A question to the judge; ``{prompt}`` is replaced by the sample's prompt (or instruction)."""

    template: str
    inputs: tuple[str, ...]
    """What the judge is shown: ``samples`` always; ``source_images`` puts the source image first."""
    max_score: int = 9


_ANSWER = " Answer with a single digit from 0 to {max_score}, where {max_score} is best."
RUBRICS: dict[str, Rubric] = {
    "prompt_adherence": Rubric(
        "How well does the image follow this prompt: \"{prompt}\"?" + _ANSWER, ("samples", "prompts")),
    "style": Rubric(
        "How well does the image match this style: \"{prompt}\"? Judge the style only, not the content."
        + _ANSWER, ("samples", "prompts")),
    "photorealism": Rubric(
        "How much does the image look like a real photograph, free of rendering artifacts?" + _ANSWER,
        ("samples",)),
    "edit_success": Rubric(
        "The first image is the source, the second the edited image. How well was this edit "
        "carried out: \"{prompt}\"?" + _ANSWER, ("samples", "prompts", "source_images")),
    "edit_preservation": Rubric(
        "The first image is the source, the second the edited image. Apart from the requested edit "
        "\"{prompt}\", how well is the rest of the source (identity, layout, background) preserved?"
        + _ANSWER, ("samples", "prompts", "source_images")),
}


@dataclass
class Question:
    """One sample as the judge sees it: the images in order, then the text."""

    images: list[Image.Image]
    text: str

    def openai_messages(self) -> list[dict[str, Any]]:
        content = [{"type": "image_url", "image_url": {"url": png_data_url(im)}} for im in self.images]
        return [{"role": "user", "content": [*content, {"type": "text", "text": self.text}]}]


def expected_score(digit_logprobs: np.ndarray) -> np.ndarray:
    """``[B, K+1]`` log-probabilities of the digits 0..K (``-inf`` = absent) -> ``[B]`` in [0, 1]."""
    lp = np.asarray(digit_logprobs, dtype=np.float64)
    p = np.exp(lp - lp.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return (p @ np.arange(lp.shape[1]) / (lp.shape[1] - 1)).astype(np.float32)


def digit_token_ids(tokenizer: Any, max_score: int) -> list[int]:
    """Token id of each digit 0..max_score; a tokenizer that splits a digit cannot be used."""
    ids = []
    for d in range(max_score + 1):
        enc = tokenizer.encode(str(d), add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"the judge's tokenizer encodes the digit {d} as {len(enc)} tokens {enc}; "
                             "digit scoring needs one token per digit")
        ids.append(enc[0])
    return ids


@register("vlm_judge")
class VlmJudge:
    """A VLM's expected rubric score in [0, 1]; ``rubric`` is a name from ``RUBRICS``.

    ``model``: local checkpoint directory (transformers / vllm; for openai, where the tokenizer is
    read for the digit bias, if it is a directory). ``served_model``: the name the OpenAI server
    knows the model by (default ``model``). ``template`` / ``max_score`` override the rubric's.
    """

    name = "vlm_judge"
    range = (0.0, 1.0)
    direction = "max"

    def __init__(self, model: str, rubric: str = "prompt_adherence", backend: str = "transformers",
                 url: str | None = None, served_model: str | None = None, template: str | None = None,
                 max_score: int | None = None, device: str = "cpu", timeout_s: float = 60.0, retries: int = 2,
                 max_concurrency: int = 16, engine_args: dict[str, Any] | None = None):
        if rubric not in RUBRICS:
            raise ValueError(f"'rubric' must be one of {sorted(RUBRICS)}, got {rubric!r}")
        if backend not in BACKENDS:
            raise ValueError(f"'backend' must be one of {list(BACKENDS)}, got {backend!r}")
        if backend == "openai" and not url:
            raise ValueError("backend 'openai' needs 'url' (the server's base URL, e.g. http://host:8000/v1)")
        if backend != "openai" and not Path(model).is_dir():
            raise ValueError(f"'model' must be a local checkpoint directory for backend {backend!r}, "
                             f"got {model!r} (nothing is downloaded at run time)")
        base = RUBRICS[rubric]
        self.rubric = Rubric(template or base.template, base.inputs, base.max_score if max_score is None else max_score)
        if not 1 <= self.rubric.max_score <= 9:
            raise ValueError(f"'max_score' must be 1..9 (one digit), got {self.rubric.max_score}")
        self.inputs = self.rubric.inputs
        if backend == "transformers":
            self.backend = TransformersJudge(model, self.rubric.max_score, device)
        elif backend == "openai":
            self.backend = OpenAIJudge(url, served_model or model, self.rubric.max_score,
                                       _tokenizer_if_local(model), timeout_s, retries, max_concurrency)
        else:
            self.backend = VllmEngineJudge(model, self.rubric.max_score, engine_args or {})

    def questions(self, batch: RewardInputs) -> list[Question]:
        samples = to_pil(as_images(batch.samples, "vlm_judge samples"))
        sources = (to_pil(as_images(batch.source_images, "vlm_judge source_images"))
                   if "source_images" in self.inputs else [None] * len(batch))
        prompts = batch.prompts if "prompts" in self.inputs else [""] * len(batch)
        text = self.rubric.template.replace("{max_score}", str(self.rubric.max_score))
        return [Question([im] if src is None else [src, im], text.replace("{prompt}", p))
                for im, src, p in zip(samples, sources, prompts)]

    def digit_logprobs(self, batch: RewardInputs) -> np.ndarray:
        """``[B, max_score + 1]`` log-probabilities of the digits (renormalised), for comparisons."""
        lp = np.asarray(self.backend.digit_logprobs(self.questions(batch)), dtype=np.float64)
        return lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)

    def score(self, batch: RewardInputs) -> np.ndarray:
        return expected_score(self.digit_logprobs(batch))


def _tokenizer_if_local(model: str) -> Any | None:
    if not Path(model).is_dir():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


class TransformersJudge:
    """The judge in-process with transformers (Qwen2-VL family: image tokens expanded per grid)."""

    def __init__(self, model: str, max_score: int, device: str):
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"  # the next-token logits are read at the last position
        self.image_processor = AutoImageProcessor.from_pretrained(model)
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype).to(device).eval()
        self.device = device
        self.digit_ids = digit_token_ids(self.tokenizer, max_score)
        self.image_pad = "<|image_pad|>"
        self.image_pad_id = self.tokenizer.convert_tokens_to_ids(self.image_pad)
        self.merge = self.image_processor.merge_size ** 2

    def digit_logprobs(self, questions: list[Question]) -> np.ndarray:
        torch = self.torch
        images = [im for q in questions for im in q.images]
        vision = self.image_processor(images=images, return_tensors="pt")
        tokens_per_image = (vision["image_grid_thw"].prod(dim=1) // self.merge).tolist()
        texts, k = [], 0
        for q in questions:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": [*({"type": "image"} for _ in q.images), {"type": "text", "text": q.text}]}],
                tokenize=False, add_generation_prompt=True)
            # What Qwen2VLProcessor does: one <|image_pad|> per visual token of each image, in order.
            parts = text.split(self.image_pad)
            text = parts[0]
            for part in parts[1:]:
                text += self.image_pad * tokens_per_image[k] + part
                k += 1
            texts.append(text)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        # M-RoPE positions need to know which tokens are visual (1 = image), as the processor marks them.
        enc["mm_token_type_ids"] = (enc["input_ids"] == self.image_pad_id).long()
        with torch.no_grad():
            logits = self.model(**enc.to(self.device), pixel_values=vision["pixel_values"].to(self.device),
                                image_grid_thw=vision["image_grid_thw"].to(self.device)).logits
        return torch.log_softmax(logits[:, -1, self.digit_ids].float(), dim=-1).cpu().numpy()


def _digits_from_top_logprobs(top: list[tuple[str, float]], max_score: int) -> np.ndarray:
    """``[(token, logprob)]`` -> ``[max_score + 1]`` digit log-probabilities (``-inf`` if absent)."""
    out = np.full(max_score + 1, -math.inf)
    for token, logprob in top:
        t = token.strip()
        if len(t) == 1 and t.isdigit() and int(t) <= max_score:
            # " 7" and "7" are different tokens for the same answer.
            out[int(t)] = np.logaddexp(out[int(t)], logprob)
    return out


class OpenAIJudge:
    """The judge behind any OpenAI-compatible chat-completions server (vLLM ``api_server``)."""

    def __init__(self, url: str, model: str, max_score: int, tokenizer: Any | None, timeout_s: float,
                 retries: int, max_concurrency: int, backoff_s: float = 0.5):
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.max_score = max_score
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_concurrency = max_concurrency
        self.backoff_s = backoff_s
        self.logit_bias = None
        if tokenizer is not None:
            self.logit_bias = {str(i): DIGIT_BIAS for i in digit_token_ids(tokenizer, max_score)}

    def request_body(self, question: Question) -> dict[str, Any]:
        body = {"model": self.model, "messages": question.openai_messages(), "max_tokens": 1,
                "temperature": 1.0, "logprobs": True, "top_logprobs": min(20, self.max_score + 1)}
        if self.logit_bias is not None:
            body["logit_bias"] = self.logit_bias
        return body

    def digit_logprobs(self, questions: list[Question]) -> np.ndarray:
        # score() runs in a worker thread (Serve replica / local client), which has no event loop.
        return np.stack(asyncio.run(self._all(questions)))

    async def _all(self, questions: list[Question]) -> list[np.ndarray]:
        import aiohttp

        limit = asyncio.Semaphore(self.max_concurrency)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as session:
            return await asyncio.gather(*(self._one(session, limit, q) for q in questions))

    async def _one(self, session: Any, limit: asyncio.Semaphore, question: Question) -> np.ndarray:
        import aiohttp

        body = self.request_body(question)
        for attempt in range(self.retries + 1):
            try:
                async with limit, session.post(self.endpoint, json=body) as resp:
                    if resp.status >= 500 or resp.status == 429:
                        raise ConnectionError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                    if resp.status != 200:  # a 4xx will not get better with a retry
                        raise ValueError(f"VLM server {self.endpoint} refused the request: HTTP {resp.status}: "
                                         f"{(await resp.text())[:300]}")
                    reply = await resp.json()
                top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
                return _digits_from_top_logprobs([(t["token"], t["logprob"]) for t in top], self.max_score)
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as err:
                if attempt == self.retries:
                    raise ConnectionError(f"VLM server {self.endpoint} failed after {attempt + 1} attempts: "
                                          f"{type(err).__name__}: {err}") from None
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")


class VllmEngineJudge:
    """The judge as a vLLM engine in this process (a GPU Serve replica or Ray actor)."""

    def __init__(self, model: str, max_score: int, engine_args: dict[str, Any]):
        from vllm import LLM, SamplingParams

        args = {"max_model_len": 4096, "limit_mm_per_prompt": {"image": 2}, **engine_args,
                "logprobs_mode": "processed_logprobs"}
        self.llm = LLM(model=model, **args)
        self.digit_ids = digit_token_ids(self.llm.get_tokenizer(), max_score)
        self.params = SamplingParams(max_tokens=1, temperature=1.0, logprobs=len(self.digit_ids),
                                     logit_bias={i: DIGIT_BIAS for i in self.digit_ids})

    def digit_logprobs(self, questions: list[Question]) -> np.ndarray:
        outputs = self.llm.chat([q.openai_messages() for q in questions], self.params, use_tqdm=False)
        rows = []
        for out in outputs:
            top = out.outputs[0].logprobs[0]
            rows.append([top[i].logprob if i in top else -math.inf for i in self.digit_ids])
        return np.array(rows)

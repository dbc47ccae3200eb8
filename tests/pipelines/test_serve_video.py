"""A video slider (tiny LTX-2 text-to-video) registered and behind the real endpoint over HTTP on
loopback: an animated WebP by default, JSON with the WebP and (on request) every frame, checked
inputs, batched requests, the pyfunc model, and the page playing the video in real Chromium."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image, ImageSequence
from ray import serve

from browser import browser  # noqa: F401 - fixture
from endpoint import assert_422_names, free_port
from image_slider_run import PROMPT, write_image_run
from pipelines.serve import deploy_slider
from pipelines.slider_model import SliderModel
from pipelines.slider_requests import GenerationSpec

PROMPT_VIDEO = PROMPT["ltx2"]
JSON = {"Accept": "application/json"}
FRAMES = 5  # the tiny LTX-2 config's num_frames


@pytest.fixture(scope="module")
def video(ray_local, tiny_pipeline, tmp_path_factory):
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("ltx2")
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("video", artifact_location=str(root / "mlartifacts")))
    cfg = write_image_run("ltx2", tiny_pipeline("ltx2"), root, mlflow_run_id=run.info.run_id)
    return cfg, SliderModel.from_run_dir(cfg.run_dir)


@pytest.fixture(scope="module")
def url(video):
    from pipelines.registry import register_model

    cfg, _ = video
    version = register_model(cfg.run_dir, "ltx2-slider")
    serve_cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={
        "port": free_port(), "max_batch_size": 4, "batch_wait_timeout_s": 0.1, "num_cpus": 0.5})})
    serve.shutdown()  # an earlier module's Serve may run on another port
    endpoint = deploy_slider(serve_cfg, f"models:/{version.name}/{version.version}")
    yield endpoint.url
    endpoint.close()
    serve.shutdown()


def post(url: str, body: dict, headers=JSON) -> requests.Response:
    return requests.post(f"{url}/v1/generate", json=body, headers=headers, timeout=120)


def expected(model: SliderModel, w, seed: int) -> np.ndarray:
    """``[F, H, W, 3]`` uint8 frames generated in this process."""
    return model.generate([GenerationSpec(tuple(w), seed, model.default_steps, 1, PROMPT_VIDEO)])[0][0]


def webp_frames(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "WEBP" and getattr(image, "is_animated", False)
    return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)]).astype(int)


def test_objectives_say_the_model_makes_videos_from_a_prompt(url):
    info = requests.get(f"{url}/v1/objectives", timeout=10).json()
    assert {k: info["model"][k] for k in ("kind", "output_kind", "uses_prompt", "uses_source_image", "step")} == {
        "kind": "ltx2", "output_kind": "video", "uses_prompt": True, "uses_source_image": False, "step": 5}


def test_default_answer_is_the_video_as_animated_webp(url, video):
    cfg, model = video
    r = post(url, {"preference": [1, 0], "prompt": PROMPT_VIDEO, "seed": 3}, headers={})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"
    assert json.loads(r.headers["X-Preference"]) == {"adherence": 1.0, "area": 0.0}
    frames = webp_frames(r.content)
    assert frames.shape == (FRAMES, 32, 32, 3)
    # Lossless WebP: the generated pixels, up to batched-kernel rounding.
    assert np.abs(frames - expected(model, (1.0, 0.0), 3)).max() <= 1
    first = Image.open(io.BytesIO(r.content))
    first.load()  # frame timing is known once a frame is decoded
    assert first.info["duration"] == round(1000 / cfg.model.diffusers.frame_rate) and first.info["loop"] == 0


def test_json_answer_carries_the_webp_and_frames_on_request(url, video):
    _, model = video
    r = post(url, {"preference": {"area": 1}, "prompt": PROMPT_VIDEO, "seed": 4, "frames": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["output_kind"], out["width"], out["height"], out["points"]) == ("video", 32, 32, None)
    want = expected(model, (0.0, 1.0), 4)
    frames = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(f))).convert("RGB")).astype(int)
                       for f in out["frames_png_base64"]])
    assert frames.shape == (FRAMES, 32, 32, 3) and np.abs(frames - want).max() <= 1
    assert np.array_equal(webp_frames(base64.b64decode(out["video_webp_base64"])), frames)
    poster = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["image_png_base64"]))).convert("RGB")).astype(int)
    assert np.array_equal(poster, frames[0])
    assert np.abs(frames - expected(model, (1.0, 0.0), 4)).mean() > 2  # the slider moves the video

    plain = post(url, {"preference": {"area": 1}, "prompt": PROMPT_VIDEO, "seed": 4}).json()
    assert plain["frames_png_base64"] is None and plain["video_webp_base64"] == out["video_webp_base64"]


@pytest.mark.parametrize("body, field, message", [
    ({"preference": [1, 0]}, "prompt", "is required"),
    ({"preference": [1, 0], "prompt": PROMPT_VIDEO, "source_image": "x"}, "source_image", "not a base64 PNG"),
    ({"preference": [1, 0], "prompt": PROMPT_VIDEO, "frames": "all"}, "frames", "valid boolean"),
])
def test_bad_inputs_are_422_naming_the_field(url, body, field, message):
    assert_422_names(post(url, body), field, message)


def test_concurrent_requests_each_get_their_own_video(url, video):
    _, model = video
    jobs = [((i % 3) / 2, 1 - (i % 3) / 2, i) for i in range(4)]
    before = requests.get(f"{url}/healthz", timeout=10).json()

    def call(job):
        wa, wb, seed = job
        return post(url, {"preference": [wa, wb], "prompt": PROMPT_VIDEO, "seed": seed}, headers={})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(call, jobs))
    for (wa, wb, seed), r in zip(jobs, answers):
        assert r.status_code == 200, r.text
        assert np.abs(webp_frames(r.content) - expected(model, (wa, wb), seed)).max() <= 1
    after = requests.get(f"{url}/healthz", timeout=10).json()
    assert after["requests"] - before["requests"] == 4


def test_pyfunc_predict_gives_the_frames(video, url):
    import mlflow.pyfunc
    import pandas as pd
    from mlflow import MlflowClient

    cfg, model = video
    source = MlflowClient(cfg.tracking.tracking_uri).get_model_version("ltx2-slider", "1").source
    out = mlflow.pyfunc.load_model(source).predict(pd.DataFrame(
        {"prompt": [PROMPT_VIDEO], "preference": [[3.0, 1.0]], "seed": [2]}))
    assert out["preference"].tolist() == [[0.75, 0.25]]
    got = np.asarray(out["samples"][0], dtype=np.uint8)
    assert got.shape == (1, FRAMES, 32, 32, 3)
    assert np.abs(got[0].astype(int) - expected(model, (0.75, 0.25), 2)).max() <= 1


def test_page_plays_the_video(url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    browser.get(url + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sliders input[type=range]"))
    assert browser.find_element(By.ID, "error").text == "Enter a prompt to generate."
    assert not browser.find_element(By.ID, "source").is_displayed()
    image = browser.find_element(By.ID, "output")
    browser.find_element(By.ID, "prompt").send_keys(PROMPT_VIDEO)
    browser.find_element(By.ID, "seed").click()  # blur: 'change' fires on the prompt
    wait.until(lambda d: image.get_attribute("data-generation") != "0")
    assert browser.find_element(By.ID, "error").text == ""
    assert image.get_attribute("alt") == "generated video"
    src = image.get_attribute("src")
    assert src.startswith("data:image/webp;base64,")
    assert webp_frames(base64.b64decode(src.split(",", 1)[1])).shape == (FRAMES, 32, 32, 3)
    # The browser decoded it: an <img> with the video's size (a broken image has natural size 0).
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 32)

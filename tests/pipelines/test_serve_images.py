"""An editing slider (tiny FLUX.1 Kontext) behind the real endpoint over HTTP on loopback: images
as PNG and JSON, required prompt and source image, batched requests, and the page's inputs."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image
from ray import serve

from browser import browser  # noqa: F401 - fixture
from endpoint import assert_422_names, free_port
from image_slider_run import PROMPT, source_png, write_image_run
from pipelines.serve import deploy_slider
from pipelines.slider_model import SliderModel
from pipelines.slider_requests import GenerationSpec

PROMPT_EDIT = PROMPT["flux_kontext"]
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def kontext(ray_local, tiny_pipeline, tmp_path_factory):
    cfg = write_image_run("flux_kontext", tiny_pipeline("flux_kontext"), tmp_path_factory.mktemp("kontext"))
    return cfg, SliderModel.from_run_dir(cfg.run_dir)


@pytest.fixture(scope="module")
def url(kontext):
    cfg, _ = kontext
    serve_cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={
        "port": free_port(), "max_batch_size": 4, "batch_wait_timeout_s": 0.1, "max_size": 512, "num_cpus": 0.5})})
    serve.shutdown()  # an earlier module's Serve may run on another port
    endpoint = deploy_slider(serve_cfg, cfg.run_dir)
    yield endpoint.url
    endpoint.close()
    serve.shutdown()


def post(url: str, body: dict, headers=JSON) -> requests.Response:
    return requests.post(f"{url}/v1/generate", json=body, headers=headers, timeout=60)


def expected(model: SliderModel, w, seed: int, source: str) -> np.ndarray:
    spec = GenerationSpec(tuple(w), seed, model.default_steps, 1, PROMPT_EDIT, model.check_inputs(PROMPT_EDIT, source))
    return model.generate([spec])[0][0]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_objectives_say_the_model_takes_a_prompt_and_a_source_image(url):
    info = requests.get(f"{url}/v1/objectives", timeout=10).json()
    assert [o["label"] for o in info["objectives"]] == ["adherence", "fidelity"]
    assert {k: info["model"][k] for k in ("kind", "output_kind", "uses_prompt", "uses_source_image", "step")} == {
        "kind": "flux_kontext", "output_kind": "image", "uses_prompt": True, "uses_source_image": True, "step": 5}


def test_png_and_json_answers_carry_the_edited_image(url, kontext):
    _, model = kontext
    source = source_png(seed=1)
    r = post(url, {"preference": [1, 0], "prompt": PROMPT_EDIT, "source_image": source, "seed": 3,
                   "width": 64, "height": 48}, headers={})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and json.loads(r.headers["X-Preference"]) == {
        "adherence": 1.0, "fidelity": 0.0}
    assert Image.open(io.BytesIO(r.content)).size == (64, 48)

    r = post(url, {"preference": {"fidelity": 1}, "prompt": PROMPT_EDIT, "source_image": "data:image/png;base64,"
                   + source, "seed": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["output_kind"], out["width"], out["height"], out["points"]) == ("image", 32, 32, None)
    image = pixels(base64.b64decode(out["image_png_base64"]))
    assert image.shape == (32, 32, 3)
    assert np.abs(image - expected(model, (0.0, 1.0), 3, source)).max() <= 1  # batched kernels round apart
    other_corner = expected(model, (1.0, 0.0), 3, source).astype(int)
    assert np.abs(image - other_corner).mean() > 2


@pytest.mark.parametrize("body, field, message", [
    ({"preference": [1, 0], "source_image": source_png()}, "prompt", "is required"),
    ({"preference": [1, 0], "prompt": PROMPT_EDIT}, "source_image", "is required"),
    ({"preference": [1, 0], "prompt": PROMPT_EDIT, "source_image": "not an image!"}, "source_image",
     "not a base64 PNG or JPEG"),
    ({"preference": [1, 0], "prompt": PROMPT_EDIT, "source_image": source_png(600)}, "source_image",
     "the limit is 512 pixels"),
])
def test_missing_or_bad_inputs_are_422_naming_the_field(url, body, field, message):
    assert_422_names(post(url, body), field, message)


def test_concurrent_requests_each_get_their_own_image(url, kontext):
    _, model = kontext
    jobs = [((i % 3) / 2, 1 - (i % 3) / 2, i, source_png(seed=i)) for i in range(6)]
    before = requests.get(f"{url}/healthz", timeout=10).json()

    def call(job):
        wa, wb, seed, source = job
        return post(url, {"preference": [wa, wb], "prompt": PROMPT_EDIT, "source_image": source, "seed": seed})

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(call, jobs))
    for (wa, wb, seed, source), r in zip(jobs, answers):
        assert r.status_code == 200, r.text
        image = pixels(base64.b64decode(r.json()["image_png_base64"]))
        assert np.abs(image - expected(model, (wa, wb), seed, source)).max() <= 1
    after = requests.get(f"{url}/healthz", timeout=10).json()
    assert after["requests"] - before["requests"] == 6


def test_page_asks_for_prompt_and_source_image_then_shows_the_edit(url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(url + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sliders input[type=range]"))
    assert browser.find_element(By.ID, "prompt").get_attribute("disabled") is None
    assert browser.find_element(By.ID, "source").is_displayed()
    assert browser.find_element(By.ID, "error").text == "Enter a prompt to generate."
    image = browser.find_element(By.ID, "output")
    assert image.get_attribute("data-generation") == "0"

    browser.find_element(By.ID, "prompt").send_keys(PROMPT_EDIT)
    browser.find_element(By.ID, "seed").click()  # blur: 'change' fires on the prompt
    wait.until(lambda d: d.find_element(By.ID, "error").text == "Choose a source image to edit.")
    path = tmp_path / "source.png"
    path.write_bytes(base64.b64decode(source_png(seed=2)))
    browser.find_element(By.ID, "source").send_keys(str(path))
    wait.until(lambda d: image.get_attribute("data-generation") != "0")
    assert browser.find_element(By.ID, "error").text == ""
    assert json.loads(image.get_attribute("data-preference")) == {"adherence": 0.5, "fidelity": 0.5}
    shown = pixels(base64.b64decode(image.get_attribute("src").split(",", 1)[1]))
    assert shown.shape == (32, 32, 3)

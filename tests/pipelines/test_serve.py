"""The slider endpoint over real HTTP on loopback: a real Serve app serving the session's trained model.

The endpoint runs with a bearer token, so every test also exercises authorisation; the browser test
drives the page in real headless Chromium (Debian's chromium + chromium-driver, see ``make browser``).
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files

import numpy as np
import pytest
import requests
from PIL import Image
from ray import serve

from pipelines.serve import deploy_slider
from pipelines.slider_model import SliderModel
from pipelines.slider_requests import GenerationSpec
from browser import browser  # noqa: F401 - fixture
from endpoint import assert_422_names, free_port
from slider_run import MODEL_NAME, cfg, model, target  # noqa: F401 - cfg, model: fixtures

TOKEN = "test-token-123"
POINTS = 64
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def url(cfg):
    mp = pytest.MonkeyPatch()
    mp.setenv("PARETOSLIDER_SERVE_TOKEN", TOKEN)
    serve_cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={
        "port": free_port(), "require_token": True, "points_per_request": POINTS, "max_batch_size": 8,
        "batch_wait_timeout_s": 0.05, "max_steps": 20, "max_size": 512, "max_body_bytes": MAX_BODY,
        "num_cpus": 0.5})})
    serve.shutdown()  # an earlier module's reward servers may have left Serve on a random port
    endpoint = deploy_slider(serve_cfg, f"models:/{MODEL_NAME}/1")
    yield endpoint.url
    endpoint.close()
    serve.shutdown()
    mp.undo()


AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Accept": "application/json"}


def post(url: str, body, headers=JSON, **kw) -> requests.Response:
    data = json.dumps(body) if isinstance(body, (dict, list)) else body
    return requests.post(f"{url}/v1/generate", data=data, headers={"Content-Type": "application/json", **headers},
                         timeout=60, **kw)


def expected(model: SliderModel, w, seed: int, steps: int | None = None) -> np.ndarray:
    return model.generate([GenerationSpec(tuple(w), seed, steps or model.default_steps, POINTS)])[0]


def test_health_objectives_and_openapi(url):
    health = requests.get(f"{url}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["auth_required"] is True
    info = requests.get(f"{url}/v1/objectives", headers=AUTH, timeout=10).json()
    assert [o["label"] for o in info["objectives"]] == ["target_a", "target_b"]
    assert info["objectives"][0]["description"].startswith("Closeness to target")
    assert "target=[4.0, 0.0]" in info["objectives"][0]["description"]
    assert info["model"] == {"kind": "toy2d", "output_kind": "points", "uses_prompt": False,
                             "uses_source_image": False, "step": 40, "default_steps": 4, "max_steps": 20,
                             "max_size": 512, "max_prompt_chars": 2000}
    schema = requests.get(f"{url}/openapi.json", timeout=10).json()
    body = schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["preference"] and "source_image" in body["properties"]
    page = requests.get(url + "/", timeout=10)
    assert page.status_code == 200 and 'id="sliders"' in page.text


def test_docs_assets_are_served_by_the_endpoint_itself(url):
    shipped = files("fastapi_offline") / "static"
    for page in ("/docs", "/redoc"):
        html = requests.get(url + page, timeout=10)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        refs = re.findall(r'(?:src|href|url)\s*[=:]\s*[\'"]([^\'"]+)[\'"]', html.text)
        assert "/openapi.json" in refs, refs
        assets = [r for r in refs if r != "/openapi.json"]
        assert assets and all(r.startswith("/") and not r.startswith("//") for r in refs), refs
        for ref in assets:
            r = requests.get(url + ref, timeout=10)
            assert r.status_code == 200, ref
            assert r.content == (shipped / ref.rsplit("/", 1)[-1]).read_bytes(), ref


def test_token_is_required_on_the_api(url):
    assert requests.get(f"{url}/v1/objectives", timeout=10).status_code == 401
    r = post(url, {"preference": [1, 0]}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"


def test_png_answer_is_the_models_scatter(url, model):
    r = post(url, {"preference": {"target_b": 3.0}, "seed": 5, "width": 200, "height": 120}, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert json.loads(r.headers["X-Preference"]) == {"target_a": 0.0, "target_b": 1.0}
    assert Image.open(io.BytesIO(r.content)).size == (200, 120)
    want = model.to_png(expected(model, (0.0, 1.0), 5), (0.0, 1.0), 200, 120)
    assert r.content == want


def test_json_answer_carries_points_and_preference_used(url, model, cfg):
    r = post(url, {"preference": [1, 3], "seed": 7, "steps": 6})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["preference"] == {"target_a": 0.25, "target_b": 0.75}
    assert (out["seed"], out["steps"], out["width"], out["height"]) == (7, 6, 320, 320)
    assert out["output_kind"] == "points"
    np.testing.assert_allclose(out["points"], expected(model, (0.25, 0.75), 7, 6), atol=1e-6)
    assert Image.open(io.BytesIO(base64.b64decode(out["image_png_base64"]))).size == (320, 320)

    means = {w: np.mean(post(url, {"preference": list(w), "seed": 1}).json()["points"], axis=0)
             for w in [(1, 0), (0, 1)]}
    a = target(cfg, "target_a")
    assert np.linalg.norm(means[(1, 0)] - a) + 1.5 < np.linalg.norm(means[(0, 1)] - a)


def png_base64(size: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), "red").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


BAD = [
    ({"preference": [1, -1]}, "preference", "finite and >= 0"),
    ('{"preference": [NaN, 1]}', "preference", "finite and >= 0"),
    ({"preference": [1]}, "preference", "needs 2 weights"),
    ({"preference": [0.2, 0.3, 0.5]}, "preference", "needs 2 weights"),
    ({"preference": {"beauty": 1}}, "preference", "unknown objective(s) ['beauty']"),
    ({"preference": [0, 0]}, "preference", "at least one weight"),
    ({"preference": "a lot"}, "preference", "valid"),
    ({}, "preference", "Field required"),
    ({"preference": [1, 0], "steps": 21}, "steps", "is 21; the limit is 20"),
    ({"preference": [1, 0], "steps": 0}, "steps", "greater than or equal to 1"),
    ({"preference": [1, 0], "width": 513}, "width", "is 513; the limit is 512"),
    ({"preference": [1, 0], "height": 4}, "height", "greater than or equal to 16"),
    ({"preference": [1, 0], "seed": -1}, "seed", "greater than or equal to 0"),
    ({"preference": [1, 0], "prompt": "x" * 2001}, "prompt", "has 2001 characters; the limit is 2000"),
    ({"preference": [1, 0], "source_image": "not an image!"}, "source_image", "not a base64 PNG or JPEG"),
    ({"preference": [1, 0], "source_image": base64.b64encode(b"GIF89a garbage").decode()}, "source_image",
     "not a base64 PNG or JPEG"),
    ({"preference": [1, 0], "source_image": png_base64(600)}, "source_image", "the limit is 512 pixels"),
    ({"preference": [1, 0], "source_image": png_base64(8)}, "source_image", "takes no source image"),
    ({"preference": [1, 0], "frames": True}, "frames", "this toy2d model makes points, not videos"),
    ({"preference": [1, 0], "temperature": 2}, "temperature", "Extra inputs"),
    ("{not json", None, "Invalid JSON"),
]


@pytest.mark.parametrize("body, field, message", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_422_naming_the_field(url, body, field, message):
    assert_422_names(post(url, body), field, message)


def test_oversized_body_is_413_chunked_or_not(url):
    body = json.dumps({"preference": [1, 0], "prompt": "x" * MAX_BODY}).encode()
    r = post(url, body)
    assert r.status_code == 413 and "over the limit" in r.json()["detail"][0]["msg"]
    r = post(url, iter([body[i:i + 4096] for i in range(0, len(body), 4096)]))  # chunked: no length
    assert r.status_code == 413, r.text
    assert post(url, {"preference": [1, 0]}).status_code == 200  # the replica is still fine


def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(url, model):
    before = requests.get(f"{url}/healthz", timeout=10).json()
    jobs = [((i % 5) / 4, 1 - (i % 5) / 4, i) for i in range(32)]

    def call(job):
        wa, wb, seed = job
        return post(url, {"preference": [wa, wb], "seed": seed})

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, jobs))
    assert time.monotonic() - start < 120
    for (wa, wb, seed), r in zip(jobs, answers):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["points"], expected(model, (wa, wb), seed), atol=1e-5)
    after = requests.get(f"{url}/healthz", timeout=10).json()
    requests_served, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests_served == 32
    assert batches < 32, f"{batches} batches for 32 concurrent requests: nothing was batched"


# ---- the page in a real browser -------------------------------------------------------------------
def test_page_slider_changes_the_picture(url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(url + "/")
    token = wait.until(lambda d: d.find_element(By.ID, "token") if d.find_element(By.ID, "token").is_displayed()
                       else None)
    token.send_keys(TOKEN, Keys.TAB)  # 'change' fires on blur: the page then loads the objectives

    image = browser.find_element(By.ID, "output")
    wait.until(lambda d: image.get_attribute("data-generation") != "0")
    assert json.loads(image.get_attribute("data-preference")) == {"target_a": 0.5, "target_b": 0.5}
    sliders = browser.find_elements(By.CSS_SELECTOR, "#sliders input[type=range]")
    assert [s.get_attribute("data-objective") for s in sliders] == ["target_a", "target_b"]
    assert browser.find_element(By.ID, "prompt").get_attribute("disabled") is not None  # toy2d: no prompt
    before = image.get_attribute("src")
    browser.save_screenshot(str(tmp_path / "before.png"))

    sliders[0].send_keys(Keys.END)  # drag target_a all the way: target_b must drop to 0 (simplex)
    wait.until(lambda d: json.loads(image.get_attribute("data-preference") or "{}") == {"target_a": 1.0,
                                                                                       "target_b": 0.0})
    assert sliders[1].get_attribute("value") == "0"
    after = image.get_attribute("src")
    assert after != before
    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))) for src in (before, after)]
    changed = (np.abs(pixels[0].astype(int) - pixels[1].astype(int)).sum(-1) > 0).mean()
    assert changed > 0.005, f"only {changed:.2%} of the pixels changed"
    assert browser.find_element(By.ID, "error").text == ""


def test_docs_page_renders_the_operations_offline(url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/docs")
    wait = WebDriverWait(browser, 60)
    generate = wait.until(lambda d: d.find_elements(
        By.CSS_SELECTOR, ".opblock-post .opblock-summary-path[data-path='/v1/generate']"))
    assert generate[0].text.replace("\u200b", "") == "/v1/generate"
    paths = {e.get_attribute("data-path") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/generate", "/v1/objectives", "/healthz"} <= paths
    assert "ParetoSlider" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(url + "/") for name in loaded), loaded

"""The model directory with a hub base: pinned by id, commit and per-file sha256 on the registering
host, fetched through the hub cache and checked on the serving host (an emulated hub cache, offline:
``models--ORG--NAME/{refs/main, snapshots/COMMIT/...}``, as ``huggingface_hub`` lays it out)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

from image_slider_run import PROMPT, no_model_in_the_driver, write_image_run
from infra.config import dump_config
from pipelines.slider_artifact import RunWeights, write_model_dir
from pipelines.slider_model import SliderModel
from pipelines.slider_requests import GenerationSpec

REPO = "tiny-org/tiny-sd3"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, pipeline: Path, extra_root_file: bool = False) -> Path:
    """A hub cache under ``root`` holding ``pipeline`` as ``REPO`` at ``COMMIT`` (``main`` points there)."""
    repo = root / "models--tiny-org--tiny-sd3"
    shutil.copytree(pipeline, repo / "snapshots" / COMMIT)
    if extra_root_file:  # like SD3.5's single-file checkpoint next to the diffusers folders
        (repo / "snapshots" / COMMIT / "single_file.safetensors").write_bytes(b"not part of the pipeline")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


@pytest.fixture
def offline_cache(monkeypatch):
    def use(cache: Path) -> None:
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    return use


@pytest.fixture
def hub_run(tiny_pipeline, tmp_path):
    """A tiny SD3 run whose config names its base by hub id, and the same run on the local directory."""
    base = tiny_pipeline("sd3")
    local = write_image_run("sd3", base, tmp_path / "local")
    hub = local.model_copy(update={"model": local.model.model_copy(update={
        "diffusers": local.model.diffusers.model_copy(update={"pretrained": REPO})})})
    (Path(local.run_dir) / "config.yaml").write_text(dump_config(hub))
    return hub, base


def test_a_hub_base_is_pinned_fetched_and_checked_on_the_serving_host(hub_run, tmp_path, offline_cache):
    cfg, base = hub_run
    offline_cache(hub_cache(tmp_path / "registering", base, extra_root_file=True))
    manifest = write_model_dir(RunWeights.read(cfg.run_dir), Path(cfg.run_dir), tmp_path / "slider")
    entry = manifest["base"]
    assert (entry["kind"], entry["id"], entry["revision"]) == ("hub", REPO, COMMIT)
    want = {f.relative_to(base).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in base.rglob("*") if f.is_file()}
    assert entry["files"] == want  # every pipeline file, not the root's single-file checkpoint
    assert not (tmp_path / "slider" / "base").exists()
    assert json.loads((tmp_path / "slider" / "slider.json").read_text())["base"] == entry

    # Another host: its own cache holds the same commit; the model loads from there, same images.
    offline_cache(hub_cache(tmp_path / "serving", base))
    served = SliderModel.from_model_dir(tmp_path / "slider")
    assert Path(served.base) == tmp_path / "serving" / "models--tiny-org--tiny-sd3" / "snapshots" / COMMIT
    # The reference: the same EMA tensors on the pipeline directory itself, no hub involved.
    twin = cfg.model_copy(update={"model": cfg.model.model_copy(update={
        "diffusers": cfg.model.diffusers.model_copy(update={"pretrained": str(base)})})})
    run = RunWeights.read(cfg.run_dir)
    reference = SliderModel(twin, run.ema, base, served.objectives, run.step, None)
    specs = [GenerationSpec((1.0, 0.0), 3, 3, 1, PROMPT["sd3"]), GenerationSpec((0.2, 0.8), 4, 3, 1, PROMPT["sd3"])]
    for a, b in zip(served.generate(specs), reference.generate(specs)):
        np.testing.assert_array_equal(a, b)


def test_a_missing_or_changed_hub_base_names_what_is_wrong(hub_run, tmp_path, offline_cache):
    cfg, base = hub_run
    offline_cache(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=rf"hub base {REPO} at revision main .* not in this host's hub "
                                                r"cache.*hf download"):
        write_model_dir(RunWeights.read(cfg.run_dir), Path(cfg.run_dir), tmp_path / "slider")

    offline_cache(hub_cache(tmp_path / "registering", base))
    write_model_dir(RunWeights.read(cfg.run_dir), Path(cfg.run_dir), tmp_path / "slider")
    offline_cache(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=rf"hub base {REPO} at revision {COMMIT} .* cannot be fetched"):
        SliderModel.from_model_dir(tmp_path / "slider")

    serving = hub_cache(tmp_path / "serving", base)
    snapshot = serving / "models--tiny-org--tiny-sd3" / "snapshots" / COMMIT
    (snapshot / "vae" / "config.json").unlink()
    offline_cache(serving)
    with pytest.raises(FileNotFoundError, match=r"1 file\(s\) missing .*\['vae/config.json'\]"):
        SliderModel.from_model_dir(tmp_path / "slider")
    shutil.copy(base / "vae" / "config.json", snapshot / "vae" / "config.json")
    (snapshot / "scheduler" / "scheduler_config.json").write_text('{"changed": true}')
    with pytest.raises(ValueError, match=r"\['scheduler/scheduler_config.json'\] .* differ from the files"):
        SliderModel.from_model_dir(tmp_path / "slider")


def test_register_and_serve_read_no_model_in_the_driver(tiny_pipeline, tmp_path, monkeypatch):
    """The driver's part of ``register`` and ``serve`` copies tensors and files: building the base fails
    here, and both still work; the copied trainable tensors are the checkpoint's EMA, bit for bit."""
    import io
    import tarfile

    import torch

    from pipelines.serve import model_source

    cfg = write_image_run("sd3", tiny_pipeline("sd3"), tmp_path)

    no_model_in_the_driver(monkeypatch)
    write_model_dir(RunWeights.read(cfg.run_dir), Path(cfg.run_dir), tmp_path / "slider")
    (checkpoint,) = (Path(cfg.run_dir) / "checkpoints").glob("step_*.pt")  # the run's one checkpoint
    ema = torch.load(checkpoint, weights_only=True)["weights"]["ema"]
    copied = torch.load(tmp_path / "slider" / "trainable.pt", weights_only=True)
    assert copied.keys() == ema.keys() and all(torch.equal(copied[k], ema[k]) for k in ema)

    source, packed = model_source(cfg.run_dir, None)
    assert source.uri is None and packed is not None
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        names = set(tar.getnames())
    assert {"slider/slider.json", "slider/trainable.pt", "slider/config.yaml", "slider/base/model_index.json"} <= names


def test_every_model_kind_has_an_inference_contract():
    """Training registers every run (video included): each ``model.kind`` must be servable."""
    from typing import get_args

    from infra.config import ModelConfig
    from pipelines.slider_artifact import MODEL_IO, model_io

    assert set(MODEL_IO) == set(get_args(ModelConfig.model_fields["kind"].annotation))
    assert model_io("ltx2").output_kind == "video"
    with pytest.raises(ValueError, match=r"model.kind 'gan' has no inference contract yet; known: \['flux_kontext'"):
        model_io("gan")


def test_a_missing_local_base_is_not_taken_for_a_hub_id(hub_run, tmp_path):
    cfg, base = hub_run
    from pipelines.slider_artifact import is_hub_id, local_base

    def pretrained(value: str):
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={
            "diffusers": cfg.model.diffusers.model_copy(update={"pretrained": value})})})

    assert is_hub_id(pretrained(REPO)) and not is_hub_id(pretrained(str(base)))
    missing = pretrained(str(tmp_path / "missing" / "base"))
    assert not is_hub_id(missing)
    with pytest.raises(FileNotFoundError, match=r"\(model.diffusers.pretrained of .*config.yaml\) is not a diffusers "
                                                r"directory \(no model_index.json\) nor a hub id"):
        local_base(missing, tmp_path / "config.yaml")

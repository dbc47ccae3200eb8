"""Image sliders (tiny SD3 text-to-image, tiny FLUX.1 Kontext editing) as ``SliderModel``s: loading
from a run directory and from an exported model directory, pinning the base directory, checked
inputs, and generation that follows the preference and the seed, not the batch."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from image_slider_run import PROMPT, STEP, source_png, write_image_run
from infra.config import dump_config
from pipelines.registry import load_slider
from pipelines.slider_artifact import RunWeights, write_model_dir
from pipelines.slider_model import SliderModel
from pipelines.slider_requests import GenerationSpec, InvalidRequest

KINDS = ["sd3", "flux_kontext"]


@pytest.fixture(scope="module")
def runs(tiny_pipeline, tmp_path_factory):
    """``runs(kind)``: (config, model loaded from the run directory), built once per kind."""
    built = {}

    def get(kind: str):
        if kind not in built:
            cfg = write_image_run(kind, tiny_pipeline(kind), tmp_path_factory.mktemp(f"{kind}-run"))
            built[kind] = cfg, SliderModel.from_run_dir(cfg.run_dir)
        return built[kind]

    return get


def export(cfg, out: Path) -> Path:
    write_model_dir(RunWeights.read(cfg.run_dir), Path(cfg.run_dir), out)
    return out


def tree_sha256(directory: Path) -> str:
    """sha256 over ``relative path NUL sha256(bytes) LF`` of every file, sorted: computed here, not by
    the code under test (``infra.checkpoint.content_sha256``)."""
    entries = sorted((f.relative_to(directory).as_posix(), hashlib.sha256(f.read_bytes()).hexdigest())
                     for f in directory.rglob("*") if f.is_file())
    return hashlib.sha256("".join(f"{p}\0{h}\n" for p, h in entries).encode()).hexdigest()


def spec(model: SliderModel, w, seed: int = 0, steps: int = 3, prompt: str | None = None) -> GenerationSpec:
    kind = model.cfg.model.kind
    source = model.check_inputs(PROMPT[kind], source_png(seed=seed)) if kind == "flux_kontext" else None
    return GenerationSpec(tuple(w), seed, steps, 1, PROMPT[kind] if prompt is None else prompt, source)


@pytest.mark.parametrize("kind", KINDS)
def test_run_dir_and_model_dir_give_identical_images(runs, kind, tmp_path):
    cfg, model = runs(kind)
    assert model.io.output_kind == "image" and model.step == STEP
    assert model.objective_labels == [o.label for o in cfg.rewards.objectives]
    exported = SliderModel.from_model_dir(export(cfg, tmp_path / "slider"))
    assert load_slider(tmp_path / "slider").objectives == exported.objectives == model.objectives
    specs = [spec(model, (1.0, 0.0), seed=3), spec(model, (0.3, 0.7), seed=4)]
    a, b = model.generate(specs), exported.generate(specs)
    for x, y in zip(a, b):
        assert x.shape == (1, 32, 32, 3) and x.dtype == np.uint8
        np.testing.assert_array_equal(x, y)
    manifest = json.loads((tmp_path / "slider" / "slider.json").read_text())
    # The base travels inside the model directory, byte for byte the trained one.
    assert manifest["base"] == {"kind": "bundled", "path": "base", "sha256": tree_sha256(Path(cfg.pretrain.checkpoint))}
    assert tree_sha256(tmp_path / "slider" / "base") == tree_sha256(Path(cfg.pretrain.checkpoint))
    assert exported.base == tmp_path / "slider" / "base"
    assert manifest["uses_prompt"] is True and manifest["uses_source_image"] is (kind == "flux_kontext")


@pytest.mark.parametrize("kind", KINDS)
def test_the_preference_changes_the_image_and_the_seed_not_the_batch(runs, kind):
    _, model = runs(kind)
    specs = [spec(model, (1.0, 0.0), seed=1), spec(model, (0.0, 1.0), seed=1), spec(model, (0.5, 0.5), seed=2)]
    together = model.generate(specs)
    alone = [model.generate([s])[0] for s in specs]
    for a, b in zip(together, alone):
        # Batched float kernels round differently: at most one level in a few pixels.
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    corners = np.abs(together[0].astype(int) - together[1].astype(int))
    assert corners.mean() > 2, f"w=(1,0) and w=(0,1) differ by {corners.mean():.2f} levels on average"
    other_seed = model.generate([spec(model, (1.0, 0.0), seed=9)])[0]
    if kind == "sd3":  # Kontext's source image changes with the seed here too; SD3 only has the noise
        assert np.abs(other_seed.astype(int) - together[0].astype(int)).mean() > 2


def test_missing_prompt_or_source_image_names_the_field(runs):
    _, kontext = runs("flux_kontext")
    with pytest.raises(InvalidRequest) as err:
        kontext.check_inputs("make the square blue", None)
    assert err.value.field == "source_image" and "is required" in err.value.message
    with pytest.raises(InvalidRequest) as err:  # generate checks the specs it is given too
        kontext.generate([GenerationSpec((1.0, 0.0), 0, 3, 1, "make the square blue")])
    assert err.value.field == "source_image"
    with pytest.raises(InvalidRequest) as err:
        kontext.check_inputs("  ", source_png())
    assert err.value.field == "prompt" and "is required" in err.value.message
    with pytest.raises(InvalidRequest) as err:
        kontext.check_inputs("make it red", source_png(size=600), max_side=512)
    assert err.value.field == "source_image" and "the limit is 512" in err.value.message

    _, sd3 = runs("sd3")
    with pytest.raises(InvalidRequest) as err:
        sd3.generate([GenerationSpec((1.0, 0.0), 0, 3, 1, "")])
    assert err.value.field == "prompt"
    with pytest.raises(InvalidRequest) as err:
        sd3.check_inputs("a red circle", source_png())
    assert err.value.field == "source_image" and "takes no source image" in err.value.message


def test_source_image_is_rgb_at_the_models_size(runs):
    _, kontext = runs("flux_kontext")
    source = kontext.check_inputs("make it red", "data:image/png;base64," + source_png(size=48))
    assert source.shape == (32, 32, 3) and source.dtype == np.float32
    assert 0 <= source.min() and source.max() <= 1
    np.testing.assert_allclose(source[0, 0], 128 / 255, atol=1e-6)  # the grey border survives the resize


def test_a_changed_or_missing_bundled_base_is_refused(runs, tmp_path):
    cfg, _ = runs("sd3")
    exported = export(cfg, tmp_path / "slider")
    (exported / "base" / "scheduler" / "scheduler_config.json").write_text('{"changed": true}')
    with pytest.raises(ValueError, match=r"base .*slider/base changed since the model was exported"):
        SliderModel.from_model_dir(exported)
    shutil.rmtree(exported / "base")
    with pytest.raises(FileNotFoundError, match=r"base .*slider/base named by .*slider.json not found"):
        SliderModel.from_model_dir(exported)


def test_a_run_whose_base_directory_is_missing_names_the_field(runs, tmp_path):
    cfg, _ = runs("sd3")
    run = shutil.copytree(cfg.run_dir, tmp_path / "run")
    gone = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"checkpoint": str(tmp_path / "gone")})})
    (run / "config.yaml").write_text(dump_config(gone))
    with pytest.raises(FileNotFoundError, match=r"\(pretrain.checkpoint of .*config.yaml\) is not a diffusers directory"):
        SliderModel.from_run_dir(run)


@pytest.mark.parametrize("kind", KINDS)
def test_register_cli_then_pyfunc_predict_gives_the_images(tiny_pipeline, runs, kind, tmp_path):
    import mlflow.pyfunc
    import pandas as pd
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from pipelines.cli import app

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("images", artifact_location=str(tmp_path / "mlartifacts")))
    cfg = write_image_run(kind, tiny_pipeline(kind), tmp_path, mlflow_run_id=run.info.run_id)
    result = CliRunner().invoke(app, ["register", cfg.run_dir, "--name", f"{kind}-slider"])
    assert result.exit_code == 0, result.output
    assert f"registered models:/{kind}-slider/1" in result.output

    pyfunc = mlflow.pyfunc.load_model(client.get_model_version(f"{kind}-slider", "1").source)
    rows = {"prompt": [PROMPT[kind]] * 2, "preference": [[2.0, 0.0], [1.0, 3.0]], "seed": [3, 4]}
    if kind == "flux_kontext":
        rows["source_image"] = [source_png(seed=3), source_png(seed=4)]
    out = pyfunc.predict(pd.DataFrame(rows))
    assert out["preference"].tolist() == [[1.0, 0.0], [0.25, 0.75]]
    _, model = runs(kind)  # the same weights (same seeds), loaded from another run directory
    want = model.generate([spec(model, (1.0, 0.0), seed=3), spec(model, (0.25, 0.75), seed=4)])
    for got, w in zip(out["samples"], want):
        got = np.asarray(got, dtype=np.uint8)
        assert got.shape == (1, 32, 32, 3)
        assert np.abs(got.astype(int) - w.astype(int)).max() <= 1

    missing = {"prompt": [""], "preference": [[1.0, 0.0]]}
    with pytest.raises(InvalidRequest, match="prompt: is required"):
        pyfunc.predict(pd.DataFrame(missing))

"""The trained slider after training: registered in MLflow, loaded back identically, checked inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipelines.registry import load_slider
from pipelines.slider_artifact import RunWeights, write_model_dir
from pipelines.slider_model import SliderModel
from pipelines.slider_requests import GenerationSpec, InvalidRequest
from slider_run import MODEL_NAME, cfg, model, target  # noqa: F401 - cfg, model: fixtures


SPECS = [GenerationSpec((1.0, 0.0), seed=3, steps=4, num_samples=64),
         GenerationSpec((0.0, 1.0), seed=3, steps=4, num_samples=64),
         GenerationSpec((0.3, 0.7), seed=9, steps=7, num_samples=5)]


def test_training_registers_a_model_that_loads_back_identically(cfg, model):
    client = MlflowClient(cfg.tracking.tracking_uri)
    version = client.get_model_version(MODEL_NAME, "1")
    run = client.get_run(version.run_id)
    assert run.data.tags["paretoslider.registered_model"] == f"models:/{MODEL_NAME}/1"
    assert run.info.status == "FINISHED"

    registered = load_slider(f"models:/{MODEL_NAME}/1", cfg.tracking.tracking_uri)
    assert registered.objective_labels == ["target_a", "target_b"] == model.objective_labels
    assert registered.step == model.step == 40
    for a, b in zip(model.generate(SPECS), registered.generate(SPECS)):
        np.testing.assert_array_equal(a, b)

    pyfunc = mlflow.pyfunc.load_model(version.source)
    out = pyfunc.predict(pd.DataFrame({"prompt": ["", ""], "preference": [[2.0, 0.0], [0.0, 1.0]],
                                       "seed": [3, 3], "steps": [4, 4]}), params={"num_samples": 64})
    assert out["preference"].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    np.testing.assert_array_equal(np.asarray(out["samples"][0], dtype=np.float32), model.generate(SPECS[:1])[0])


def test_the_slider_moves_samples_between_targets(cfg, model):
    at_a, at_b = (out.mean(0) for out in model.generate(SPECS[:2]))
    a, b = target(cfg, "target_a"), target(cfg, "target_b")
    # The targets are 5.7 apart; each corner of the slider pulls its samples towards its own target.
    assert np.linalg.norm(at_a - a) + 1.5 < np.linalg.norm(at_b - a)
    assert np.linalg.norm(at_b - b) + 1.5 < np.linalg.norm(at_a - b)


def test_outputs_depend_on_seed_not_on_batching(model):
    together = model.generate(SPECS)
    alone = [model.generate([s])[0] for s in SPECS]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert together[2].shape == (5, 2)
    other_seed = model.generate([GenerationSpec((1.0, 0.0), seed=4, steps=4, num_samples=64)])[0]
    assert np.abs(other_seed - together[0]).max() > 0.1


@pytest.mark.parametrize("value, message", [
    ([1.0, -0.5], "weights must be finite and >= 0"),
    ([float("nan"), 1.0], "weights must be finite and >= 0"),
    ([float("inf"), 1.0], "weights must be finite and >= 0"),
    ([1.0], "needs 2 weights, one per objective"),
    ([0.2, 0.3, 0.5], "needs 2 weights"),
    ({"target_c": 1.0}, "unknown objective(s) ['target_c']"),
    ([0.0, 0.0], "at least one weight must be > 0"),
    (["a", 1.0], "must be 2 numbers"),
])
def test_bad_preferences_name_the_field(model, value, message):
    with pytest.raises(InvalidRequest) as err:
        model.check_preference(value)
    assert err.value.field == "preference" and message in err.value.message


def test_preferences_are_put_on_the_simplex(model):
    assert model.check_preference([3, 1]) == (0.75, 0.25)
    assert model.check_preference({"target_b": 2.0}) == (0.0, 1.0)


def export(cfg, out: Path) -> Path:
    write_model_dir(RunWeights.read(cfg.run_dir), Path(cfg.run_dir), out)
    return out


def test_register_cli_and_model_dir(cfg, model, tmp_path):
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["register", cfg.run_dir, "--name", "toy2d-cli"])
    assert result.exit_code == 0, result.output
    assert "registered models:/toy2d-cli/1" in result.output
    exported = export(cfg, tmp_path / "slider")
    np.testing.assert_array_equal(load_slider(exported).generate(SPECS[:1])[0], model.generate(SPECS[:1])[0])


def test_a_changed_base_is_refused(cfg, tmp_path):
    exported = export(cfg, tmp_path / "slider")
    manifest = json.loads((exported / "slider.json").read_text())
    bundled = exported / manifest["base"]["path"]
    assert bundled.read_bytes() == Path(cfg.pretrain.checkpoint).read_bytes()
    with bundled.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="changed since the model was exported"):
        SliderModel.from_model_dir(exported)


def test_a_format_1_model_directory_still_loads(cfg, model, tmp_path):
    """Models registered before bases travelled: the manifest named the base by absolute path."""
    exported = export(cfg, tmp_path / "slider")
    manifest = json.loads((exported / "slider.json").read_text())
    bundled = exported / manifest.pop("base")["path"]
    bundled.unlink()
    base = Path(cfg.pretrain.checkpoint)
    manifest.update(format=1, base_checkpoint=str(base), base_kind="file",
                    base_sha256=hashlib.sha256(base.read_bytes()).hexdigest())
    (exported / "slider.json").write_text(json.dumps(manifest))
    old = SliderModel.from_model_dir(exported)
    assert Path(old.base) == base
    np.testing.assert_array_equal(old.generate(SPECS[:1])[0], model.generate(SPECS[:1])[0])
    manifest["format"] = 3
    (exported / "slider.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"format 3, this code reads formats \[1, 2\]"):
        SliderModel.from_model_dir(exported)


def test_the_registered_model_serves_without_the_run_or_its_base(cfg, model, tmp_path, monkeypatch):
    """Registered, then the run directory and the base moved away: ``models:/`` still gives the same
    samples from a fresh working directory (the base travels inside the artifact)."""
    import mlflow.pyfunc

    want = model.generate(SPECS)
    run_dir, base = Path(cfg.run_dir), Path(cfg.pretrain.checkpoint)
    away = tmp_path / "away"
    away.mkdir()
    monkeypatch.chdir(tmp_path)  # fresh working directory
    shutil.move(run_dir, away / "run")
    shutil.move(base, away / "base.pt")
    try:
        assert not run_dir.exists() and not base.exists()
        registered = load_slider(f"models:/{MODEL_NAME}/1", cfg.tracking.tracking_uri)
        assert Path(registered.base).read_bytes() == (away / "base.pt").read_bytes()  # the trained base, carried
        for a, b in zip(want, registered.generate(SPECS)):
            np.testing.assert_array_equal(a, b)
        source = MlflowClient(cfg.tracking.tracking_uri).get_model_version(MODEL_NAME, "1").source
        out = mlflow.pyfunc.load_model(source).predict(
            pd.DataFrame({"preference": [[1.0, 0.0]], "seed": [3], "steps": [4]}), params={"num_samples": 64})
        np.testing.assert_array_equal(np.asarray(out["samples"][0], dtype=np.float32), want[0])
    finally:  # the session's other tests share the run
        shutil.move(away / "run", run_dir)
        shutil.move(away / "base.pt", base)

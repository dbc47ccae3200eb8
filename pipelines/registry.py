"""The trained slider in the MLflow model registry: log it as a pyfunc model, register it, load it.

``register_model`` writes the run's model directory (``pipelines.slider_artifact``: the EMA
tensors and the base, copied without loading the model) into the run's artifacts as an MLflow
pyfunc model and registers a new version under a name. The pyfunc flavour is
"models from code" (``pipelines/slider_pyfunc.py``): nothing is pickled, loading it imports this
package. ``load_slider`` takes ``models:/NAME/VERSION``, ``runs:/ID/slider_model``, an exported
model directory or a training run directory, and gives the same model for each.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from infra.config import Config
from infra.tracking import resolve_tracking_uri  # first: it switches MLflow's telemetry off

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from pipelines.slider_artifact import MANIFEST, RunWeights, write_model_dir
from pipelines.slider_model import SliderModel
from pipelines.slider_requests import GenerationSpec

MODEL_ARTIFACT = "slider_model"
"""Artifact path of the pyfunc model inside the training run."""
SLIDER_ARTIFACT = "slider"
"""Key (and directory) of the exported slider inside the pyfunc model's artifacts."""
PYFUNC_CODE = Path(__file__).with_name("slider_pyfunc.py")


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec("string", "prompt", required=False), ColSpec(Array("double"), "preference"),
                     ColSpec("long", "seed", required=False), ColSpec("long", "steps", required=False),
                     ColSpec("string", "source_image", required=False)])
    params = ParamSchema([ParamSpec("num_samples", "long", 0)])
    return ModelSignature(inputs=inputs, params=params)


class SliderPyfunc(PythonModel):
    """``predict`` takes rows of ``{prompt, preference, seed, steps, source_image}`` and returns, per
    row, the preference used (on the simplex) and the generated samples (``num_samples`` param; 0 =
    the serving default: ``serve.points_per_request`` points for point-cloud models, else 1).

    ``samples`` is what ``SliderModel.generate`` gives, as nested lists: ``[n, 2]`` floats for point
    clouds, ``[n, H, W, 3]`` uint8 for images. ``prompt`` is required by image models and
    ``source_image`` (base64 PNG or JPEG) by editing models, as on the endpoint."""

    def load_context(self, context) -> None:
        self.slider = SliderModel.from_model_dir(context.artifacts[SLIDER_ARTIFACT])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        rows = pd.DataFrame(model_input).to_dict("records")
        specs = [self.spec(row, (params or {}).get("num_samples", 0)) for row in rows]
        outputs = self.slider.generate(specs)
        return pd.DataFrame({"preference": [list(s.preference) for s in specs],
                             "samples": [o.tolist() for o in outputs]})

    def spec(self, row: dict[str, Any], num_samples: int) -> GenerationSpec:
        slider = self.slider
        if not num_samples:
            num_samples = slider.cfg.serve.points_per_request if slider.io.output_kind == "points" else 1
        prompt, source = str(_or(row.get("prompt"), "")), _or(row.get("source_image"), None)
        return GenerationSpec(preference=slider.check_preference(list(row["preference"])),
                              seed=int(_or(row.get("seed"), 0)), steps=int(_or(row.get("steps"), slider.default_steps)),
                              num_samples=int(num_samples), prompt=prompt,
                              source_image=slider.check_inputs(prompt, None if source is None else str(source)))


def _or(value: Any, default: Any) -> Any:
    """``value``, or ``default`` where a DataFrame cell is missing (None / NaN)."""
    return default if value is None or (isinstance(value, float) and np.isnan(value)) else value


def register_model(run_dir: str | Path, name: str | None = None, tracking_uri: str | None = None):
    """Log the run's EMA model into its MLflow run as a pyfunc model and register a new version.

    ``name`` defaults to ``registry.model_name`` or the job's ``name``; ``tracking_uri`` to the
    run's ``tracking.tracking_uri``. Returns the ``ModelVersion``.
    """
    import mlflow.pyfunc

    run = RunWeights.read(run_dir)
    cfg: Config = run.cfg
    uri = resolve_tracking_uri(tracking_uri or cfg.tracking.tracking_uri)
    client = MlflowClient(uri)
    if run.mlflow_run_id is None:
        raise ValueError(f"run directory {run_dir} names no MLflow run in its checkpoint")
    try:
        mlflow_run = client.get_run(run.mlflow_run_id)
    except MlflowException:
        raise ValueError(f"MLflow run {run.mlflow_run_id} of {run_dir} is not in {uri}; "
                         "pass the tracking URI the run was logged to") from None
    name = name or cfg.registry.model_name or cfg.name
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_model_dir(run, Path(run_dir), Path(tmp) / SLIDER_ARTIFACT)
        labels = [o["label"] for o in manifest["objectives"]]
        with warnings.catch_warnings():
            # An input example would make MLflow load and run the model while saving it.
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            mlflow.pyfunc.save_model(
                Path(tmp) / MODEL_ARTIFACT, python_model=str(PYFUNC_CODE),
                artifacts={SLIDER_ARTIFACT: str(Path(tmp) / SLIDER_ARTIFACT)}, signature=_signature(),
                # Listed, not inferred: inference would load the model in a subprocess to trace imports.
                pip_requirements=["paretoslider", f"mlflow=={mlflow.__version__}"],
                metadata={"objectives": labels, "model_kind": cfg.model.kind, "step": run.step,
                          "base": {k: v for k, v in manifest["base"].items() if k != "files"}},
            )
        client.log_artifacts(mlflow_run.info.run_id, str(Path(tmp) / MODEL_ARTIFACT), MODEL_ARTIFACT)
    try:
        client.create_registered_model(name, description="ParetoSlider: one model, a slider over rewards")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(
        name, source=f"{mlflow_run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=mlflow_run.info.run_id,
        description=f"step {run.step}, objectives {labels}")


def is_uri(source: str | Path) -> bool:
    text = str(source)
    return "://" in text or text.startswith("models:/") or text.startswith("runs:/")


def artifact_uri(source: str, tracking_uri: str | None = None) -> str:
    """The artifact URI of a ``models:/NAME/VERSION`` (or any other MLflow model URI, unchanged)."""
    if not source.startswith("models:/"):
        return source
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    # Resolved here: MLflow's models:/ download ignores an explicit registry URI.
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        return client.get_model_version_download_uri(*get_model_name_and_version(client, source))
    except MlflowException as err:
        raise ValueError(f"{source} is not in the model registry at {uri}: {err.message}") from None


def download_model_dir(uri: str, tracking_uri: str | None, dst: str | Path | None = None,
                       manifest_only: bool = False) -> Path:
    """Download the slider model directory of a pyfunc model's artifact URI (to ``dst``, else a temp
    directory); ``manifest_only`` fetches just its manifest, to check a source without the weights."""
    import mlflow.artifacts

    inner = f"artifacts/{SLIDER_ARTIFACT}" + (f"/{MANIFEST}" if manifest_only else "")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/{inner}",
                                                    tracking_uri=resolve_tracking_uri(tracking_uri),
                                                    dst_path=None if dst is None else str(dst))
    except (MlflowException, OSError) as err:
        raise FileNotFoundError(f"{uri} has no slider model ({inner}): {err}") from None
    return Path(local).parent if manifest_only else Path(local)


def local_model_dir(path: Path) -> Path | None:
    """The model directory at ``path``: itself, or the slider inside a saved pyfunc model; None if neither."""
    for candidate in (path, path / "artifacts" / SLIDER_ARTIFACT):
        if (candidate / MANIFEST).is_file():
            return candidate
    return None


def load_slider(source: str | Path, tracking_uri: str | None = None) -> SliderModel:
    """A ``SliderModel`` from a registry/run URI, an exported model directory or a run directory."""
    if is_uri(source):
        return SliderModel.from_model_dir(download_model_dir(artifact_uri(str(source), tracking_uri), tracking_uri))
    path = Path(source)
    if (model_dir := local_model_dir(path)) is not None:
        return SliderModel.from_model_dir(model_dir)
    if (path / "config.yaml").is_file():
        return SliderModel.from_run_dir(path)
    raise FileNotFoundError(f"{source} is neither a models:/ or runs:/ URI, an exported slider model "
                            f"({MANIFEST}) nor a training run directory (config.yaml + checkpoints/)")

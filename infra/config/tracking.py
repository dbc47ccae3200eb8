"""``tracking`` and ``registry``: MLflow runs and registered models."""

from __future__ import annotations

from pydantic import Field

from infra.config.base import Strict


class TrackingConfig(Strict):
    """MLflow tracking."""

    tracking_uri: str | None = None
    """None: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the working directory."""
    experiment: str = "paretoslider"
    """MLflow experiment the run is logged in."""
    run_name: str | None = None
    """MLflow run name (None: the job's ``name``)."""
    system_metrics: bool = False
    """Log CPU, memory and, where one exists, GPU figures of the driver, each learner rank, rollout actor
    and reward replica into the run as ``system/<role>/...`` (MLflow's system-metrics monitor: one
    thread per process and one small ``log_batch`` per sample). Off by default: importing MLflow costs
    each worker about 130 MB and a second at start, ~0.5 GB on the laptop toy2d job; small beside a
    policy copy, so the GPU presets turn it on."""
    system_metrics_interval_s: float = Field(10.0, gt=0)
    """Seconds between two system-metrics samples of each role."""


class RegistryConfig(Strict):
    """The trained model in the MLflow model registry (``paretoslider register``)."""

    model_name: str | None = None
    """Registered-model name; None uses the job's ``name``."""
    register_on_finish: bool = True
    """Log the EMA model as an MLflow pyfunc model and register it when ``train`` finishes."""

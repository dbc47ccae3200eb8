"""Plumbing used by every role: config, Ray start-up, tracking, checkpoints, distributed set-up."""

import os

# MLflow starts a telemetry thread at import time that calls out to the internet; this project
# runs on machines without it. Set before anything imports mlflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

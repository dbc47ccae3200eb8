"""MLflow tracking for one training job: one run, resumed by id after a crash.

Everything goes through an explicit ``MlflowClient`` and run id, never the fluent
``mlflow.start_run`` state, so a driver that also runs Ray, Serve and evaluation has no hidden
"active run" to trip over. Params (the flattened config) are logged once, when the run is
created; MLflow refuses to change a param, so a resumed run logs the config it resumed with as a
new ``config_resume_<n>.yaml`` artifact and warns about the keys that differ.

Training metrics are *staged* and reach MLflow only when a checkpoint holds the training they
measure (:meth:`Tracker.stage_metrics`, :meth:`Tracker.commit_metrics`): MLflow's metric history is
append-only (no store, SQLite or server, can delete an entry), so metrics logged live for steps
after the last checkpoint would stay in the history next to the values of the steps trained again
after a crash and ``--resume``. The staged entries travel in the checkpoint, so a crash between
writing the checkpoint and committing loses none (:meth:`Tracker.log_missing_metrics` on resume).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from infra.config import Config, dump_config, flat_params

# MLflow starts its telemetry client (a thread that contacts mlflow.org) on ``import mlflow``, so
# the switch goes before our first import; an explicit MLFLOW_DISABLE_TELEMETRY=false still wins.
_MLFLOW_PRELOADED = "mlflow" in sys.modules
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: E402
from mlflow.entities.lifecycle_stage import LifecycleStage  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.telemetry import set_telemetry_client  # noqa: E402
from mlflow.utils.validation import MAX_METRICS_PER_BATCH  # noqa: E402

if _MLFLOW_PRELOADED:
    set_telemetry_client()  # re-reads the switch; drops the client an earlier import started

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from infra.system_metrics import RoleSystemMetrics, SystemMetricsTarget

logger = logging.getLogger(__name__)

END_STATUSES = ("FINISHED", "FAILED", "KILLED")
RESUME_COUNT_TAG = "paretoslider.resume_count"

StagedMetric = tuple[str, int, float, int]
"""``(key, step, value, timestamp ms)``: plain values, so a checkpoint can hold it."""


def resolve_tracking_uri(cfg_uri: str | None = None) -> str:
    """``cfg_uri`` if given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    A relative SQLite path is made absolute, so the run keeps pointing at the same file if the
    driver changes directory.
    """
    uri = cfg_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    db = _sqlite_path(uri)
    if db is not None and not db.is_absolute():
        query = uri.partition("?")[2]
        uri = f"sqlite:///{db.resolve()}" + (f"?{query}" if query else "")
    return uri


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI (None for other stores and in-memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _artifact_location(uri: str) -> str | None:
    """``<db dir>/mlartifacts`` for SQLite; None lets a server or file store choose."""
    db = _sqlite_path(uri)
    return str(db.parent / "mlartifacts") if db is not None else None


def _entries(metrics: dict[str, float], step: int) -> list[StagedMetric]:
    now = int(time.time() * 1000)
    return [(k, int(step), float(v), now) for k, v in metrics.items()]


class Tracker:
    """One MLflow run of a training job. Create it with :meth:`start`."""

    def __init__(self, client: MlflowClient, run_id: str, resumed: bool, resume_count: int = 0) -> None:
        self.client = client
        self.run_id = run_id
        self.tracking_uri = client.tracking_uri
        """Resolved (an absolute SQLite path): what a worker on another node must use."""
        self.resumed = resumed
        """True if :meth:`start` continued an existing run instead of creating one."""
        self.resume_count = resume_count
        self.staged: list[StagedMetric] = []
        """Metrics of steps no checkpoint holds yet (see :meth:`stage_metrics`)."""
        self.system_metrics: RoleSystemMetrics | None = None
        """This process's system-metrics monitor (:meth:`monitor_system`), stopped by :meth:`end`."""

    @classmethod
    def start(cls, cfg: Config, run_id: str | None = None) -> Tracker:
        """Create a run in ``cfg.tracking.experiment``, or continue ``run_id`` (from a checkpoint).

        A new run gets params ``flat_params(cfg)`` and the artifact ``config.yaml``. A resumed run
        is set back to RUNNING and gets ``config_resume_<n>.yaml``.
        """
        uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
        db = _sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            return cls._create(client, uri, cfg)
        return cls._resume(client, uri, cfg, run_id)

    @classmethod
    def _create(cls, client: MlflowClient, uri: str, cfg: Config) -> Tracker:
        name = cfg.tracking.experiment
        exp = client.get_experiment_by_name(name)
        if exp is None:
            exp_id = client.create_experiment(name, artifact_location=_artifact_location(uri))
        elif exp.lifecycle_stage == LifecycleStage.DELETED:
            raise ValueError(
                f"tracking.experiment '{name}' is deleted in {uri}; restore it "
                "(mlflow experiments restore) or choose another name"
            )
        else:
            exp_id = exp.experiment_id
        run = client.create_run(exp_id, run_name=cfg.tracking.run_name)
        tracker = cls(client, run.info.run_id, resumed=False)
        params = [Param(k, v) for k, v in flat_params(cfg).items()]
        client.log_batch(tracker.run_id, params=params, tags=[RunTag(RESUME_COUNT_TAG, "0")])
        client.log_text(tracker.run_id, dump_config(cfg), "config.yaml")
        logger.info("MLflow run %s in experiment '%s' at %s", tracker.run_id, name, uri)
        return tracker

    @classmethod
    def _resume(cls, client: MlflowClient, uri: str, cfg: Config, run_id: str) -> Tracker:
        try:
            run = client.get_run(run_id)
        except MlflowException as err:
            raise ValueError(
                f"cannot resume MLflow run {run_id}: not found in {uri} ({err.message}); "
                "set tracking.tracking_uri to the store the run was created in"
            ) from None
        if run.info.lifecycle_stage == LifecycleStage.DELETED:
            raise ValueError(f"cannot resume MLflow run {run_id}: it is deleted in {uri}")
        changed = sorted(
            k for k, v in flat_params(cfg).items() if run.data.params.get(k, v) != v
        )
        if changed:
            logger.warning("resuming run %s with a changed config: %s", run_id, ", ".join(changed))
        count = int(run.data.tags.get(RESUME_COUNT_TAG, "0")) + 1
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        client.set_tag(run_id, RESUME_COUNT_TAG, str(count))
        client.log_text(run_id, dump_config(cfg), f"config_resume_{count}.yaml")
        logger.info("resumed MLflow run %s at %s (resume %d)", run_id, uri, count)
        return cls(client, run_id, resumed=True, resume_count=count)

    def monitor_system(self, role: str, interval_s: float) -> SystemMetricsTarget:
        """Log this process's system metrics into the run as ``system/<role>/...`` until :meth:`end`;
        returns the target that workers pass to ``infra.system_metrics.start_system_metrics``."""
        from infra.system_metrics import SystemMetricsTarget, start_system_metrics

        target = SystemMetricsTarget(self.run_id, self.tracking_uri, interval_s)
        self.system_metrics = start_system_metrics(target, role)
        return target

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log every metric at ``step`` in one ``log_batch`` call (0-d tensors are fine)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def stage_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Hold ``metrics`` of training ``step`` until :meth:`commit_metrics` (after a checkpoint)."""
        self.staged.extend(_entries(metrics, step))

    def log_metrics_once(self, metrics: dict[str, float], step: int) -> None:
        """Log those of ``metrics`` whose ``(key, step)`` the history lacks: results of a checkpointed
        model (the final sweep) that a resume after a crash computes again."""
        self.log_missing_metrics(_entries(metrics, step))

    def commit_metrics(self) -> None:
        """Log the staged metrics: call it once the checkpoint that holds ``self.staged`` is written."""
        self._log_batches(self.staged)
        self.staged = []

    def log_missing_metrics(self, entries: list[StagedMetric]) -> None:
        """Log the entries whose ``(key, step)`` the run's history lacks: the staged metrics of the
        checkpoint a resume starts from, which the crashed driver may have committed in part or not
        at all."""
        logged = {key: {m.step for m in self.client.get_metric_history(self.run_id, key)}
                  for key in {e[0] for e in entries}}
        self._log_batches([e for e in entries if e[1] not in logged[e[0]]])

    def _log_batches(self, entries: list[StagedMetric]) -> None:
        for i in range(0, len(entries), MAX_METRICS_PER_BATCH):
            batch = [Metric(k, v, ts, step) for k, step, v, ts in entries[i:i + MAX_METRICS_PER_BATCH]]
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, fig: Figure, artifact_file: str, close: bool = True) -> None:
        """Save a matplotlib figure as ``artifact_file`` (e.g. ``plots/front_step_100.png``).

        Closes it by default: pyplot keeps every figure alive until closed, which leaks memory
        in a long training loop that logs one per N steps.
        """
        self.client.log_figure(self.run_id, fig, artifact_file)
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)

    def log_table(self, data: dict[str, list[Any]], artifact_file: str) -> None:
        """A small column table as a JSON artifact the MLflow UI renders (``*.json``), logged once:
        MLflow appends the rows to a table file that exists, and a resume after a crash computes the
        same table (the final sweep of a checkpointed model) again."""
        folder = str(Path(artifact_file).parent)
        existing = {a.path for a in self.client.list_artifacts(self.run_id, None if folder == "." else folder)}
        if artifact_file not in existing:
            self.client.log_table(self.run_id, data, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local file (or a directory's contents) into the run's artifacts."""
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(p), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run; staged metrics no checkpoint holds go to the artifact
        ``metrics/uncommitted_<resume count>.json`` (what led up to a failure), not to the history, where
        a resume logs the steps it trains again."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, got {status!r}")
        if self.staged:
            rows = [{"key": k, "step": step, "value": v, "timestamp": ts} for k, step, v, ts in self.staged]
            self.log_text(json.dumps(rows), f"metrics/uncommitted_{self.resume_count}.json")
            self.staged = []
        if self.system_metrics is not None:
            self.system_metrics.finish()  # its last sample lands before the run's end time
            self.system_metrics = None
        self.client.set_terminated(self.run_id, status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")

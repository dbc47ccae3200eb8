"""System metrics of every role of a training job, logged into the job's one MLflow run.

Each process (the driver, every learner rank, rollout actor and reward replica) runs MLflow's own
``SystemMetricsMonitor`` with its role as the node id, so its series are ``system/<role>/<name>``:
MLflow's node-wide CPU, memory, disk and network figures (and ``gpu_<i>_*`` where NVML finds a GPU,
absent on a CPU machine: every GPU of the node as NVML numbers them, whichever the role was given),
plus this process's own ``process_cpu_utilization_percentage`` (CPU time over wall time, up to
100 x cores) and ``process_memory_rss_megabytes``, which tell apart the roles that share a node.

Each role also tags the run with where it runs, ``system/<role>/node`` = ``<hostname> gpus=<its
CUDA_VISIBLE_DEVICES>``, so the series group by node.

Workers open no run of their own: the driver hands them a :class:`SystemMetricsTarget` (its run id
and resolved tracking URI) in their constructors, so an actor Ray restarts, or a Serve replica that
replaces another, monitors again with the same arguments.

Unlike training metrics (``Tracker.stage_metrics``), these are logged directly, not staged until a
checkpoint: they are wall-clock telemetry indexed by sample, not by training step. A resumed job
continues the sample count past the last one logged (``resume_logging``), so no step repeats, and
the samples of a crashed attempt measured time that really passed, so they belong in the history.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from dataclasses import dataclass

import psutil

from infra.tracking import _sqlite_path  # first: it switches MLflow's telemetry off before mlflow is imported
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SystemMetricsTarget:
    """Where a process logs its system metrics: the training job's run."""

    run_id: str
    tracking_uri: str
    """Resolved by the driver: a worker on another node has neither its working directory nor its
    ``$MLFLOW_TRACKING_URI``."""
    interval_s: float
    """Seconds between two samples (``tracking.system_metrics_interval_s``)."""


def role_key(role: str) -> str:
    """``role`` as a metric-key segment (MLflow keys allow word characters, ``.`` and ``-``)."""
    return re.sub(r"[^\w.\-]", "_", role)


class ProcessMonitor(BaseMetricsMonitor):
    """This process's CPU and resident memory: MLflow's ``CPUMonitor`` measures the whole node,
    the same for every role placed on it (MLflow has no per-process monitor yet: mlflow/mlflow#19810)."""

    def __init__(self) -> None:
        super().__init__()
        self.process = psutil.Process()
        # CPU seconds over wall seconds since the previous sample, and for the first since the process
        # started: psutil's own cpu_percent() measures from its previous call, and MLflow samples right
        # after start, where a few ms of wall time turn one 10 ms clock tick into hundreds of percent.
        self._last = (self.process.create_time(), 0.0)

    def collect_metrics(self) -> None:
        with self.process.oneshot():
            times, rss = self.process.cpu_times(), self.process.memory_info().rss
        now, cpu = time.time(), times.user + times.system
        (then, cpu_then), self._last = self._last, (now, cpu)
        self._metrics["process_cpu_utilization_percentage"].append(100 * (cpu - cpu_then) / max(now - then, 1e-3))
        self._metrics["process_memory_rss_megabytes"].append(rss / 1e6)

    def aggregate_metrics(self) -> dict[str, float]:
        return {k: round(sum(v) / len(v), 1) for k, v in self._metrics.items()}


class RoleSystemMetrics(SystemMetricsMonitor):
    """MLflow's monitor for one role, in a daemon thread; :meth:`finish` also logs the last sample."""

    def __init__(self, target: SystemMetricsTarget, role: str) -> None:
        # resume_logging: a resumed run (or a restarted actor) continues after the last sample of any role.
        super().__init__(target.run_id, sampling_interval=target.interval_s, resume_logging=True,
                         node_id=role_key(role), tracking_uri=target.tracking_uri)
        # MLflow's MLFLOW_SYSTEM_METRICS_* environment variables override its arguments; here the config
        # is the one place for the knobs, and one node id set for every process would merge the roles' series.
        self.node_id = role_key(role)
        self.sampling_interval = target.interval_s
        self.samples_before_logging = 1
        self.monitors.append(ProcessMonitor())
        # Ray sets CUDA_VISIBLE_DEVICES for every actor ("" without GPUs); unset, the process sees them all.
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f"{socket.gethostname()} gpus={'all' if gpus is None else gpus or 'none'}"
        self.mlflow_logger.client.set_tag(target.run_id, f"system/{self.node_id}/node", where)

    def finish(self) -> None:
        """Stop the thread and log the sample it took at the start of its last interval, so a role
        that lived less than one interval still reports once."""
        running = self._process is not None
        super().finish()
        if not running or not any(m.metrics for m in self.monitors):
            return
        try:
            self.publish_metrics(self.aggregate_metrics())
            self.mlflow_logger.flush()
        except Exception as err:  # noqa: BLE001 - telemetry must not fail a worker's shutdown
            logger.warning("could not log the last system metrics of %s: %s", self.node_id, err)


def start_system_metrics(target: SystemMetricsTarget | None, role: str) -> RoleSystemMetrics | None:
    """Start monitoring this process as ``role`` (None: system metrics are off, or the run's store is
    out of this process's reach, which costs a warning, not the worker)."""
    if target is None:
        return None
    db = _sqlite_path(target.tracking_uri)
    if db is not None and not db.exists():
        # A worker on another node than the driver's SQLite file; MLflow would create an empty database here.
        logger.warning("no system metrics for %s: the run's SQLite store %s is not on this node (%s); a multi-node "
                       "job needs an MLflow server (tracking.tracking_uri)", role, db, socket.gethostname())
        return None
    try:
        monitor = RoleSystemMetrics(target, role)
    except MlflowException as err:
        logger.warning("no system metrics for %s: run %s is out of reach at %s (%s)", role, target.run_id,
                       target.tracking_uri, err.message)
        return None
    monitor.start()
    return monitor

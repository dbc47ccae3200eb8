"""System metrics of every role of a training job, logged into the job's one MLflow run.

Each process (the driver, every learner rank, rollout actor and reward replica) runs MLflow's own
``SystemMetricsMonitor`` with its role as the node id, so its series are ``system/<role>/<name>``:
MLflow's node-wide CPU, memory, disk and network figures (and ``gpu_<i>_*`` where NVML finds a GPU;
absent on a CPU machine), plus this process's own ``process_cpu_utilization_percentage`` (CPU time
over wall time, up to 100 x cores) and ``process_memory_rss_megabytes``, which tell apart the roles
that share a node.

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
import re
import time
from dataclasses import dataclass

import psutil

import infra.tracking  # noqa: F401 - switches MLflow's telemetry off before mlflow's first import
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
    """Start monitoring this process as ``role`` (None: system metrics are off)."""
    if target is None:
        return None
    monitor = RoleSystemMetrics(target, role)
    monitor.start()
    return monitor

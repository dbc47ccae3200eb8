"""System metrics of one role logged into a run, on a SQLite store and on a real MLflow server."""

from __future__ import annotations

import os
import time

import pytest
import torch
from mlflow import MlflowClient

from infra.config import Config
from infra.system_metrics import SystemMetricsTarget, start_system_metrics
from infra.tracking import Tracker

GPU = torch.cuda.is_available()


@pytest.fixture(params=["sqlite", "server"])
def uri(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}" if request.param == "sqlite" else request.getfixturevalue("mlflow_server")


def role_series(client: MlflowClient, run_id: str, role: str) -> dict[str, list]:
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(f"system/{role}/")]
    return {k.removeprefix(f"system/{role}/"): client.get_metric_history(run_id, k) for k in keys}


def test_role_logs_node_and_process_figures_into_the_run(uri, monkeypatch):
    # MLflow's own variable would give every process the same node id; the role must win.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_NODE_ID", "same-for-all")
    tracker = Tracker.start(Config.model_validate({"tracking": {"tracking_uri": uri, "experiment": "sysmetrics"}}))
    target = SystemMetricsTarget(tracker.run_id, tracker.tracking_uri, 0.2)
    monitor = start_system_metrics(target, "reward_target a_0")
    a = torch.randn(256, 256)
    deadline = time.monotonic() + 60  # a loaded machine (or a slow server answering get_run) stretches the interval
    while monitor._logging_step < 3 and time.monotonic() < deadline:
        a = torch.tanh(a @ a)  # load this process; torch releases the GIL, so the monitor thread runs
    monitor.finish()
    tracker.end()

    series = role_series(tracker.client, tracker.run_id, "reward_target_a_0")
    assert {"cpu_utilization_percentage", "system_memory_usage_megabytes", "process_cpu_utilization_percentage",
            "process_memory_rss_megabytes"} <= set(series)
    assert not any(k.startswith("system/same-for-all/") for k in tracker.client.get_run(tracker.run_id).data.metrics)
    steps = [m.step for m in series["process_memory_rss_megabytes"]]
    assert len(steps) >= 4 and sorted(steps) == list(range(len(steps)))  # periodic samples and the last, none lost
    rss = [m.value for m in series["process_memory_rss_megabytes"]]
    assert all(50 < v < 64_000 for v in rss)  # a Python with torch and mlflow loaded: tens to hundreds of MB
    cpu = [m.value for m in series["process_cpu_utilization_percentage"]]
    assert all(0 <= v <= 100 * os.cpu_count() for v in cpu) and max(cpu) > 0
    assert all(0 <= m.value <= 100 for m in series["cpu_utilization_percentage"])
    assert any(k.startswith("gpu_") for k in series) == GPU


def test_a_role_shorter_than_one_interval_reports_once_and_a_restart_continues_the_count(uri):
    tracker = Tracker.start(Config.model_validate({"tracking": {"tracking_uri": uri, "experiment": "sysmetrics"}}))
    target = SystemMetricsTarget(tracker.run_id, tracker.tracking_uri, 60.0)
    start_system_metrics(target, "rollout_0").finish()
    first = role_series(tracker.client, tracker.run_id, "rollout_0")["process_memory_rss_megabytes"]
    assert [m.step for m in first] == [0]

    # A restarted actor (or a resumed job) monitors the same role again: its samples follow, no step repeats.
    start_system_metrics(target, "rollout_0").finish()
    tracker.end()
    again = role_series(tracker.client, tracker.run_id, "rollout_0")["process_memory_rss_megabytes"]
    assert sorted(m.step for m in again) == [0, 1]



def test_a_worker_off_the_drivers_sqlite_node_runs_without_system_metrics(tmp_path, caplog):
    # What a rollout actor on a second node sees: the driver's database path does not exist there.
    missing = tmp_path / "driver-node" / "mlflow.db"
    target = SystemMetricsTarget("0" * 32, f"sqlite:///{missing}", 1.0)
    assert start_system_metrics(target, "rollout_3") is None
    assert not missing.parent.exists()  # no stray empty database on the worker's node
    assert "rollout_3" in caplog.text and "MLflow server" in caplog.text


def test_role_tags_the_run_with_its_host(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # as Ray sets it for an actor without GPUs
    tracker = Tracker.start(Config.model_validate({"tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}}))
    start_system_metrics(SystemMetricsTarget(tracker.run_id, tracker.tracking_uri, 60.0), "learner_1").finish()
    tracker.end()
    assert tracker.client.get_run(tracker.run_id).data.tags["system/learner_1/node"] == f"{socket.gethostname()} gpus=none"

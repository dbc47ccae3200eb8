"""MLflow tracking against a real SQLite store (and an MLflow server where the store matters): new runs,
resume by id, staged metrics, artifacts, URI rules."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from infra.config import Config, dump_config, flat_params, load_config  # noqa: E402
from infra.tracking import RESUME_COUNT_TAG, Tracker, resolve_tracking_uri  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One SQLite DB for the module (creating its tables takes about a second)."""
    return tmp_path_factory.mktemp("mlflow") / "db" / "mlflow.db"


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty cwd, to prove nothing is written next to the process."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture(params=["sqlite", "server"])
def store_uri(request, store) -> str:
    """The run's store: the module's SQLite file, or an MLflow server."""
    return f"sqlite:///{store}" if request.param == "sqlite" else request.getfixturevalue("mlflow_server")


def make_cfg(store: Path | str, *overrides: str) -> Config:
    uri = store if isinstance(store, str) else f"sqlite:///{store}"
    return load_config(
        overrides=[f"tracking.tracking_uri={uri}", "tracking.experiment=tests",
                   "tracking.run_name=unit", *overrides]
    )


def metric_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_new_run_logs_params_config_and_metrics(store, workdir):
    cfg = make_cfg(store)
    tracker = Tracker.start(cfg)
    assert not tracker.resumed
    tracker.log_metrics({"reward/target_a": 0.5, "loss": torch.tensor(1.25)}, step=0)
    tracker.log_metrics({"reward/target_a": 0.75, "loss": 1.0}, step=1)

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == "unit"
    assert run.data.params == flat_params(cfg)
    assert run.data.params["learner.lr"] == "0.0003"
    assert run.data.tags[RESUME_COUNT_TAG] == "0"
    assert metric_history(client, tracker.run_id, "reward/target_a") == [(0, 0.5), (1, 0.75)]
    assert metric_history(client, tracker.run_id, "loss") == [(0, 1.25), (1, 1.0)]

    local = Path(client.download_artifacts(tracker.run_id, "config.yaml", str(workdir / "dl")))
    assert local.read_text() == dump_config(cfg)
    assert Config.model_validate(yaml.safe_load(local.read_text())) == cfg

    # Artifacts sit next to the DB, not in the working directory.
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.artifact_location == str(store.parent / "mlartifacts")
    assert (store.parent / "mlartifacts" / tracker.run_id / "artifacts" / "config.yaml").is_file()
    assert sorted(p.name for p in workdir.iterdir()) == ["dl"]

    tracker.end()
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_resume_continues_the_same_run(store, workdir, caplog):
    cfg = make_cfg(store)
    first = Tracker.start(cfg)
    for step in range(3):
        first.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    run_id = first.run_id  # what the driver stores in its checkpoint; then the process dies

    cfg2 = make_cfg(store, "loop.steps=600")
    with caplog.at_level(logging.WARNING, logger="infra.tracking"):
        second = Tracker.start(cfg2, run_id=run_id)
    assert second.resumed and second.run_id == run_id
    assert "loop.steps" in caplog.text
    for step in range(3, 5):
        second.log_metrics({"loss": 1.0 / (step + 1)}, step=step)

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    assert metric_history(client, run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(5)]
    run = client.get_run(run_id)
    assert run.data.params["loop.steps"] == "300"  # params are the run's original config
    assert run.data.tags[RESUME_COUNT_TAG] == "1"
    names = {f.path for f in client.list_artifacts(run_id)}
    assert names == {"config.yaml", "config_resume_1.yaml"}
    assert len(client.search_runs([run.info.experiment_id], f"attributes.run_id = '{run_id}'")) == 1

    # A run that was marked FAILED goes back to RUNNING when resumed again.
    second.end("FAILED")
    third = Tracker.start(cfg2, run_id=run_id)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert client.get_run(run_id).data.tags[RESUME_COUNT_TAG] == "2"
    third.end()


def test_staged_metrics_reach_the_history_only_when_committed(store_uri, workdir):
    from infra.checkpoint import load_latest_checkpoint, save_checkpoint

    tracker = Tracker.start(make_cfg(store_uri))
    client = MlflowClient(tracking_uri=store_uri)
    values = {(key, step): step * 0.5 + k for k, key in enumerate(("a", "b", "c")) for step in range(1, 451)}
    for step in range(1, 451):
        tracker.stage_metrics({key: torch.tensor(values[key, step]) for key in ("a", "b", "c")}, step)
    assert metric_history(client, tracker.run_id, "a") == []
    # The staged entries round-trip through a checkpoint (torch.load(weights_only=True)).
    save_checkpoint(workdir / "run", 450, {"metrics": list(tracker.staged)})
    assert load_latest_checkpoint(workdir / "run")[1]["metrics"] == tracker.staged
    tracker.commit_metrics()  # 1350 entries: more than one log_batch may carry
    assert tracker.staged == []
    for key in ("a", "b", "c"):
        assert metric_history(client, tracker.run_id, key) == [(s, values[key, s]) for s in range(1, 451)]


def test_missing_metrics_are_logged_once_after_a_partial_commit(store_uri, workdir):
    tracker = Tracker.start(make_cfg(store_uri))
    client = MlflowClient(tracking_uri=store_uri)
    for step in (1, 2, 3):
        tracker.stage_metrics({"loss": 10.0 + step, "reward": 20.0 + step}, step)
    kept = list(tracker.staged)
    tracker.staged = [e for e in kept if e[0] == "loss" and e[1] < 3]  # the crash cut the commit short
    tracker.commit_metrics()

    resumed = Tracker.start(make_cfg(store_uri), run_id=tracker.run_id)
    resumed.log_missing_metrics(kept)
    resumed.log_missing_metrics(kept)  # a second crash and resume from the same checkpoint
    assert metric_history(client, tracker.run_id, "loss") == [(1, 11.0), (2, 12.0), (3, 13.0)]
    assert metric_history(client, tracker.run_id, "reward") == [(1, 21.0), (2, 22.0), (3, 23.0)]


def test_results_logged_once_keep_their_first_value(store_uri, workdir):
    tracker = Tracker.start(make_cfg(store_uri))
    client = MlflowClient(tracking_uri=store_uri)
    tracker.log_metrics_once({"sweep/hv": 0.5, "sweep/base": 0.1}, 8)
    tracker.log_metrics_once({"sweep/hv": 0.5, "sweep/base": 0.1, "sweep/new": 2.0}, 8)  # the sweep again
    tracker.log_metrics_once({"sweep/hv": 0.75}, 9)
    assert metric_history(client, tracker.run_id, "sweep/hv") == [(8, 0.5), (9, 0.75)]
    assert metric_history(client, tracker.run_id, "sweep/base") == [(8, 0.1)]
    assert metric_history(client, tracker.run_id, "sweep/new") == [(8, 2.0)]


def test_uncommitted_metrics_of_a_failed_run_are_an_artifact_not_history(store_uri, workdir, tmp_path):
    tracker = Tracker.start(make_cfg(store_uri))
    client = MlflowClient(tracking_uri=store_uri)
    tracker.stage_metrics({"loss": 1.5}, 1)
    tracker.commit_metrics()
    tracker.stage_metrics({"loss": float("nan")}, 2)
    tracker.end("FAILED")
    assert metric_history(client, tracker.run_id, "loss") == [(1, 1.5)]
    path = client.download_artifacts(tracker.run_id, "metrics/uncommitted_0.json", str(tmp_path))
    rows = json.loads(Path(path).read_text())
    assert [(r["key"], r["step"]) for r in rows] == [("loss", 2)] and rows[0]["value"] != rows[0]["value"]


def test_resume_of_an_unknown_run_names_the_store(store, workdir):
    with pytest.raises(ValueError, match=r"cannot resume MLflow run deadbeef.*sqlite:///"):
        Tracker.start(make_cfg(store), run_id="deadbeef")


def test_artifacts_tags_and_end_status(store, workdir):
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker.start(make_cfg(store)) as tracker:
            fig, ax = plt.subplots()
            ax.scatter([0, 1], [1, 0])
            tracker.log_figure(fig, "plots/front_step_10.png")
            assert not plt.fignum_exists(fig.number)
            tracker.log_table({"w_a": [0.0, 1.0], "hv": [0.1, 0.2]}, "tables/front.json")
            tracker.log_table({"w_a": [0.5], "hv": [9.0]}, "tables/front.json")  # a resume's second sweep: kept out
            (workdir / "front.parquet").write_bytes(b"PAR1")
            tracker.log_artifact(workdir / "front.parquet", "fronts")
            (workdir / "samples").mkdir()
            (workdir / "samples" / "a.txt").write_text("a")
            tracker.log_artifact(workdir / "samples", "samples")
            tracker.log_text("hello", "notes/hello.txt")
            tracker.set_tags({"git_commit": "abc123", "num_objectives": 2})
            raise RuntimeError("boom")

    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["git_commit"] == "abc123" and run.data.tags["num_objectives"] == "2"
    root = store.parent / "mlartifacts" / tracker.run_id / "artifacts"
    assert (root / "plots" / "front_step_10.png").read_bytes()[:4] == b"\x89PNG"
    table = json.loads((root / "tables" / "front.json").read_text())
    assert table["columns"] == ["w_a", "hv"] and table["data"] == [[0.0, 0.1], [1.0, 0.2]]
    assert (root / "fronts" / "front.parquet").read_bytes() == b"PAR1"
    assert (root / "samples" / "a.txt").read_text() == "a"
    assert (root / "notes" / "hello.txt").read_text() == "hello"

    with pytest.raises(ValueError, match="status must be one of"):
        tracker.end("DONE")


def test_resolve_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert resolve_tracking_uri(None) == "http://mlflow.internal:5000"
    assert resolve_tracking_uri("sqlite:////data/x.db") == "sqlite:////data/x.db"
    assert resolve_tracking_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path.resolve()}/rel/x.db"
    assert resolve_tracking_uri("sqlite:///x.db?timeout=30") == (
        f"sqlite:///{tmp_path.resolve()}/x.db?timeout=30"
    )


def test_telemetry_is_switched_off_before_mlflow_loads():
    """Outside pytest/CI (which MLflow itself detects) importing us must not start telemetry."""
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_DISABLE_TELEMETRY", "CI"}}
    env.pop("PYTEST_CURRENT_TEST", None)
    code = (
        "import os, infra.tracking, mlflow.telemetry as t; "
        "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], t.get_telemetry_client())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["true", "None"]

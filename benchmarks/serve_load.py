"""Throughput and p50/p99 latency of the slider endpoint at 1, 8 and 32 concurrent clients,
batched (``@serve.batch``) vs. unbatched (``serve.max_batch_size=1``), on loopback.

Deploys the model twice on a local Ray (one replica each time), drives it with closed-loop client
threads (each sends its next request when the previous one is answered: PNG answers, a different
preference and seed per request) and prints one table and the batched/unbatched ratios.

    python benchmarks/serve_load.py [--model models:/NAME/1 | RUN_DIR] [--requests 160] [--set serve.x=y ...]

Without ``--model`` it first trains a small toy2d model (configs/toy2d.yaml, 60 steps) in a temp dir.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from infra.config import Config, load_config

CONCURRENCY = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_small(workdir: Path, overrides: list[str]) -> str:
    from pipelines.train import train

    cfg = load_config("configs/toy2d.yaml", overrides + [
        f"run_dir={workdir / 'run'}", f"tracking.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
        "loop.steps=60", "loop.scatter_every=100000", "evaluation.num_samples=64", "evaluation.points_per_edge=3",
        "registry.register_on_finish=false"])
    train(cfg, progress=False)
    return cfg.run_dir


def drive(url: str, clients: int, total: int) -> tuple[float, np.ndarray]:
    """``total`` requests from ``clients`` closed-loop threads: (wall seconds, latencies in s)."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                w = (i % 11) / 10
                body = json.dumps({"preference": [w, 1 - w], "seed": i})
                t0 = time.perf_counter()
                r = session.post(f"{url}/v1/generate", data=body, headers={"Content-Type": "application/json"},
                                 timeout=120)
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, np.asarray(latencies)


def measure(cfg: Config, model: str, batched: bool, total: int) -> dict[int, dict[str, float]]:
    from pipelines.serve import deploy_slider

    serve_cfg = cfg.serve.model_copy(update={} if batched else {"max_batch_size": 1})
    endpoint = deploy_slider(cfg.model_copy(update={"serve": serve_cfg}), model)
    try:
        drive(endpoint.url, 4, 16)  # warm-up: replica threads, torch, connections
        out = {}
        for clients in CONCURRENCY:
            stats0 = requests.get(f"{endpoint.url}/healthz", timeout=10).json()
            wall, lat = drive(endpoint.url, clients, max(total, 4 * clients))
            stats1 = requests.get(f"{endpoint.url}/healthz", timeout=10).json()
            batches = max(1, stats1["batches"] - stats0["batches"])
            out[clients] = {"rps": len(lat) / wall, "p50_ms": 1e3 * np.percentile(lat, 50),
                            "p99_ms": 1e3 * np.percentile(lat, 99),
                            "batch": (stats1["requests"] - stats0["requests"]) / batches}
        return out
    finally:
        endpoint.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="models:/NAME/VERSION, runs:/..., or a run directory (default: train one)")
    ap.add_argument("--requests", type=int, default=160, help="requests per concurrency level")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="config override, e.g. serve.num_cpus=1")
    args = ap.parse_args()
    cfg = load_config(None, args.overrides)
    if not any(o.startswith("serve.port=") for o in args.overrides):
        cfg.serve.port = free_port()  # Serve keeps one HTTP port for both deployments
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or train_small(Path(tmp), args.overrides)
        from infra.ray_init import start_ray

        start_ray(cfg.ray)
        from ray import serve

        serve.shutdown()  # training's reward servers left Serve on a random port; the endpoint needs its own
        results = {mode: measure(cfg, model, mode == "batched", args.requests) for mode in ("unbatched", "batched")}
        serve.shutdown()

    s = cfg.serve
    print(f"\nslider endpoint on loopback: 1 replica ({s.num_cpus} CPU), {s.points_per_request} points + PNG per "
          f"request; batched = max_batch_size {s.max_batch_size}, wait {1e3 * s.batch_wait_timeout_s:g} ms\n")
    print("| mode | clients | req/s | p50 ms | p99 ms | mean batch |\n| --- | --- | --- | --- | --- | --- |")
    for mode, per in results.items():
        for clients, r in per.items():
            print(f"| {mode} | {clients} | {r['rps']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['batch']:.1f} |")
    print("\n| clients | throughput batched/unbatched | p50 batched/unbatched | p99 batched/unbatched |"
          "\n| --- | --- | --- | --- |")
    b, u = results["batched"], results["unbatched"]
    for clients in CONCURRENCY:
        print(f"| {clients} | {b[clients]['rps'] / u[clients]['rps']:.2f}x | "
              f"{b[clients]['p50_ms'] / u[clients]['p50_ms']:.2f}x | {b[clients]['p99_ms'] / u[clients]['p99_ms']:.2f}x |")


if __name__ == "__main__":
    main()

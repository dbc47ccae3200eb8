"""Reward-server throughput: ``@serve.batch`` on vs. off, and the router's overhead, in one run.

Deploys the tiny Qwen2-VL judge (transformers backend, built from a config into a temp dir) as
two Serve apps on a local Ray: one whose deployment merges up to ``--batch`` requests, one that
scores each request alone. Then:

1. batched vs. unbatched: ``--requests`` concurrent one-image requests to each deployment;
   scores/s of each and their ratio;
2. router overhead: ``--calls`` sequential ``--batch``-image requests through the router vs. straight
   to the (batched) deployment's handle; the ratio of the mean latencies. Twice: by reference (a
   ``RewardRef`` to a batch already in the object store, as the training loop sends what a rollout
   actor returned) and by value (the batch in the request, as an HTTP-less external caller would).

    python benchmarks/reward_throughput.py [--requests 64] [--batch 16] [--calls 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 28, 28)).astype(np.float32)


def concurrent_scores_per_s(handle, n: int) -> float:
    from reward_servers.base import RewardInputs

    reqs = [RewardInputs(images(1, i), [f"prompt {i}"]) for i in range(n)]
    start = time.perf_counter()
    for r in [handle.remote(x) for x in reqs]:
        r.result()
    return n / (time.perf_counter() - start)


def mean_latency_s(call, inputs, calls: int) -> float:
    call(inputs)  # warm-up
    start = time.perf_counter()
    for _ in range(calls):
        call(inputs)
    return (time.perf_counter() - start) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()

    import ray
    from ray import serve

    from infra.config import RewardSpec, RewardsConfig
    from reward_servers.base import RewardInputs, RewardRef
    from reward_servers.client import RewardClient
    from reward_servers.serve_app import deployment_name
    from reward_servers.tiny_models import build_tiny_qwen2_vl

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        judge = RewardSpec(name="vlm_judge", label="judge", args={"model": str(build_tiny_qwen2_vl(tmp))})
        clients = {
            size: RewardClient(RewardsConfig(objectives=[judge], max_batch_size=size, batch_wait_timeout_s=0.01,
                                             num_cpus=1, timeout_s=600), app_name=f"judge_b{size}")
            for size in (1, args.batch)
        }
        handles = {size: serve.get_deployment_handle(deployment_name("judge"), app_name=f"judge_b{size}")
                   for size in clients}
        for h in handles.values():  # warm-up: first forward pass, thread pools
            concurrent_scores_per_s(h, 4)
        rate = {size: concurrent_scores_per_s(h, args.requests) for size, h in handles.items()}

        inputs = RewardInputs(images(args.batch, 0), ["a red circle"] * args.batch)
        client, direct = clients[args.batch], handles[args.batch]
        latency = {}
        for how, batch in (("by reference", RewardRef.of(inputs, ray.put(inputs))), ("by value", inputs)):
            latency[how] = (mean_latency_s(lambda x: client.score(x), batch, args.calls),
                            mean_latency_s(lambda x: direct.remote(x).result(), batch, args.calls))
        for c in clients.values():
            c.close()
    serve.shutdown()
    ray.shutdown()

    print(f"\n{args.requests} concurrent 1-image requests, tiny Qwen2-VL judge (transformers, CPU):")
    for size, r in rate.items():
        print(f"  max_batch_size={size:<3} {r:8.1f} scores/s")
    print(f"  batched / unbatched = {rate[args.batch] / rate[1]:.2f}x")
    for how, (via_router, straight) in latency.items():
        print(f"\n{args.calls} sequential {args.batch}-image requests, {how}:")
        print(f"  via router {via_router * 1e3:8.1f} ms   straight to the deployment {straight * 1e3:8.1f} ms")
        print(f"  router / direct latency = {via_router / straight:.2f}x  (+{(via_router - straight) * 1e3:.1f} ms a call)")


if __name__ == "__main__":
    main()

"""Samples/s of the training loop, synchronous (max_staleness=0) vs. overlapped (max_staleness=1).

Runs the same short toy2d job twice in one process on a local Ray and prints, for each, samples/s
and the share of wall time each stage was busy; then the ratio of the two throughputs.

    python benchmarks/loop_overlap.py [--steps 60] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from steady_state import WARMUP_STEPS, bench_config, run_steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for s in (0, 1):
            cfg = bench_config("configs/toy2d.yaml", Path(tmp), f"s{s}", args.overrides + [
                f"loop.steps={args.steps}", f"loop.max_staleness={s}", "evaluation.num_samples=64",
                "evaluation.points_per_edge=3"])
            results[s] = run_steady(cfg)
    stages = sorted({k for r in results.values() for k in r if k.startswith("busy_")})
    print(f"\n{'max_staleness':>14} {'samples/s':>10} {'wall s':>8} " + " ".join(f"{s[5:]:>13}" for s in stages))
    for s, r in results.items():
        print(f"{s:>14} {r['samples_per_s']:>10.0f} {r['wall_s']:>8.1f} "
              + " ".join(f"{r.get(k, 0.0):>12.0%} " for k in stages))
    print(f"\nthroughput ratio async/sync = {results[1]['samples_per_s'] / results[0]['samples_per_s']:.2f}x"
          f"  (steady state after {WARMUP_STEPS} warm-up steps; a stage share is its busy time / wall time,"
          " and rollout runs on the actors, so shares may add up to more than 100%)")


if __name__ == "__main__":
    main()

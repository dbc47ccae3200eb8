"""Samples/s of the training loop, synchronous (max_staleness=0) vs. overlapped (max_staleness=1).

Runs the same short toy2d job in both modes, alternating, ``--repeats`` times in one process on a
local Ray and prints, for each run, samples/s and the share of wall time each stage was busy; then
the ratio of the two modes' median throughputs and the range of the per-repeat ratios. One pair of
~8 s runs is not enough on 2 shared cores: the overlapped run's throughput has been seen at two
levels (~2,400 and ~3,400 samples/s) from one run to the next, so the median is what is quoted.

    python benchmarks/loop_overlap.py [--steps 60] [--repeats 3] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from steady_state import WARMUP_STEPS, bench_config, run_steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each mode, alternating")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    runs: list[tuple[int, int, dict]] = []  # (repeat, max_staleness, result)
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for s in (0, 1):
                cfg = bench_config("configs/toy2d.yaml", Path(tmp), f"r{rep}s{s}", args.overrides + [
                    f"loop.steps={args.steps}", f"loop.max_staleness={s}", "evaluation.num_samples=64",
                    "evaluation.points_per_edge=3"])
                runs.append((rep, s, run_steady(cfg)))
    stages = sorted({k for _, _, r in runs for k in r if k.startswith("busy_")})
    print(f"\n{'repeat':>6} {'max_staleness':>14} {'samples/s':>10} {'wall s':>8} "
          + " ".join(f"{s[5:]:>13}" for s in stages))
    for rep, s, r in runs:
        print(f"{rep:>6} {s:>14} {r['samples_per_s']:>10.0f} {r['wall_s']:>8.1f} "
              + " ".join(f"{r.get(k, 0.0):>12.0%} " for k in stages))
    rate = {s: [r["samples_per_s"] for _, m, r in runs if m == s] for s in (0, 1)}
    pairs = [a / b for a, b in zip(rate[1], rate[0])]
    print(f"\nthroughput ratio async/sync = {statistics.median(rate[1]) / statistics.median(rate[0]):.2f}x"
          f" (medians over {args.repeats} repeats; per-repeat ratios {min(pairs):.2f}-{max(pairs):.2f})"
          f"  (steady state after {WARMUP_STEPS} warm-up steps; a stage share is its busy time / wall time,"
          " and rollout runs on the actors, so shares may add up to more than 100%)")


if __name__ == "__main__":
    main()

"""Orchestration efficiency: measured throughput vs. the ideal for 1, 2, 4, 8 rollout actors.

Stage-cost simulation (configs/sim_scaling.yaml): rollout, reward and learner stages cost fixed
seconds per sample, and real-size payloads move through the object store and Serve. The ideal
step time is the slowest stage when the loop overlaps (max_staleness=1) and the sum of the stages
when it is synchronous (max_staleness=0); the ratio measured/ideal is the orchestration efficiency.

    python benchmarks/pipeline_scaling.py [--actors 1,2,4,8] [--steps 20] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from steady_state import bench_config, run_steady

from infra.config import Config


def ideal_stage_seconds(cfg: Config) -> dict[str, float]:
    """Per-step seconds of each stage if orchestration were free."""
    sim = cfg.simulate
    b = cfg.rollout.prompts_per_step * cfg.preferences.slots_per_prompt * cfg.rollout.group_size
    # Objectives are scored concurrently, each by its own deployment: the slowest one counts.
    reward = max(o.args.get("s_per_sample", 0.0) for o in cfg.rewards.objectives) * b / cfg.rewards.num_replicas
    return {"rollout": sim.rollout_s_per_sample * b / cfg.rollout.num_actors, "reward": reward,
            "train": sim.train_s_per_sample * b / cfg.learner.world_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--actors", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.actors.split(",")]:
            for s in (0, 1):
                cfg = bench_config("configs/sim_scaling.yaml", Path(tmp), f"n{n}_s{s}", args.overrides + [
                    f"rollout.num_actors={n}", f"loop.max_staleness={s}", f"loop.steps={args.steps}"])
                stages = ideal_stage_seconds(cfg)
                ideal_step = max(stages.values()) if s else sum(stages.values())
                r = run_steady(cfg)
                per_step = r["samples_per_s"] * r["step_s"]
                rows.append((n, "async" if s else "sync", r["samples_per_s"], per_step / ideal_step,
                             max(stages, key=stages.get), r.get("busy_weight_sync", 0.0)))
    print(f"\n{'actors':>6} {'mode':>6} {'samples/s':>10} {'ideal':>10} {'measured/ideal':>15} {'bound by':>9} "
          f"{'weight sync':>12}")
    for n, mode, sps, ideal, bound, sync in rows:
        print(f"{n:>6} {mode:>6} {sps:>10.0f} {ideal:>10.0f} {sps / ideal:>15.2f} {bound:>9} {sync:>11.1%}")
    by = {(n, m): sps for n, m, sps, *_ in rows}
    for n in sorted({r[0] for r in rows}):
        print(f"actors={n}: async/sync = {by[(n, 'async')] / by[(n, 'sync')]:.2f}x, "
              f"vs 1 actor (async) = {by[(n, 'async')] / by[(rows[0][0], 'async')]:.2f}x")


if __name__ == "__main__":
    main()

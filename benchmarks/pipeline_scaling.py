"""Orchestration efficiency: measured throughput vs. the slowest stage, for 1-16 rollout actors.

Stage-cost simulation (configs/sim_scaling.yaml): rollout, reward and learner stages cost fixed
seconds per sample, and real-size payloads move through the object store and Serve. The ideal step
time is the slowest stage when the loop overlaps (``max_staleness >= 1``) and the sum of the stages
when it is synchronous (``max_staleness=0``); measured / ideal is the orchestration efficiency.
Each variant of the stage costs shows the bound following the slowest stage:

- ``sd3``: the preset's costs, a 512 px SD3 latent per sample (128 KiB), rollout-bound at 1 actor;
- ``reward``: the reward servers 6x slower (reward-bound at every actor count);
- ``learner``: the learner 4x slower (learner-bound at every actor count);
- ``flux``: a FLUX Kontext-sized payload: source + target latents per sample (256 KiB), a decoded
  512 px uint8 image per sample for the judges (768 KiB) and 4.1 MiB of encoded conditions per group.

Also printed per run: the bytes the driver fetched per step (it must not grow with the payload), and
where the driver's own time goes per step.

    python benchmarks/pipeline_scaling.py [--actors 1,2,4,8,16] [--variants sd3,reward,learner,flux]
                                          [--modes async] [--steps 25] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from steady_state import bench_config, run_steady

from infra.config import Config

VARIANTS = {
    "sd3": [],
    "reward": ["rewards.objectives=[{name: simulated_cost, label: cost_a, args: {s_per_sample: 0.003, column: 0}}, "
               "{name: simulated_cost, label: cost_b, args: {s_per_sample: 0.003, column: 1}}]"],
    "learner": ["simulate.train_s_per_sample=0.0032"],
    "flux": ["simulate.sample_bytes=262144", "simulate.image_size=512", "simulate.condition_bytes=4325376"],
}

DRIVER_PHASES = ["driver_idle", "driver_rollout", "driver_submit", "weight_sync", "tracking"]
"""The driver's time per step: waiting; taking rollout results (check, send to the rewards); computing
advantages and submitting a step; publishing weights; recording the step. ``driver_handlers`` is the sum
of the handlers (all but waiting)."""


def ideal_stage_seconds(cfg: Config) -> dict[str, float]:
    """Per-step seconds of each stage if orchestration were free."""
    sim = cfg.simulate
    groups = cfg.rollout.prompts_per_step * cfg.preferences.slots_per_prompt
    b = groups * cfg.rollout.group_size
    # Whole groups go to actors: the busiest actor has ceil(groups / actors) of them.
    rollout = sim.rollout_s_per_sample * math.ceil(groups / cfg.rollout.num_actors) * cfg.rollout.group_size
    # Objectives are scored concurrently, each by its own deployment: the slowest one counts.
    reward = max(o.args.get("s_per_sample", 0.0) for o in cfg.rewards.objectives) * b / cfg.rewards.num_replicas
    return {"rollout": rollout, "reward": reward, "train": sim.train_s_per_sample * b / cfg.learner.world_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--actors", default="1,2,4,8,16")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--modes", default="async", help="async (max_staleness from the preset), sync (0), or both")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            for n in [int(x) for x in args.actors.split(",")]:
                for mode in args.modes.split(","):
                    staleness = [] if mode == "async" else ["loop.max_staleness=0"]
                    cfg = bench_config("configs/sim_scaling.yaml", Path(tmp), f"{variant}_n{n}_{mode}",
                                       VARIANTS[variant] + args.overrides + staleness + [
                                           f"rollout.num_actors={n}", f"loop.steps={args.steps}"])
                    stages = ideal_stage_seconds(cfg)
                    ideal_step = max(stages.values()) if cfg.loop.max_staleness else sum(stages.values())
                    r = run_steady(cfg)
                    rows.append({"variant": variant, "actors": n, "mode": mode, "r": r, "bound": max(stages, key=stages.get),
                                 "ideal_sps": r["samples_per_s"] * r["step_s"] / ideal_step})
                    print(f"{variant} actors={n} {mode}: {r['samples_per_s']:.0f} samples/s, "
                          f"{r['samples_per_s'] / rows[-1]['ideal_sps']:.2f} of ideal", flush=True)
    print("\n| variant | actors | mode | samples/s | ideal | measured / ideal | bound by | driver bytes in / step |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        r = row["r"]
        print(f"| {row['variant']} | {row['actors']} | {row['mode']} | {r['samples_per_s']:.0f} | {row['ideal_sps']:.0f} | "
              f"{r['samples_per_s'] / row['ideal_sps']:.2f} | {row['bound']} | {r['driver_bytes_per_step']:.0f} |")
    print("\nDriver time per step, ms (idle = waiting for results):\n")
    print("| variant | actors | mode | step | " + " | ".join(p.removeprefix("driver_") for p in DRIVER_PHASES) + " |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in DRIVER_PHASES) + " |")
    for row in rows:
        r = row["r"]
        print(f"| {row['variant']} | {row['actors']} | {row['mode']} | {1e3 * r['step_s']:.1f} | "
              + " | ".join(f"{r.get(f'ms_{p}', 0.0):.1f}" for p in DRIVER_PHASES) + " |")
    roles = sorted({k.removeprefix("cpu_ms_") for row in rows for k in row["r"] if k.startswith("cpu_ms_")})
    print("\nCPU time per step, ms, by process (load = CPU seconds / (wall x cores) of the machine):\n")
    print("| variant | actors | mode | step | load | " + " | ".join(roles) + " |")
    print("| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in roles) + " |")
    for row in rows:
        r = row["r"]
        print(f"| {row['variant']} | {row['actors']} | {row['mode']} | {1e3 * r['step_s']:.1f} | {r['cpu_load']:.2f} | "
              + " | ".join(f"{r.get(f'cpu_ms_{k}', 0.0):.1f}" for k in roles) + " |")


if __name__ == "__main__":
    main()

"""Samples/s of the training loop, synchronous (max_staleness=0) vs. overlapped (max_staleness=1).

Runs the same short toy2d job twice in one process on a local Ray and prints, for each, samples/s
and the share of wall time each stage was busy; then the ratio of the two throughputs.

    python benchmarks/loop_overlap.py [--steps 40] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from infra.config import load_config


WARMUP_STEPS = 5


def run_once(staleness: int, steps: int, overrides: list[str], workdir: Path) -> dict[str, float]:
    from pipelines.train import Trainer

    cfg = load_config("configs/toy2d.yaml", overrides + [
        f"loop.steps={steps}", f"loop.max_staleness={staleness}", f"run_dir={workdir / f'run_s{staleness}'}",
        f"tracking.tracking_uri=sqlite:///{workdir / 'mlflow.db'}", "loop.checkpoint_every=100000",
        "loop.scatter_every=100000", "loop.eval_samples=64", "preferences.sweep_points=3"])
    trainer = Trainer(cfg, progress=False)
    try:
        trainer.run()
    finally:
        trainer.close()
    # Steady state only: the first steps pay actor warm-up, the end pays the evaluation sweep.
    wall, busy = trainer.clock.window(WARMUP_STEPS)
    per_step = cfg.rollout.prompts_per_step * cfg.preferences.slots_per_prompt * cfg.rollout.group_size
    out = {"samples_per_s": (steps - 1 - WARMUP_STEPS) * per_step / wall, "wall_s": wall}
    out.update({f"busy_{k}": v / wall for k, v in busy.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {s: run_once(s, args.steps, args.overrides, Path(tmp)) for s in (0, 1)}
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

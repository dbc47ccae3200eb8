"""Shared by the benchmarks: run one short job and measure its steady state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psutil
from process_cpu import ProcessCpu

from infra.config import Config, load_config

WARMUP_STEPS = 5
"""Steps excluded from measurements: actor warm-up, first weight pulls, first Serve batches (and the
last step: the pipeline drains and the final checkpoint is written)."""


def bench_config(preset: str, workdir: Path, tag: str, overrides: list[str]) -> Config:
    """``preset`` + ``overrides`` with the run dir and MLflow DB inside ``workdir``."""
    return load_config(preset, overrides + [
        f"run_dir={workdir / tag}", f"tracking.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
        "loop.checkpoint_every=100000", "loop.scatter_every=100000", "registry.register_on_finish=false"])


def run_steady(cfg: Config) -> dict[str, float]:
    """Samples/s, per-stage busy shares and CPU seconds per role after ``WARMUP_STEPS`` (evaluation
    excluded)."""
    from pipelines.train import Trainer

    with ProcessCpu() as cpu:
        trainer = Trainer(cfg, progress=False)
        try:
            trainer.run()
        finally:
            trainer.close()
    # The last step is left out too: it drains the pipeline and writes the final checkpoint.
    wall, busy = trainer.clock.window(WARMUP_STEPS, -2)
    cpu_s = cpu.window(trainer.clock.marks[WARMUP_STEPS][0], trainer.clock.marks[-2][0])
    per_step = cfg.rollout.prompts_per_step * cfg.preferences.slots_per_prompt * cfg.rollout.group_size
    measured_steps = cfg.loop.steps - 2 - WARMUP_STEPS
    out = {"samples_per_s": measured_steps * per_step / wall, "step_s": wall / measured_steps, "wall_s": wall,
           "driver_bytes_per_step": float(np.mean(trainer.bytes_in[WARMUP_STEPS + 1:-1]))}
    out.update({f"busy_{k}": v / wall for k, v in busy.items()})
    out.update({f"ms_{k}": 1e3 * v / measured_steps for k, v in busy.items()})
    out.update({f"cpu_ms_{k}": 1e3 * v / measured_steps for k, v in cpu_s.items()})
    # 1.0: every core of the machine busy with this job for the whole window.
    out["cpu_load"] = sum(cpu_s.values()) / (wall * psutil.cpu_count())
    return out

"""Starting or joining Ray."""

from __future__ import annotations

import os

from infra.config import RayConfig


def start_ray(ray_cfg: RayConfig) -> None:
    """Join ``ray_cfg.address`` or start a local cluster (no dashboard: nothing to download)."""
    import ray

    if ray.is_initialized():
        return
    # Ship only what workers need: our packages are installed in the same environment.
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if ray_cfg.address:
        ray.init(address=ray_cfg.address, log_to_driver=True)
    else:
        ray.init(num_cpus=ray_cfg.num_cpus, num_gpus=ray_cfg.num_gpus, include_dashboard=False,
                 log_to_driver=True)

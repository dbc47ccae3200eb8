"""Starting or joining Ray."""

from __future__ import annotations

from infra import tensor_transport
from infra.config import RayConfig


def start_ray(ray_cfg: RayConfig) -> None:
    """Join ``ray_cfg.address`` or start a local cluster (no dashboard: nothing to download); every
    process of the job sends tensors through :mod:`infra.tensor_transport`."""
    import ray

    if ray.is_initialized():
        return
    # Workers import this project from the same environment as the driver (installed package);
    # a remote cluster gets it through ray_cluster.yaml's setup commands.
    runtime_env = {"worker_process_setup_hook": tensor_transport.SETUP_HOOK}
    if ray_cfg.address:
        ray.init(address=ray_cfg.address, log_to_driver=True, runtime_env=runtime_env)
    else:
        # address="local": always a fresh cluster, never silently joining another job's.
        ray.init(address="local", num_cpus=ray_cfg.num_cpus, num_gpus=ray_cfg.num_gpus,
                 include_dashboard=False, log_to_driver=True, runtime_env=runtime_env)
    tensor_transport.register()

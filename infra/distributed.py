"""torch.distributed / DeepSpeed process-group setup for learner workers living in Ray actors.

Ray starts the worker processes, so nothing like ``torchrun`` or the ``deepspeed`` launcher sets
the rendezvous environment. The learner group does it by hand:

1. rank 0 calls :func:`pick_master_address` on its own node and hands ``(addr, port)`` to all;
2. every worker calls :func:`init_process_group` with its rank;
3. every worker calls :func:`destroy_process_group` before it is killed.

``ray`` and ``deepspeed`` are imported inside the functions: importing deepspeed takes seconds
and probes the accelerator, and ``import infra.distributed`` should stay cheap for the driver.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Literal

Backend = Literal["auto", "gloo", "nccl"]
BACKENDS = ("auto", "gloo", "nccl")


def pick_master_address() -> tuple[str, int]:
    """This node's IP (as Ray sees it) and a TCP port free on it, for rank 0 to act as MASTER.

    Run it inside the rank-0 actor, not in the driver: the port must be free on rank 0's node.
    The port is released before returning, so another process could take it before
    ``init_process_group`` binds it; rare enough that a retry with a fresh port is the answer.
    """
    import ray

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def resolve_backend(backend: Backend) -> str:
    """``auto`` -> ``nccl`` when this process sees a GPU, else ``gloo``; others pass through."""
    if backend not in BACKENDS:
        raise ValueError(f"learner.backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    backend: Backend = "auto",
    local_rank: int = 0,
    local_world_size: int = 1,
) -> None:
    """Join the process group (torch.distributed and DeepSpeed's comm layer); no-op if joined.

    ``local_rank`` defaults to 0 because a Ray actor with ``num_gpus=1`` sees only its own GPU
    (``CUDA_VISIBLE_DEVICES`` holds one id), so its device is always ``cuda:0``; DeepSpeed calls
    ``set_device(LOCAL_RANK)``. Pass the real local index only where Ray does not isolate GPUs.

    Without a GPU, ``DS_ACCELERATOR=cpu`` is set (unless already set) before deepspeed is first
    imported, which skips its accelerator probe and the "unable to detect" warning.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    resolved = resolve_backend(backend)
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
            raise RuntimeError(
                f"process group already initialised as rank {dist.get_rank()}/{dist.get_world_size()}, "
                f"asked for rank {rank}/{world_size}"
            )
    else:
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.update(
            MASTER_ADDR=str(master_addr),
            MASTER_PORT=str(master_port),
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(local_rank),
            LOCAL_WORLD_SIZE=str(local_world_size),
        )
    import deepspeed

    if deepspeed.get_accelerator().device_name() == "cpu":
        # DeepSpeed's CPU backend otherwise JIT-compiles its shared-memory all-reduce (~35 s with
        # g++ and ninja on first use, cached in ~/.cache/torch_extensions). Only
        # inference_all_reduce uses it; training collectives go through torch.distributed. The
        # probed-ops dict is cached in the module, so this edit is what TorchBackend reads.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # With torch.distributed already up this only wraps it in DeepSpeed's comm backend.
    deepspeed.init_distributed(dist_backend=resolved, auto_mpi_discovery=False, verbose=False)


def destroy_process_group() -> None:
    """Leave the process group; safe to call when it was never initialised."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    ds_comm = sys.modules.get("deepspeed.comm")
    if ds_comm is not None and ds_comm.is_initialized():
        # DeepSpeed's wrapper also drops the groups it cached (data/expert parallel), so a later
        # init_process_group in this process starts clean.
        ds_comm.destroy_process_group()
    else:
        dist.destroy_process_group()

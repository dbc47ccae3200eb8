"""``ray``, ``cluster`` and ``simulate``: reaching Ray, resource pools, weight sync, stage-cost simulation."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from infra.config.base import Strict


class RayConfig(Strict):
    """How to reach Ray."""

    address: str | None = None
    """None starts a local cluster; ``auto`` or ``ray://host:10001`` joins an existing one."""
    num_cpus: int | None = None
    """Local cluster only: CPUs to offer (None = all)."""
    num_gpus: int | None = None
    """Local cluster only: GPUs to offer (logical GPUs are fine for placement tests)."""


class PoolConfig(Strict):
    """How one role's actors are reserved on a cluster: one bundle per actor (rank)."""

    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Placement-group strategy: PACK keeps a pool on few nodes, SPREAD spreads it over many."""
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom resources each bundle needs, e.g. ``{rollout_pool: 1}`` to pin the pool to node types."""
    memory_gb: float | None = Field(None, gt=0)
    """Memory reserved per bundle (None: no reservation)."""
    gpu_memory_gb: float | None = Field(None, gt=0)
    """GPU memory of one card of this pool: ``--dry-run`` refuses a plan whose estimated peak per actor
    (measured on the meta device, ``pipelines.memory_plan``) exceeds it. None: not checked."""


class ClusterConfig(Strict):
    """Resource pools, colocation, back-pressure and fault tolerance."""

    placement_groups: bool = False
    """Reserve the rollout and learner pools as Ray placement groups (gang-scheduled; a pool that
    cannot fit fails at start-up with a clear error). False: plain per-actor resource requests."""
    rollout: PoolConfig = Field(default_factory=PoolConfig)
    """How the rollout pool is reserved."""
    learner: PoolConfig = Field(default_factory=PoolConfig)
    """How the learner pool is reserved."""
    colocate: bool = False
    """Rollout actors share the learner's bundles (fractional GPUs): rollout i goes in bundle
    ``i % learner.world_size`` and its model is offloaded while the learner trains. Needs
    ``loop.max_staleness=0`` and ``placement_groups=true``."""
    max_inflight_groups: int | None = Field(None, ge=1)
    """Back-pressure: groups the driver may have issued but not yet trained (None: as many as
    ``loop.max_staleness`` allows)."""
    weight_sync: Literal["object_store", "collective"] = "object_store"
    """How sampling weights reach rollout actors: ``object_store`` (``ray.put`` once, actors pull) or
    ``collective`` (bucketed float32 broadcast from learner rank 0 over a group of its own, NCCL, or gloo
    when ``learner.backend=gloo`` or without GPUs; received in the background and applied between
    rollouts; re-formed when a rollout actor restarts). Both are verified by digest every sync."""
    weight_sync_bucket_mb: float = Field(64.0, gt=0)
    """Bucket size of the collective broadcast."""
    rollout_max_restarts: int = Field(3, ge=0)
    """A dead rollout actor is restarted up to this many times and its in-flight calls re-run."""
    ready_timeout_s: float = Field(120.0, gt=0)
    """How long to wait for a placement group before failing with the resources it asked for."""


class SimulationConfig(Strict):
    """Stage-cost simulation: stand-in costs replace GPU work so orchestration can be measured on a
    laptop. Real-size sample payloads still travel through the object store. Reward costs are set
    on the objectives themselves (the ``simulated_cost`` reward)."""

    enabled: bool = False
    """Replace sampling and training by their stand-in costs."""
    rollout_s_per_sample: float = Field(0.001, ge=0)
    """Seconds a rollout actor is charged per sample."""
    train_s_per_sample: float = Field(0.001, ge=0)
    """Charged per learner rank on its shard."""
    sample_bytes: int = Field(4096, ge=8)
    """Payload per sample (e.g. a 512px SD3 latent is 16*64*64*2 bytes = 128 KiB)."""
    image_size: int = Field(0, ge=0)
    """Side of a decoded RGB image per sample that the reward servers receive as uint8 (0: none, the
    rewards read the samples; 512: 768 KiB a sample, a judge's input)."""
    condition_bytes: int = Field(0, ge=0)
    """Encoded conditions per group that the learner receives (e.g. a FLUX Kontext source latent and
    text embeddings: 16*64*64*2 + 512*4096*2 bytes, about 4.1 MiB)."""

"""``RolloutActor``: a Ray actor holding a policy copy that samples whole groups.

It is a thin shell: sampling math lives in ``policies.rollout``. Weights arrive by version through
``actors.weight_sync``; an actor applies a new version only between two ``generate`` calls (Ray runs
an actor's calls one at a time), so a rollout never reads weights that are being replaced.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from contextlib import nullcontext

import ray
import torch

from actors.weight_sync import CollectiveGroup, WeightHandle, fetch_weights, state_digest
from infra.config import Config, SamplerConfig
from infra.system_metrics import SystemMetricsTarget, start_system_metrics
from policies.batch import Condition, GroupSpec, RolloutBatch, RolloutMeta
from policies.policy import build_policy
from policies.rollout import rollout_groups, rollout_sweep
from reward_servers.base import RewardInputs, RewardRef


class WeightsBehindError(RuntimeError):
    """A rollout actor was asked to sample with a newer policy version than it holds."""


class RolloutWorker:
    """The actor's body (also usable in-process, which the tests and benchmarks do)."""

    def __init__(self, cfg_json: str, base_checkpoint: str, actor_index: int = 0,
                 system_metrics: SystemMetricsTarget | None = None):
        self.cfg = Config.model_validate_json(cfg_json)
        self.system_metrics = start_system_metrics(system_metrics, f"rollout_{actor_index}")
        torch.set_num_threads(self.cfg.rollout.num_threads)
        # Ray sets CUDA_VISIBLE_DEVICES for an actor given num_gpus, so its GPU is cuda:0.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.policy = build_policy(self.cfg.model, self.cfg.num_objectives, base_checkpoint).eval().to(self.device)
        self.version = 0
        self.actor_index = actor_index
        self.offloaded = False
        self.lock = threading.Lock()
        self.staged: tuple[int, dict[str, torch.Tensor], str] | None = None
        self.digest: str | None = None
        """:func:`state_digest` of the weights of ``self.version`` as they arrived (None: initial weights)."""
        self.digest_s = 0.0
        """Seconds spent digesting weights since the last ``generate`` returned (the check's cost)."""
        self.group: CollectiveGroup | None = None
        self.group_id: int | None = None
        """Which formation of the collective group this actor is in (None: none, e.g. after a restart)."""

    def apply_weights(self, handle: WeightHandle | None) -> int:
        """Load the published weights if they are newer than what this actor holds."""
        if handle is not None and handle.version > self.version:
            state = fetch_weights(handle)
            t0 = time.perf_counter()
            self.digest = state_digest(state)
            self.digest_s += time.perf_counter() - t0
            self.policy.load_trainable_state(state)
            self.version = handle.version
        return self.version

    def adapter_report(self) -> dict[str, int]:
        """How many modules each LoRA target bound in this actor's policy."""
        return self.policy.adapter_report(self.cfg.model.lora_targets)

    @ray.method(concurrency_group="weights")
    def init_weight_group(self, addr: str, port: int, rank: int, world_size: int, backend: str,
                          group_id: int) -> None:
        """Join (formation ``group_id`` of) the collective weight-sync group (``cluster.weight_sync=collective``).
        In the weights thread, so a re-formation never waits for a running rollout."""
        self.group = CollectiveGroup(addr, port, rank, world_size, backend)
        self.group_id = group_id
        self.staging = {n: p.detach().clone() for n, p in self.policy.trainable_named()}

    @ray.method(concurrency_group="weights")
    def weight_group_id(self) -> int | None:
        return self.group_id

    @ray.method(concurrency_group="weights")
    def receive_weights(self, version: int) -> str:
        """Receive a broadcast into a staging copy while a rollout may be running; ``generate``
        applies it before its next batch, so no rollout ever reads half-written weights. Returns the
        digest of what arrived."""
        if self.group is None:
            raise RuntimeError("this rollout actor is in no weight-sync group (restarted?): re-form it first")
        t0 = time.perf_counter()
        digest = self.group.broadcast_state(self.staging, int(self.cfg.cluster.weight_sync_bucket_mb * 2**20))
        with self.lock:
            self.staged = (version, {n: t.clone() for n, t in self.staging.items()}, digest)
            self.digest_s += time.perf_counter() - t0
        return digest

    def _apply_staged(self) -> None:
        with self.lock:
            staged, self.staged = self.staged, None
        if staged is not None and staged[0] > self.version:
            self.policy.load_trainable_state(staged[1])
            self.version, self.digest = staged[0], staged[2]

    def offload(self) -> None:
        """Colocated mode: move the model off the GPU while the learner trains on it."""
        if self.device.type == "cuda":
            self.policy.to("cpu")
            torch.cuda.empty_cache()
        self.offloaded = True

    def generate(self, groups: list[GroupSpec], handle: WeightHandle | None = None,
                 min_version: int = 0) -> RolloutBatch:
        """Sample ``rollout.group_size`` samples for each group with the newest weights offered.

        Raises :class:`WeightsBehindError` when this actor holds an older version than ``min_version``
        (the version published when the call was issued): an actor Ray restarted has its initial
        weights until the collective group re-forms, and must not sample with them.
        """
        start = time.time()
        self._reload()
        self._apply_staged()
        self.apply_weights(handle)
        if self.version < min_version:
            raise WeightsBehindError(f"rollout actor {self.actor_index} holds policy version {self.version}, "
                                     f"the call needs >= {min_version}")
        batch = self._simulated(groups, start) if self.cfg.simulate.enabled else rollout_groups(
            self.policy, groups, self.cfg.rollout.group_size, self.cfg.rollout.sampler, self.version, self.device,
            micro_batch_size=self.cfg.rollout.micro_batch_size)
        batch.weights_digest, batch.digest_s, self.digest_s = self.digest, self.digest_s, 0.0
        return batch

    @ray.method(num_returns=3)
    def generate_parts(self, groups: list[GroupSpec], handle: WeightHandle | None = None,
                       min_version: int = 0) -> tuple[RolloutMeta, RewardInputs, RolloutBatch]:
        """:meth:`generate` for the training loop, as three task results so the samples never pass
        through the driver: the driver reads the ``meta``; the reward servers read the ``RewardInputs``
        (decoded images as uint8, once, here); the learner ranks read the training part (the batch
        without its images, the groups without their source images)."""
        batch = self.generate(groups, handle, min_version)
        rewards = RewardInputs(samples=batch.reward_payload(), prompts=batch.prompts,
                               source_images=batch.source_images())
        part = dataclasses.replace(batch, images=None,
                                   groups=[dataclasses.replace(g, source_image=None) for g in batch.groups])
        payload = part.nbytes() + rewards.samples.nbytes + (
            0 if rewards.source_images is None else rewards.source_images.nbytes)
        meta = RolloutMeta(batch.preferences, batch.group_index, batch.policy_version, batch.sample_seconds,
                           batch.weights_digest, batch.digest_s, payload, RewardRef.of(rewards, None).kinds)
        return meta, rewards, part

    def sample_sweep(self, points: list[list[GroupSpec]], per_group: int, sampler: SamplerConfig,
                     weights: dict[str, torch.Tensor] | None = None, reference: bool = False) -> list[RolloutBatch]:
        """An evaluation sweep: one batch per point, sampled with ``weights`` as the trainable tensors
        (e.g. the learner's EMA; ``reference``: the base model, no weights needed). The sampling
        weights are restored after, so training rollouts may follow; Ray re-runs the call with the
        same ``weights`` on an actor it restarted."""
        self._reload()
        with self.policy.swapped(weights) if weights is not None else nullcontext():
            batches = rollout_sweep(self.policy, points, per_group, sampler, self.device, reference,
                                    self.cfg.rollout.micro_batch_size)
        for b in batches:
            b.conditions = None  # the driver only scores the samples; the encoded prompts stay here
        return batches

    def _reload(self) -> None:
        """Colocated mode: bring the model back to the GPU the learner was using."""
        if self.offloaded:
            self.policy.to(self.device)
            self.offloaded = False

    def _simulated(self, groups: list[GroupSpec], start: float) -> RolloutBatch:
        """Stage-cost simulation: pay the configured time, return real-size random payloads (cut from
        buffers drawn once per actor, so making them costs no more than a real rollout's copy-out)."""
        sim, g = self.cfg.simulate, self.cfg.rollout.group_size
        n = len(groups) * g
        time.sleep(sim.rollout_s_per_sample * n)
        w = torch.tensor([grp.preference for grp in groups]).repeat_interleave(g, 0)
        images = None if not sim.image_size else self._sim_buffer("images", n, (sim.image_size, sim.image_size, 3))
        conditions = None if not sim.condition_bytes else Condition(
            source=self._sim_buffer("conditions", len(groups), (max(1, sim.condition_bytes // 4),)))
        return RolloutBatch(samples=self._sim_buffer("samples", n, (max(1, sim.sample_bytes // 4),)), preferences=w,
                            group_index=torch.arange(len(groups)).repeat_interleave(g), groups=list(groups),
                            policy_version=self.version, sample_seconds=time.time() - start,
                            conditions=conditions, images=images)

    def _sim_buffer(self, kind: str, rows: int, shape: tuple[int, ...]) -> torch.Tensor:
        """``rows`` rows of a random buffer (float32; uint8 for images), grown when a call needs more."""
        buffers = self.__dict__.setdefault("_sim_buffers", {})
        if kind not in buffers or buffers[kind].shape[0] < rows:
            gen = torch.Generator().manual_seed(self.actor_index)
            buffers[kind] = (torch.randint(0, 256, (rows, *shape), generator=gen, dtype=torch.uint8) if kind == "images"
                             else torch.randn((rows, *shape), generator=gen))
        return buffers[kind][:rows].clone()

    def ping(self) -> int:
        return self.version

    def was_restarted(self) -> bool:
        """True in an actor Ray restarted after a crash."""
        return ray.get_runtime_context().was_current_actor_reconstructed

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def shutdown(self) -> None:
        """Stop the system-metrics monitor (logging its last sample) before the driver kills the actor."""
        if self.system_metrics is not None:
            self.system_metrics.finish()


# Weight receives run in their own thread ("weights" group) so a broadcast never waits for a rollout.
RolloutActor = ray.remote(concurrency_groups={"weights": 1})(RolloutWorker)
"""The Ray actor class; ``pipelines.train`` sets its resources with ``.options(...)`` from the rollout
pool's placement group (``infra.pools``)."""

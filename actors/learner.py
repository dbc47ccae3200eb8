"""The DeepSpeed learner: ``LearnerWorker`` (one rank) and ``LearnerGroup`` (all ranks).

Ranks form one torch.distributed group (gloo on CPU, nccl on GPU) and each wraps the policy in a
DeepSpeed engine, which all-reduces gradients (ZeRO stage from config). Every rank keeps identical
copies of the old (sampling) policy and the EMA, updated the same way after each optimizer step.
Those copies are fp32 whatever the learner's precision, and they follow the optimizer's fp32 master
weights (not the bf16 module copy): a bf16 EMA update ``d * e + (1 - d) * theta`` rounds away most
of a small step, as the reference avoids by keeping fp32 copies.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import ray
import torch

from actors.weight_sync import CollectiveGroup, state_digest
from infra.config import Config
from infra.deepspeed_config import deepspeed_config
from infra.distributed import destroy_process_group, init_process_group, pick_master_address
from infra.system_metrics import SystemMetricsTarget, start_system_metrics
from policies.objectives import ema_decay, ema_update, old_policy_decay
from policies.policy import build_policy
from policies.batch import RolloutBatch
from policies.train_step import ShardRequest, TrainShard, micro_loss


class LearnerWorker:
    """One learner rank (the body of the Ray actor)."""

    def __init__(self, cfg_json: str, base_checkpoint: str, rank: int, world_size: int,
                 system_metrics: SystemMetricsTarget | None = None):
        self.cfg = Config.model_validate_json(cfg_json)
        self.base_checkpoint = base_checkpoint
        self.rank, self.world_size = rank, world_size
        self.system_metrics = start_system_metrics(system_metrics, f"learner_{rank}")
        torch.set_num_threads(self.cfg.learner.num_threads)

    def master_endpoint(self) -> tuple[str, int]:
        return pick_master_address()

    def setup(self, master_addr: str, master_port: int) -> None:
        import deepspeed

        lc = self.cfg.learner
        init_process_group(self.rank, self.world_size, master_addr, master_port, lc.backend)
        # No text encoders / VAE here: the shard carries the conditions the rollout actors encoded.
        self.policy = build_policy(self.cfg.model, self.cfg.num_objectives, self.base_checkpoint, encoders=False)
        optimizer = torch.optim.AdamW(self.policy.param_groups(lc.lr, lc.pref_lr_mult), lr=lc.lr,
                                      weight_decay=lc.weight_decay, eps=lc.adam_eps)
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.policy, optimizer=optimizer,
            config=deepspeed_config(lc, self.world_size, lc.micro_batch_size))
        self.device = self.engine.device
        # Old (sampling) and EMA weights stay on the learner's device (swapped in every micro-batch), in
        # fp32; ``policy.swapped`` casts them to the module's dtype for the old-policy forward.
        self.trained_state = self.master_state()
        self.old_state = {k: v.clone() for k, v in self.trained_state.items()}
        self.ema_state = {k: v.clone() for k, v in self.trained_state.items()}

    def master_state(self) -> dict[str, torch.Tensor]:
        """fp32 copies of the trainable weights as the optimizer holds them (DeepSpeed's fp32 master
        under bf16/fp16 ZeRO 1-2; the parameter itself otherwise). Every rank must call it: under ZeRO
        the full tensor is gathered from the ranks' partitions."""
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, p in self.policy.trainable_named():
            master = safe_get_full_fp32_param(p)
            out[name] = (p.detach() if master is None else master).to(self.device, torch.float32, copy=True)
        return out

    def train_step(self, shard: TrainShard | ShardRequest, step: int, num_micro: int, publish: bool = False,
                   *parts: RolloutBatch) -> tuple[dict[str, float], list | None]:
        """One optimizer step over ``shard`` in ``num_micro`` micro-batches (same count on every rank).

        A :class:`ShardRequest` is assembled from ``parts``, the rollout calls' training parts (Ray
        resolves them from the object store before the call). ``publish`` (rank 0): also return
        :meth:`sampling_weights` after the step, so publication costs the driver no extra round trip.
        """
        if isinstance(shard, ShardRequest):
            shard = shard.assemble(list(parts))
        metrics = self._train_step(shard, step, num_micro)
        return metrics, self.sampling_weights() if publish else None

    def _train_step(self, shard: TrainShard, step: int, num_micro: int) -> dict[str, float]:
        if self.cfg.simulate.enabled:
            time.sleep(self.cfg.simulate.train_s_per_sample * len(shard))
            return {"learner/simulated_s": self.cfg.simulate.train_s_per_sample * len(shard)}
        self.policy.train()
        totals: dict[str, float] = {}
        micros = shard.to(self.device).split(num_micro)
        for i, micro in enumerate(micros):
            self.engine.set_gradient_accumulation_boundary(i == len(micros) - 1)
            if len(micro) == 0:
                # A rank with nothing left must still join the gradient all-reduce.
                loss, metrics = sum(p.sum() for _, p in self.policy.trainable_named()) * 0.0, {}
            else:
                loss, metrics = micro_loss(self.policy, self.old_state, micro, self.cfg.algorithm,
                                           self.cfg.rollout.sampler)
            # Micro-batches are weighted by their share of the shard so the step sees the shard mean.
            self.engine.backward(loss * (len(micro) / max(len(shard), 1)), scale_wrt_gas=False)
            if i == len(micros) - 1:
                own_norm = self._grad_norm()
            self.engine.step()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(micro) / max(len(shard), 1)
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None or not math.isfinite(float(grad_norm)):
            grad_norm = own_norm
        totals["learner/grad_norm"] = float(grad_norm)
        a = self.cfg.algorithm
        decay = old_policy_decay(step, a.old_decay_per_step, a.old_decay_max)
        e_decay = ema_decay(step, a.ema_decay, a.ema_schedule)
        self.trained_state = self.master_state()
        ema_update(self.old_state.values(), self.trained_state.values(), decay)
        ema_update(self.ema_state.values(), self.trained_state.values(), e_decay)
        totals["learner/old_decay"] = decay
        if self.cfg.cluster.colocate and self.device.type == "cuda":
            # The rollout actors sharing this GPU reload next: hand back the allocator's cached activation
            # blocks (weights and optimizer states stay resident).
            torch.cuda.empty_cache()
        totals["learner/ema_decay"] = e_decay
        return totals

    def _grad_norm(self) -> float:
        """Norm of the all-reduced gradients (ZeRO 0; under ZeRO 2/3 DeepSpeed reports its own)."""
        grads = [p.grad for _, p in self.policy.trainable_named() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else math.nan

    def _fp32_on_device(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, torch.float32, copy=True) for k, v in state.items()}

    @staticmethod
    def _on_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def init_weight_group(self, addr: str, port: int, world_size: int, backend: str) -> None:
        """Rank 0 only: be the root of the collective weight-sync group."""
        self.weight_group = CollectiveGroup(addr, port, 0, world_size, backend)

    def broadcast_weights(self) -> str:
        """Broadcast the old (sampling) policy to the rollout actors; returns the digest of what was sent."""
        return self.weight_group.broadcast_state(self.old_state, int(self.cfg.cluster.weight_sync_bucket_mb * 2**20))

    def sampling_weights(self) -> list:
        """``[ref, digest]``: the old (sampling) policy, put once into the object store by this rank, and
        its :func:`state_digest` (a list, so Ray does not resolve the ref)."""
        state = self._on_cpu(self.old_state)
        return [ray.put(state), state_digest(state)]

    def adapter_report(self) -> dict[str, int]:
        return self.policy.adapter_report(self.cfg.model.lora_targets)

    def export_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Trainable (the fp32 master after the last step), old and EMA weights on the CPU, all fp32
        (identical on every rank; rank 0 alone may answer: nothing here is a collective)."""
        return {"trainable": self._on_cpu(self.trained_state), "old": self._on_cpu(self.old_state),
                "ema": self._on_cpu(self.ema_state)}

    def import_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        # Under bf16 the module rounds these; the optimizer's own fp32 master comes from load_optimizer.
        self.policy.load_trainable_state(state["trainable"])
        self.trained_state = self._fp32_on_device(state["trainable"])
        self.old_state = self._fp32_on_device(state["old"])
        self.ema_state = self._fp32_on_device(state["ema"])

    def save_optimizer(self, directory: str, tag: str) -> None:
        """DeepSpeed's own (per-rank, ZeRO-aware) checkpoint of the engine, frozen base excluded."""
        self.engine.save_checkpoint(directory, tag=tag, save_latest=False, exclude_frozen_parameters=True)

    def load_optimizer(self, directory: str, tag: str) -> None:
        self.engine.load_checkpoint(directory, tag=tag, load_module_strict=False)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def shutdown(self) -> None:
        if self.system_metrics is not None:
            self.system_metrics.finish()
        destroy_process_group()


LearnerActor = ray.remote(LearnerWorker)


class LearnerDiedError(RuntimeError):
    """A learner rank died; the job must be resumed from its last checkpoint."""


class LearnerGroup:
    """All learner ranks, driven as one by the single controller."""

    def __init__(self, cfg: Config, base_checkpoint: str, actor_options: list[dict] | None = None,
                 system_metrics: SystemMetricsTarget | None = None):
        self.cfg = cfg
        n = cfg.learner.world_size
        opts = actor_options or [{"num_cpus": cfg.learner.num_cpus_per_worker,
                                  "num_gpus": cfg.learner.num_gpus_per_worker}] * n
        cfg_json = cfg.model_dump_json()
        self.workers = [LearnerActor.options(**opts[r]).remote(cfg_json, base_checkpoint, r, n, system_metrics)
                        for r in range(n)]
        addr, port = ray.get(self.workers[0].master_endpoint.remote())
        ray.get([w.setup.remote(addr, port) for w in self.workers])

    def train_step(self, shard: TrainShard, step: int) -> dict[str, float]:
        """Split ``shard`` over the ranks, run one optimizer step, average the ranks' metrics."""
        shards = shard.split(len(self.workers))
        return self.collect(self.submit([(s, []) for s in shards], step), step)[0]

    def submit(self, shards: list[tuple[TrainShard | ShardRequest, list[ray.ObjectRef]]], step: int,
               publish: bool = False) -> list[ray.ObjectRef]:
        """Start one optimizer step, rank ``r`` on ``shards[r]`` (a shard, or a request and the refs of the
        training parts it covers); returns at once. The ranks run their calls in order, so a step
        submitted while another runs starts the moment it ends."""
        num_micro = max(1, math.ceil(max(len(s) for s, _ in shards) / self.cfg.learner.micro_batch_size))
        return [w.train_step.remote(s, step, num_micro, publish and r == 0, *refs)
                for r, (w, (s, refs)) in enumerate(zip(self.workers, shards))]

    def collect(self, pending: list[ray.ObjectRef], step: int) -> tuple[dict[str, float], tuple | None]:
        """The ranks' metrics of a submitted step, averaged, and rank 0's ``(weights ref, digest)`` if it
        published; a rank that died raises :class:`LearnerDiedError`."""
        try:
            results = ray.get(pending)
        except ray.exceptions.RayActorError as err:
            # A rank that dies takes the collective with it; the driver's checkpoint is the recovery point.
            raise LearnerDiedError(f"a learner rank died during step {step} ({type(err).__name__}); "
                                   "restart the job with --resume to continue from its last checkpoint") from err
        metrics = [m for m, _ in results]
        published = results[0][1]
        return ({k: sum(m[k] for m in metrics) / len(metrics) for k in metrics[0]},
                None if published is None else tuple(published))

    def sampling_weights(self) -> tuple[ray.ObjectRef, str]:
        """The sampling policy in the object store (put by rank 0) and its digest."""
        ref, digest = ray.get(self.workers[0].sampling_weights.remote())
        return ref, digest

    def adapter_reports(self) -> list[dict[str, int]]:
        """Every rank's :meth:`Policy.adapter_report`."""
        return ray.get([w.adapter_report.remote() for w in self.workers])

    def export_state(self) -> dict:
        return ray.get(self.workers[0].export_state.remote())

    def import_state(self, state: dict) -> None:
        ray.get([w.import_state.remote(state) for w in self.workers])

    def save_optimizer(self, directory: Path, tag: str) -> None:
        ray.get([w.save_optimizer.remote(str(directory), tag) for w in self.workers])

    def load_optimizer(self, directory: Path, tag: str) -> None:
        ray.get([w.load_optimizer.remote(str(directory), tag) for w in self.workers])

    def shutdown(self) -> None:
        for w in self.workers:
            try:
                ray.get(w.shutdown.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - a dead rank must not block the others' teardown
                pass
            ray.kill(w)

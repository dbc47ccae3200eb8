"""``paretoslider train``: the single controller of the training loop.

The driver owns every decision — step counter, which groups to sample, preference draws, staleness,
checkpoints and the MLflow run — and the workers only compute. Samples never pass through it: a
rollout call leaves its results in the object store, and the driver moves refs, versions, ``B x M``
scores and advantages:

    rollout actors --refs--> reward servers (read the payload) --scores--> driver (advantages)
          ^                                                                    |
          |               learner ranks (each reads its rows' training parts) <+
          +------------------ versioned sampling weights ---------------------+

Every stage reacts to results as they complete (:class:`pipelines.inflight.Events`): a call is
scored the moment it returns, so scoring step k+1 overlaps training step k; a fully scored step
goes to the learner at once, queued behind the running one when nothing has to see that one's
weights alone; rollouts run up to ``loop.max_staleness`` policy versions ahead. Each group has a
deterministic id ``(epoch, prompt, slot)`` and seed; the set of trained ids is checkpointed, so a
resumed run trains every group exactly once.
"""

from __future__ import annotations

import collections
import concurrent.futures
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch
from rich.console import Console
from tqdm import tqdm

from actors.learner import LearnerGroup
from actors.rollout_actor import RolloutActor, WeightsBehindError
from actors.weight_sync import ObjectStoreWeightSync, WeightHandle, WeightSyncError
from infra.checkpoint import load_latest_checkpoint, save_checkpoint
from infra.config import Config, dump_config
from infra.pools import build_pools, release_pools
from infra.ray_init import start_ray
from infra.tracking import Tracker
from pipelines.inflight import Chunk, Events, ScoredStep, StepWork
from pipelines.evaluate import SampleFn, Sweep, eval_rewards_client, log_sweep, print_front, sweep_model, sweep_sampler
from pipelines.pretrain import ensure_base
from pipelines.plots import sample_figure
from policies.batch import RolloutBatch, RolloutMeta, concat_batches
from policies.objectives import reward_units
from policies.preferences import plan_groups, simplex_grid, step_seed
from policies.prompts import prompt_set
from policies.train_step import batch_advantages, shard_requests
from reward_servers.base import RewardRef
from reward_servers.client import PendingScores, RewardClient, reward_step_metrics

console = Console()


def preference_buckets(num_objectives: int) -> np.ndarray:
    """Coarse simplex points used to report rewards per preference bucket."""
    return simplex_grid(num_objectives, 3)


def bucket_name(w: np.ndarray) -> str:
    return "w_" + "-".join(f"{x:.1f}" for x in w)


@dataclass
class StageClock:
    """Wall time each stage was busy, for throughput and overlap reporting."""

    busy: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))
    marks: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    """``(wall time, busy totals)`` at the end of every step, to measure steady-state windows."""

    def add(self, stage: str, seconds: float) -> None:
        self.busy[stage] += seconds

    def mark(self) -> None:
        self.marks.append((time.perf_counter(), dict(self.busy)))

    def window(self, first: int, last: int = -1) -> tuple[float, dict[str, float]]:
        """Wall seconds and per-stage busy seconds from the end of step ``first`` to the end of step ``last``."""
        (t0, b0), (t1, b1) = self.marks[first], self.marks[last]
        return t1 - t0, {k: v - b0.get(k, 0.0) for k, v in b1.items()}


@dataclass
class LoopState:
    """Everything the driver needs to resume (saved in every checkpoint)."""

    step: int = 0
    """Next step to train."""
    version: int = 0
    """Policy version of the learner (number of optimizer steps taken)."""
    consumed: list[tuple[int, int, int]] = field(default_factory=list)
    """Group ids the learner has trained on, in order."""
    mlflow_run_id: str | None = None
    first_units: list[float] | None = None
    """``algorithm.reward_scale: first_batch_std``: each objective's std over the first trained batch,
    the run's fixed reward units from then on."""


class Trainer:
    """Wires the roles together for one job; ``run()`` is the training loop."""

    def __init__(self, cfg: Config, resume: bool = False, progress: bool = True):
        # Resolved once, here: workers run in their own working directories (and on other nodes), so a
        # relative run_dir would put each learner rank's DeepSpeed states where --resume cannot find them.
        cfg = cfg.model_copy(update={"run_dir": str(Path(cfg.run_dir).resolve())})
        self.cfg, self.progress = cfg, progress
        self.run_dir = Path(cfg.run_dir)
        self.state = LoopState()
        self.restored_metrics: list[tuple] = []
        """The staged metrics of the checkpoint resumed from (logged if the crash lost them)."""
        prompt_set(cfg)  # a bad prompt set fails here, before pre-training and Ray start
        restored = load_latest_checkpoint(self.run_dir) if resume else None
        if not resume and (self.run_dir / "checkpoints" / "latest.json").exists():
            raise FileExistsError(
                f"run_dir '{self.run_dir}' already holds checkpoints: pass --resume to continue it, "
                "or set run_dir to a new directory")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(cfg))
        base = ensure_base(cfg, progress)
        self.base_checkpoint = str(Path(base).resolve()) if Path(base).exists() else str(base)  # a hub id stays

        start_ray(cfg.ray)
        self.reward_latency_s: dict[str, float] = {}
        """Each objective's reward-server latency in the last scored step (logged per step)."""
        self.rewards: RewardClient | None = None
        self.eval_rewards: RewardClient | None = None
        """The held-out ``evaluation.rewards`` (deployed at the first sweep), if set."""
        self.learner: LearnerGroup | None = None
        self.actors: list = []
        self.rollout_pool = self.learner_pool = None
        self.tracker: Tracker | None = None
        self.handle: WeightHandle | None = None
        self.sync = ObjectStoreWeightSync()
        self.group_id = 0
        """Formation of the collective weight-sync group (re-formed when a rollout actor restarts)."""
        self.clock = StageClock()
        self.bytes_in: list[int] = []
        """``loop/driver_bytes_in`` of every step this run trained (the benchmarks read it)."""
        self.learner_free_at = 0.0
        """When the learner finished its last step (a step queued behind it starts then)."""
        self.scoring = ThreadPoolExecutor(max_workers=32, thread_name_prefix="score")
        """Waits for the reward servers' answers (one thread per call in flight; retries happen there)."""
        self.published: dict[int, str] = {}
        """Digest of each published policy version (the recent ones), as the learner sent it."""
        try:
            self._start(restored)
        except BaseException:
            # A failed start (an unplaceable pool, a learner that cannot load) must not leave the reward
            # app, placement groups or actors holding a shared cluster's GPUs.
            if self.tracker is not None:
                self.tracker.end("FAILED")
            self.close()
            raise

    def _start(self, restored: tuple[int, dict] | None) -> None:
        """Take the job's resources: the MLflow run, pools (gang-scheduled, fail fast), then the workers.

        The run comes first because every worker logs its system metrics into it from its constructor:
        an actor Ray restarts, or a Serve replica that replaces another, then monitors again unasked.
        """
        cfg = self.cfg
        resumed_run = restored[1]["loop"]["mlflow_run_id"] if restored is not None else ""
        self.tracker = Tracker.start(cfg, run_id=resumed_run or None)
        metrics = (self.tracker.monitor_system("driver", cfg.tracking.system_metrics_interval_s)
                   if cfg.tracking.system_metrics else None)
        self.rollout_pool, self.learner_pool = build_pools(cfg)
        self.rewards = RewardClient(cfg.rewards, system_metrics=metrics)
        self.learner = LearnerGroup(cfg, self.base_checkpoint,
                                    [self.learner_pool.options(r) for r in range(cfg.learner.world_size)], metrics)
        cfg_json = cfg.model_dump_json()
        restarts = cfg.cluster.rollout_max_restarts
        # A restarted actor re-runs its pending calls; each call carries its weight handle.
        self.actors = [RolloutActor.options(**self.rollout_pool.options(i), max_restarts=restarts,
                                            max_task_retries=restarts)
                       .remote(cfg_json, self.base_checkpoint, i, metrics) for i in range(cfg.rollout.num_actors)]
        self._check_adapters()
        if restored is not None:
            self._restore(*restored)
        self.state.mlflow_run_id = self.tracker.run_id
        self.tracker.log_missing_metrics(self.restored_metrics)
        if cfg.cluster.weight_sync == "collective":
            self._join_weight_group()
        self.publish_weights()
        groups_per_step = cfg.rollout.prompts_per_step * cfg.preferences.slots_per_prompt
        cap = cfg.cluster.max_inflight_groups
        # Steps whose groups may be out at once: bounded by staleness and by back-pressure.
        self.max_steps_ahead = min(cfg.loop.max_staleness + 1, (cap or 10**9) // groups_per_step)

    # ---- checkpoints -------------------------------------------------------------------------
    def _restore(self, step: int, blob: dict) -> None:
        self.state = LoopState(step=int(blob["loop"]["step"]), version=int(blob["loop"]["version"]),
                               consumed=[tuple(x) for x in blob["loop"]["consumed"].tolist()],
                               mlflow_run_id=blob["loop"]["mlflow_run_id"] or None,
                               first_units=blob["loop"].get("first_units"))
        self.learner.load_optimizer(self.run_dir / "checkpoints" / "learner", blob["loop"]["learner_tag"])
        self.learner.import_state(blob["weights"])
        self.restored_metrics = [tuple(m) for m in blob.get("metrics", [])]
        console.print(f"resumed from step {self.state.step} (checkpoint {step}), "
                      f"{len(self.state.consumed)} groups already trained")

    def save(self) -> None:
        tag = f"step_{self.state.step:08d}"
        self.learner.save_optimizer(self.run_dir / "checkpoints" / "learner", tag)
        consumed = torch.tensor(self.state.consumed, dtype=torch.long).reshape(-1, 3)
        save_checkpoint(self.run_dir, self.state.step, {
            "loop": {"step": self.state.step, "version": self.state.version, "consumed": consumed,
                     "mlflow_run_id": self.state.mlflow_run_id or "", "learner_tag": tag,
                     "base": self.base_checkpoint, "first_units": self.state.first_units},
            "weights": self.learner.export_state(),
            "metrics": list(self.tracker.staged),
        })
        prune_learner_checkpoints(self.run_dir)
        # Only now: a crash before this line resumes from the previous checkpoint and trains these
        # steps again, and the history must not hold both trainings' values.
        self.tracker.commit_metrics()

    # ---- weight sync ---------------------------------------------------------------------------
    def _check_adapters(self) -> None:
        """Every role's adapters bound the same modules, and every LoRA target bound some: otherwise
        weights would sync into nothing while the loop "trains" (verl-omni #552, #658)."""
        learner = self.learner.adapter_reports()
        actors = ray.get([a.adapter_report.remote() for a in self.actors])
        unbound = [t for t, n in learner[0].items() if n == 0]
        if unbound:
            raise WeightSyncError(f"model.lora_targets {unbound} bound no module of the {self.cfg.model.kind} "
                                  f"backbone (bound: {learner[0]}); fix model.lora_targets")
        for who, report in [(f"learner rank {r}", x) for r, x in enumerate(learner)] + \
                           [(f"rollout actor {i}", x) for i, x in enumerate(actors)]:
            if report != learner[0]:
                raise WeightSyncError(f"{who}'s adapters bound {report}, learner rank 0's {learner[0]}: "
                                      "the roles built different policies")

    def _join_weight_group(self) -> None:
        """Learner rank 0 (root) and every rollout actor form (a new formation of) the broadcast group."""
        gpus = self.cfg.learner.num_gpus_per_worker > 0 and self.cfg.rollout.num_gpus_per_actor > 0
        # The learner's backend, when set, is the group's too (gloo over logical GPUs rehearses a GPU plan).
        backend = self.cfg.learner.backend if self.cfg.learner.backend != "auto" else ("nccl" if gpus else "gloo")
        root = self.learner.workers[0]
        addr, port = ray.get(root.master_endpoint.remote())
        world = 1 + len(self.actors)
        self.group_id += 1
        ray.get([root.init_weight_group.remote(addr, port, world, backend)]
                + [a.init_weight_group.remote(addr, port, i + 1, world, backend, self.group_id)
                   for i, a in enumerate(self.actors)])

    def publish_weights(self, sent: tuple[ray.ObjectRef, str] | None = None) -> None:
        """Make the learner's sampling (old) policy, as version ``state.version + 1``, the one the
        next rollouts use, and record its digest. ``sent``: the ``(ref, digest)`` learner rank 0 put
        after its step (object-store sync); else it is asked for them. The collective group is
        re-formed first if a rollout actor restarted since it formed (a restarted actor is in no group)."""
        t0 = time.perf_counter()
        version = self.state.version + 1
        if self.cfg.cluster.weight_sync == "collective":
            members = ray.get([a.weight_group_id.remote() for a in self.actors])
            if any(m != self.group_id for m in members):
                console.print(f"rollout actors {[i for i, m in enumerate(members) if m != self.group_id]} "
                              "restarted: re-forming the weight-sync group")
                self._join_weight_group()
            root = self.learner.workers[0]
            sent, *received = ray.get([root.broadcast_weights.remote()]
                                      + [a.receive_weights.remote(version) for a in self.actors])
            for i, digest in enumerate(received):
                self._check_digest(f"rollout actor {i}", version, digest, sent)
        else:
            ref, sent = sent or self.learner.sampling_weights()
            self.handle = self.sync.publish(version, ref)
        self.published = {v: d for v, d in self.published.items() if v >= version - self.cfg.loop.max_staleness - 1}
        self.published[version] = sent
        self.clock.add("weight_sync", time.perf_counter() - t0)

    @staticmethod
    def _check_digest(who: str, version: int, got: str | None, sent: str) -> None:
        if got != sent:
            raise WeightSyncError(f"{who} holds policy version {version} with weights digest {got}, but the "
                                  f"learner published {sent}: the weight sync corrupted or dropped tensors")

    # ---- the loop: every stage reacts to the previous one's results as they complete -------------
    def run(self) -> Sweep | None:
        cfg, st = self.cfg, self.state
        total = cfg.loop.steps
        self.in_flight: collections.deque[StepWork] = collections.deque()
        self.events = Events()
        self.next_issue = st.step
        self.wall0, self.samples_done = time.perf_counter(), 0
        self.bar = tqdm(total=total, initial=st.step, desc="train", disable=not self.progress,
                        mininterval=0.5 if sys.stderr.isatty() else 15.0)
        try:
            self.issue_ahead()
            while st.step < total:
                t0 = time.perf_counter()
                idle = self.events.wait()
                self.clock.add("driver_idle", idle)
                self.clock.add("driver_handlers", time.perf_counter() - t0 - idle)
            self.bar.close()
            result = None if cfg.simulate.enabled else self.sweep("eval")
            if cfg.registry.register_on_finish and not cfg.simulate.enabled:
                self.register()
            self.tracker.end("FINISHED")
            return result
        except KeyboardInterrupt:
            self.tracker.end("KILLED")
            raise
        except Exception:
            self.tracker.end("FAILED")
            raise

    def issue_ahead(self) -> None:
        """Issue the rollouts of every step that bounded staleness and back-pressure allow."""
        while self.next_issue < self.cfg.loop.steps and len(self.in_flight) < self.max_steps_ahead:
            self.in_flight.append(self.issue_rollouts(self.next_issue))
            self.next_issue += 1

    def issue_rollouts(self, step: int) -> StepWork:
        """Split the step's groups over the actors, each share in calls of ``rollout.groups_per_call``
        groups; each call carries the newest weight handle and the version it must sample with at least."""
        groups = plan_groups(self.cfg, step)
        work = StepWork(step, [])
        offset = 0
        for i, share in enumerate(np.array_split(np.arange(len(groups)), len(self.actors))):
            per_call = self.cfg.rollout.groups_per_call or max(1, len(share))
            for j in range(0, len(share), per_call):
                part = [groups[k] for k in share[j:j + per_call]]
                chunk = Chunk(step, i, part, offset, len(part) * self.cfg.rollout.group_size, [])
                offset += chunk.size
                work.chunks.append(chunk)
                self.call_rollout(work, chunk)
        return work

    def call_rollout(self, work: StepWork, chunk: Chunk) -> None:
        chunk.refs = self.actors[chunk.actor].generate_parts.remote(chunk.groups, self.handle, self.state.version + 1)
        self.events.on(chunk.refs[0].future(), lambda f: self.on_rollout(work, chunk, f))

    def on_rollout(self, work: StepWork, chunk: Chunk, done: Future) -> None:
        """A call's metadata arrived: check its weights against what the learner published and send
        its reward payload to the reward servers by reference. A call whose actor restarted without
        the current weights (collective sync) is sampled again once the group has re-formed, after
        the learner's pending steps (so the version the group re-forms with is the learner's)."""
        t0 = time.perf_counter()
        try:
            meta: RolloutMeta = done.result()
        except WeightsBehindError:
            self.drain_learner()
            self.publish_weights()  # re-forms the group and sends the restarted actor the current version
            self.call_rollout(work, chunk)
            return
        self._check_digest(f"rollout actor {chunk.actor}", meta.policy_version, meta.weights_digest,
                           self.published.get(meta.policy_version, "(a version no longer recorded)"))
        self.clock.add("weight_check", meta.digest_s)
        self.clock.add("rollout", meta.sample_seconds)
        work.bytes_in += meta.nbytes()
        chunk.meta = meta
        pending = self.score(chunk)
        start = time.perf_counter()
        self.events.on(self.scoring.submit(pending.result), lambda f: self.on_scores(work, chunk, pending, start, f))
        self.clock.add("driver_rollout", time.perf_counter() - t0)

    def score(self, chunk: Chunk) -> PendingScores:
        """Start scoring a call's samples where they lie in the object store."""
        return self.rewards.submit(RewardRef(chunk.refs[1:2], chunk.size, chunk.meta.reward_kinds))

    def on_scores(self, work: StepWork, chunk: Chunk, pending: PendingScores, start: float, done: Future) -> None:
        chunk.scores = np.asarray(done.result(), dtype=np.float32)  # a reward server that gave up raises here
        self.clock.add("reward", time.perf_counter() - start)
        work.bytes_in += chunk.scores.nbytes
        for label, seconds in pending.latency_s.items():
            work.latency_s[label] = max(seconds, work.latency_s.get(label, 0.0))
        self.submit_ready()

    def submit_ready(self) -> None:
        """Hand every fully scored step, in order, to the learner as far as it may take them."""
        for work in self.in_flight:
            if work.training is None:
                if not work.scored or not self.learner_accepts():
                    return
                self.submit_training(work)

    def learner_accepts(self) -> bool:
        """Whether a further step may go to the learner now. One step may queue behind the running one
        (the ranks start it the moment the first ends), unless the running one is followed by
        something that must see its weights alone: a checkpoint, a sweep, a collective broadcast or,
        colocated, the rollouts' turn on the GPUs."""
        queued = [w for w in self.in_flight if w.training is not None]
        if not queued:
            return True
        cfg, running = self.cfg, queued[-1].step + 1
        return (len(queued) == 1 and cfg.cluster.weight_sync == "object_store" and not cfg.cluster.colocate
                and running % cfg.loop.checkpoint_every != 0 and running != cfg.loop.steps
                and not (cfg.evaluation.every and running % cfg.evaluation.every == 0))

    def submit_training(self, work: StepWork) -> None:
        """Advantages over the whole step's groups, then each rank gets its rows and the training parts
        of the calls they come from (never through the driver)."""
        t0 = time.perf_counter()
        cfg = self.cfg
        scored = work.result()
        # The version the learner will hold when it starts this step: one more per step queued before it.
        trains_at = self.state.version + sum(w.training is not None for w in self.in_flight)
        work.staleness = trains_at - scored.policy_version
        if work.staleness > cfg.loop.max_staleness:
            raise RuntimeError(f"batch of step {work.step} is {work.staleness} versions old "
                               f"(max_staleness={cfg.loop.max_staleness})")
        al = cfg.algorithm
        if al.reward_scale == "first_batch_std" and self.state.first_units is None:
            # Steps are submitted in order, so this is the run's first step, whatever the actor count.
            self.state.first_units = reward_units(scored.rewards, "batch_std").tolist()
        first = None if self.state.first_units is None else torch.tensor(self.state.first_units)
        adv, lam = batch_advantages(scored.rewards, scored.preferences, scored.group_index,
                                    self.rewards.directions, al.scalarisation, al.adv_std, al.reward_scale,
                                    al.smooth_temperature, first)
        seed = step_seed(cfg.loop.seed, work.step)
        requests = shard_requests([(c.offset, c.size, c.refs[2]) for c in work.chunks], cfg.learner.world_size,
                                  adv, lam, seed + torch.arange(len(scored)), seed)
        if cfg.cluster.colocate:
            ray.get([a.offload.remote() for a in self.actors])  # free the shared GPUs for the learner
        work.submitted_at = time.perf_counter()
        work.pending = self.learner.submit(requests, work.step, publish=cfg.cluster.weight_sync == "object_store")
        work.training = [ref.future() for ref in work.pending]
        for future in work.training:
            self.events.on(future, lambda f: self.complete_trained())
        self.clock.add("driver_submit", time.perf_counter() - t0)

    def drain_learner(self) -> None:
        """Block until every step submitted to the learner has trained (and complete them)."""
        for work in list(self.in_flight):
            if work.training is not None:
                concurrent.futures.wait(work.training)
        self.complete_trained()

    def complete_trained(self) -> None:
        """Complete the steps whose optimizer step finished, oldest first."""
        while self.in_flight and self.in_flight[0].trained:
            self.complete_step(self.in_flight.popleft())
            self.submit_ready()
            self.issue_ahead()

    def complete_step(self, work: StepWork) -> None:
        """Publish the new weights, then record, checkpoint and sweep the step as the loop's history."""
        cfg, st = self.cfg, self.state
        metrics, sent = self.learner.collect(work.pending, work.step)
        now = time.perf_counter()
        self.clock.add("train", now - max(work.submitted_at, self.learner_free_at))
        self.learner_free_at = now
        st.version += 1
        self.publish_weights(sent)
        t0 = time.perf_counter()
        scored = work.result()
        self.reward_latency_s = work.latency_s
        metrics["loop/staleness"] = float(work.staleness)
        metrics.update(self.reward_metrics(scored))
        st.consumed.extend(g.gid for g in scored.groups)
        st.step = work.step + 1
        self.samples_done += len(scored)
        metrics["loop/samples_per_s"] = self.samples_done / (time.perf_counter() - self.wall0)
        metrics["loop/policy_version"] = float(st.version)
        if not cfg.simulate.enabled and (st.step % cfg.loop.scatter_every == 0 or st.step == cfg.loop.steps):
            self.tracker.log_figure(sample_figure(self.fetch_step(work, scored), cfg, f"step {st.step}"),
                                    f"scatter/step_{st.step:06d}.png")
        # What the driver fetched this step (rollout metadata and scores, plus a figure's samples):
        # it does not grow with the samples, which stay in the object store.
        metrics["loop/driver_bytes_in"] = float(work.bytes_in)
        self.bytes_in.append(work.bytes_in)
        for k, v in self.clock.busy.items():
            metrics[f"time/{k}_s"] = v
        if st.step % cfg.loop.log_every == 0:
            self.tracker.stage_metrics(metrics, st.step)
        if st.step % cfg.loop.checkpoint_every == 0 or st.step == cfg.loop.steps:
            self.save()
        self.clock.add("tracking", time.perf_counter() - t0)
        if cfg.evaluation.every and st.step % cfg.evaluation.every == 0 and st.step < cfg.loop.steps \
                and not cfg.simulate.enabled:
            t0 = time.perf_counter()
            self.sweep(f"eval/step_{st.step:06d}")
            self.clock.add("eval", time.perf_counter() - t0)
        self.clock.mark()
        self.bar.update(1)
        self.bar.set_postfix({n: f"{metrics[f'reward/{n}']:.2f}" for n in cfg.objective_names})

    def fetch_step(self, work: StepWork, scored: ScoredStep) -> RolloutBatch:
        """The step's samples (and decoded images) fetched into the driver, for a figure."""
        parts, payloads = ray.get([c.refs[2] for c in work.chunks]), ray.get([c.refs[1] for c in work.chunks])
        batch = concat_batches(parts)
        batch.groups, batch.rewards = scored.groups, scored.rewards
        if payloads[0].samples.dtype == np.uint8:  # decoded images, channels first on the wire
            batch.images = torch.from_numpy(np.concatenate([np.moveaxis(p.samples, -3, -1) for p in payloads]))
        work.bytes_in += batch.nbytes()
        return batch

    def reward_metrics(self, batch: ScoredStep) -> dict[str, float]:
        r, w = batch.rewards.numpy(), batch.preferences.numpy()
        out = {}
        names = self.cfg.objective_names
        for m, name in enumerate(names):
            out[f"reward/{name}"] = float(r[:, m].mean())
        out.update(reward_step_metrics(r, names, self.reward_latency_s))
        buckets = preference_buckets(len(names))
        nearest = np.argmin(((w[:, None, :] - buckets[None]) ** 2).sum(-1), axis=1)
        for b, bw in enumerate(buckets):
            sel = nearest == b
            if sel.any():
                for m, name in enumerate(names):
                    out[f"reward_by_pref/{name}/{bucket_name(bw)}"] = float(r[sel, m].mean())
        return out

    def sweep(self, folder: str) -> Sweep:
        """Sweep the EMA model across the slider on the rollout actors (the driver holds no model),
        score it as ``paretoslider evaluate`` would, log it under ``folder`` (metrics at this step)."""
        ema = ray.put(self.learner.export_state()["ema"])
        if self.cfg.evaluation.rewards is not None and self.eval_rewards is None:
            self.eval_rewards = eval_rewards_client(self.cfg)
        scorer = self.eval_rewards or self.rewards
        result = sweep_model(self.actor_sampler(ema), self.cfg, lambda inputs: scorer.submit(inputs).result())
        step = self.state.step
        log_sweep(self.tracker, result, self.cfg, step, f"{self.cfg.name}: EMA model at step {step}", folder)
        print_front(result, self.cfg.objective_names, f"mean reward ± CI half-width per swept preference (EMA, step {step})")
        return result

    def actor_sampler(self, weights: ray.ObjectRef) -> SampleFn:
        """Sweep points sampled on the rollout actors with ``weights``, a contiguous share of the points
        each (one weight swap per actor), in point order."""
        sampler = sweep_sampler(self.cfg)

        def sample(points: list, per_group: int, reference: bool) -> list[RolloutBatch]:
            shares = [s for s in np.array_split(np.arange(len(points)), len(self.actors)) if len(s)]
            refs = [self.actors[a].sample_sweep.remote([points[i] for i in share], per_group, sampler,
                                                       None if reference else weights, reference)
                    for a, share in enumerate(shares)]
            return [batch for part in ray.get(refs) for batch in part]

        return sample

    def register(self) -> None:
        """Log the EMA model of the last checkpoint as an MLflow pyfunc model and register it."""
        from pipelines.registry import register_model

        version = register_model(self.run_dir, tracking_uri=self.cfg.tracking.tracking_uri)
        self.tracker.set_tags({"paretoslider.registered_model": f"models:/{version.name}/{version.version}"})
        console.print(f"registered models:/{version.name}/{version.version}")

    def close(self) -> None:
        """Release whatever the job holds (also after a start that failed half-way)."""
        self.scoring.shutdown(wait=False, cancel_futures=True)
        if self.learner is not None:
            self.learner.shutdown()
        if self.actors:  # each logs its last system-metrics sample; ray.wait: a dead actor raises nothing here
            ray.wait([a.shutdown.remote() for a in self.actors], num_returns=len(self.actors), timeout=30)
        for a in self.actors:
            ray.kill(a, no_restart=True)
        for client in (self.rewards, self.eval_rewards):
            if client is not None:
                client.close()
        release_pools(*(p for p in (self.rollout_pool, self.learner_pool) if p is not None))


def prune_learner_checkpoints(run_dir: Path) -> None:
    """Drop DeepSpeed tags whose driver checkpoint was pruned (the pointer has already moved)."""
    ckpt = run_dir / "checkpoints"
    kept = {p.stem for p in ckpt.glob("step_*.pt")}
    for tag_dir in (ckpt / "learner").glob("step_*"):
        if tag_dir.is_dir() and tag_dir.name not in kept:
            shutil.rmtree(tag_dir, ignore_errors=True)


def train(cfg: Config, resume: bool = False, progress: bool = True) -> Sweep | None:
    """Run one training job end to end (pre-training the base if needed); ``None`` when simulating."""
    trainer = Trainer(cfg, resume=resume, progress=progress)
    try:
        return trainer.run()
    finally:
        trainer.close()

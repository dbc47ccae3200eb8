"""``RolloutActor``: a Ray actor holding a policy copy that samples whole groups.

It is a thin shell: sampling math lives in ``policies.rollout``. Weights arrive by version through
``actors.weight_sync``; an actor applies a new version only between two ``generate`` calls (Ray runs
an actor's calls one at a time), so a rollout never reads weights that are being replaced.
"""

from __future__ import annotations

import os
import time

import ray
import torch

from actors.weight_sync import WeightHandle, fetch_weights
from infra.config import Config
from policies.batch import GroupSpec, RolloutBatch
from policies.policy import build_policy
from policies.rollout import rollout_groups


class RolloutWorker:
    """The actor's body (also usable in-process, which the tests and benchmarks do)."""

    def __init__(self, cfg_json: str, base_checkpoint: str, actor_index: int = 0):
        self.cfg = Config.model_validate_json(cfg_json)
        torch.set_num_threads(max(1, int(os.environ.get("PARETOSLIDER_ROLLOUT_THREADS", "1"))))
        # Ray sets CUDA_VISIBLE_DEVICES for an actor given num_gpus, so its GPU is cuda:0.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.policy = build_policy(self.cfg.model, self.cfg.num_objectives, base_checkpoint).eval().to(self.device)
        self.version = 0
        self.actor_index = actor_index

    def apply_weights(self, handle: WeightHandle | None) -> int:
        """Load the published weights if they are newer than what this actor holds."""
        if handle is not None and handle.version > self.version:
            self.policy.load_trainable_state(fetch_weights(handle))
            self.version = handle.version
        return self.version

    def generate(self, groups: list[GroupSpec], handle: WeightHandle | None = None) -> RolloutBatch:
        """Sample ``rollout.group_size`` samples for each group with the newest weights offered."""
        start = time.time()
        self.apply_weights(handle)
        batch = rollout_groups(self.policy, groups, self.cfg.rollout.group_size, self.cfg.rollout.sampler,
                               self.version, self.device)
        batch.meta.update(actor=self.actor_index, started=start, finished=time.time())
        return batch

    def ping(self) -> int:
        return self.version


RolloutActor = ray.remote(RolloutWorker)
"""The Ray actor class; resources are set with ``.options(...)`` in ``actors.launch``."""

"""What the training loop has in flight: rollout calls, steps, and the futures it waits on.

The driver of ``pipelines.train`` holds no samples: a rollout call leaves its results in the object
store as three task results (``RolloutMeta``, the reward payload, the training part) and the driver
keeps their refs here, with the ``B x M`` scores once the reward servers answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from policies.batch import GroupSpec, RolloutMeta


@dataclass
class Chunk:
    """One rollout call of a step: its groups, where its samples sit in the step, its results."""

    step: int
    actor: int
    groups: list[GroupSpec]
    offset: int
    """Index of the call's first sample in the step (calls are concatenated in issue order)."""
    size: int
    refs: list[ray.ObjectRef]
    """``[meta, reward payload, training part]``: the task results of ``RolloutActor.generate_parts``."""
    meta: RolloutMeta | None = None
    scores: np.ndarray | None = None
    """``[size, M]`` raw scores, once the reward servers answered."""


@dataclass
class ScoredStep:
    """A step as the driver holds it: ids, preferences, versions and rewards, never the samples."""

    groups: list[GroupSpec]
    preferences: torch.Tensor
    """``[B, M]``."""
    group_index: torch.Tensor
    """``[B]`` long: index into ``groups``."""
    rewards: torch.Tensor
    """``[B, M]`` raw scores per objective."""
    policy_version: int
    """The oldest version any of the step's samples was drawn with."""

    def __len__(self) -> int:
        return self.group_index.shape[0]


@dataclass
class StepWork:
    """One step from its rollouts being issued to its optimizer step completing."""

    step: int
    chunks: list[Chunk]
    latency_s: dict[str, float] = field(default_factory=dict)
    """Each objective's slowest answer among the step's calls."""
    training: list[Future] | None = None
    """The learner ranks' futures, once the step is submitted."""
    pending: list[ray.ObjectRef] | None = None
    staleness: int = 0
    submitted_at: float = 0.0
    bytes_in: int = 0
    """Bytes of the step's results the driver fetched (metadata, scores; a figure's samples)."""

    @property
    def scored(self) -> bool:
        return all(c.scores is not None for c in self.chunks)

    @property
    def trained(self) -> bool:
        return self.training is not None and all(f.done() for f in self.training)

    def result(self) -> ScoredStep:
        """The scored step, the calls' rows concatenated in issue order (the step's sample order)."""
        groups: list[GroupSpec] = []
        index = []
        for c in self.chunks:
            index.append(c.meta.group_index + len(groups))
            groups.extend(c.groups)
        return ScoredStep(groups, torch.cat([c.meta.preferences for c in self.chunks]), torch.cat(index),
                          torch.as_tensor(np.concatenate([c.scores for c in self.chunks]), dtype=torch.float32),
                          min(c.meta.policy_version for c in self.chunks))


class Events:
    """Futures the loop waits on, each with what to do once it completes."""

    def __init__(self) -> None:
        self._handlers: dict[Future, Callable[[Future], None]] = {}

    def on(self, future: Future, handler: Callable[[Future], None]) -> None:
        self._handlers[future] = handler

    def wait(self) -> float:
        """Block until at least one future completes, then run the handlers of all that did, in the
        order they were registered; returns the seconds spent blocked (the driver's idle time)."""
        if not self._handlers:
            raise RuntimeError("the training loop waits on nothing: no rollout, reward or learner call in flight")
        t0 = time.perf_counter()
        done, _ = wait(list(self._handlers), return_when=FIRST_COMPLETED)
        idle = time.perf_counter() - t0
        for future in [f for f in self._handlers if f in done]:
            self._handlers.pop(future)(future)
        return idle

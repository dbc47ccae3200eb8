"""Test-only rewards, registered on import (the test files import this module by its bare name).

Serve replicas cannot import it; ``test_serve_app`` ships it to them by value.
"""

from __future__ import annotations

import math
import time

import numpy as np

from reward_servers.base import RewardInputs
from reward_servers.registry import register


@register("fake_prompt_length")
class PromptLength:
    """Length of each prompt: needs prompts, and shows they stay aligned with samples through batching."""

    name = "fake_prompt_length"
    inputs = ("samples", "prompts")
    range = (0.0, math.inf)
    direction = "max"

    def score(self, batch: RewardInputs) -> np.ndarray:
        return np.array([len(p) for p in batch.prompts], dtype=np.float32)


@register("fake_faulty")
class Faulty:
    """Sleeps ``sleep_s``, then raises (``raise_error``) or scores 0; counts its calls."""

    name = "fake_faulty"
    inputs = ("samples",)
    range = (0.0, 1.0)
    direction = "max"

    def __init__(self, raise_error: bool = False, sleep_s: float = 0.0):
        self.raise_error = raise_error
        self.sleep_s = sleep_s
        self.calls = 0

    def score(self, batch: RewardInputs) -> np.ndarray:
        self.calls += 1
        time.sleep(self.sleep_s)
        if self.raise_error:
            raise ZeroDivisionError("bad batch")
        return np.zeros(len(batch), dtype=np.float32)


@register("fake_replica_pid")
class ReplicaPid:
    """Scores every sample with the process id of the replica that scored it (after ``sleep_s``, so that
    concurrent requests overlap), to show which replicas a batch reached."""

    name = "fake_replica_pid"
    inputs = ("samples",)
    range = (0.0, math.inf)
    direction = "max"

    def __init__(self, sleep_s: float = 0.3):
        self.sleep_s = sleep_s

    def score(self, batch: RewardInputs) -> np.ndarray:
        import os

        time.sleep(self.sleep_s)
        return np.full(len(batch), os.getpid(), dtype=np.float64)

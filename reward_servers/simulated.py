"""A stand-in reward for stage-cost simulation: costs ``s_per_sample`` of wall time per sample.

It lets the orchestration (batching, routing, overlap) be measured without reward models: the
score is a cheap deterministic function of the sample so advantages still vary.
"""

from __future__ import annotations

import math
import time

import numpy as np

from reward_servers.base import RewardInputs
from reward_servers.registry import register


@register("simulated_cost")
class SimulatedCost:
    """Sleeps ``s_per_sample * B`` and returns each sample's value at flat index ``column`` (mod its size)."""

    name = "simulated_cost"
    inputs = ("samples",)
    takes_uint8 = True  # a stand-in judge: converting images to float would be a cost nobody configured
    range = (-math.inf, math.inf)
    direction = "max"

    def __init__(self, s_per_sample: float = 0.0005, column: int = 0):
        if s_per_sample < 0:
            raise ValueError(f"'s_per_sample' must be >= 0, got {s_per_sample}")
        self.s_per_sample = s_per_sample
        self.column = column

    def score(self, batch: RewardInputs) -> np.ndarray:
        time.sleep(self.s_per_sample * len(batch))
        flat = batch.samples.reshape(len(batch), -1)
        return flat[:, self.column % flat.shape[1]].astype(np.float32)

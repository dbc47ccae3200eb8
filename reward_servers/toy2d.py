"""Analytic rewards on 2-D points (``samples`` is ``[B, 2]``), for the toy2d world.

Two ``toy2d_target`` objectives with far-apart targets conflict: no point is close to both, so the
Pareto front is the segment between the targets. ``toy2d_axis`` gives linear objectives (fronts
of known shape) for checks of the sweep and the hypervolume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from reward_servers.base import RewardInputs
from reward_servers.registry import register

TARGET_KINDS = ("neg_distance", "gaussian")


def _vector2(value: Sequence[float], arg: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        v = None
    if v is None or v.shape != (2,) or not np.isfinite(v).all():
        raise ValueError(f"'{arg}' must be two finite numbers [x, y], got {value!r}")
    return v


def _points(batch: RewardInputs, reward: str) -> np.ndarray:
    x = batch.samples
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"{reward} scores 2-D points [B, 2], got samples of shape {x.shape}")
    return x.astype(np.float64)


@register("toy2d_target")
class Toy2dTarget:
    """Closeness to ``target``, with distances measured in units of ``scale``.

    ``neg_distance``: ``-||x - target|| / scale`` in ``(-inf, 0]``;
    ``gaussian``: ``exp(-||x - target||^2 / (2 scale^2))`` in ``[0, 1]``.
    """

    name = "toy2d_target"
    inputs = ("samples",)
    direction = "max"

    def __init__(self, target: Sequence[float], kind: str = "neg_distance", scale: float = 1.0):
        if kind not in TARGET_KINDS:
            raise ValueError(f"'kind' must be one of {list(TARGET_KINDS)}, got {kind!r}")
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"'scale' must be a positive number, got {scale!r}")
        self.target = _vector2(target, "target")
        self.kind = kind
        self.scale = float(scale)
        self.range = (-math.inf, 0.0) if kind == "neg_distance" else (0.0, 1.0)

    def score(self, batch: RewardInputs) -> np.ndarray:
        d = np.linalg.norm(_points(batch, self.name) - self.target, axis=1) / self.scale
        out = -d if self.kind == "neg_distance" else np.exp(-0.5 * d**2)
        return out.astype(np.float32)


@register("toy2d_axis")
class Toy2dAxis:
    """Coordinate along the unit vector ``axis / ||axis||``, clipped to ``[low, high]``."""

    name = "toy2d_axis"
    inputs = ("samples",)
    direction = "max"

    def __init__(self, axis: Sequence[float] = (1.0, 0.0), low: float = -math.inf, high: float = math.inf):
        v = _vector2(axis, "axis")
        norm = float(np.linalg.norm(v))
        if norm == 0:
            raise ValueError(f"'axis' must be a non-zero vector, got {axis!r}")
        if not all(isinstance(b, (int, float)) for b in (low, high)) or not low < high:
            raise ValueError(f"'low' and 'high' must be numbers with low < high, got {low!r}, {high!r}")
        self.axis = v / norm
        self.range = (float(low), float(high))

    def score(self, batch: RewardInputs) -> np.ndarray:
        return np.clip(_points(batch, self.name) @ self.axis, *self.range).astype(np.float32)

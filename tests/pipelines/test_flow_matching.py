"""The shapes pre-training loss: the rectified-flow target, and dropped edit instructions keep the source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.pretrain_shapes import LatentDataset, flow_matching_step
from policies.batch import Condition


def zero_velocity(x, t, w, cond):
    return torch.zeros_like(x)


def dataset(latents: torch.Tensor, sources: torch.Tensor | None) -> LatentDataset:
    return LatentDataset(latents, sources, np.ones(len(latents), dtype=int), Condition(text=torch.randn(2, 3, 4)))


def loss(data: LatentDataset, drop: bool) -> float:
    idx = np.arange(len(data.latents))
    return float(flow_matching_step(zero_velocity, data, idx, np.full(len(idx), drop), torch.Generator().manual_seed(0)))


def test_loss_is_the_rectified_flow_target_and_dropped_edits_target_the_source():
    targets, sources = torch.randn(6, 4, 8, 8), torch.randn(6, 4, 8, 8)
    # With v = 0 the loss is E||eps - x0||^2, computed independently with the same noise draws.
    gen = torch.Generator().manual_seed(0)
    torch.sigmoid(torch.randn(6, generator=gen))
    eps = torch.randn(targets.shape, generator=gen)
    assert loss(dataset(targets, None), drop=False) == approx(((eps - targets) ** 2).mean())
    edits = dataset(targets, sources)
    assert loss(edits, drop=False) == approx(((eps - targets) ** 2).mean())
    # No instruction, no edit: the target is the source image's latents.
    assert loss(edits, drop=True) == approx(((eps - sources) ** 2).mean())
    assert loss(dataset(targets, None), drop=True) == loss(dataset(targets, None), drop=False)


def approx(value: torch.Tensor):
    return pytest.approx(float(value), rel=1e-6)

"""DiffusionNFT's training noise levels: U(0, 1) or the sampler's own grid, per sample seed."""

from __future__ import annotations

import torch

from policies.samplers import time_grid
from policies.train_step import nft_noise


def test_uniform_levels_are_the_seeded_uniform_draws():
    seeds = torch.tensor([3, 11])
    t, eps = nft_noise(seeds, 4, (2,), torch.float32)
    for i, s in enumerate(seeds.tolist()):
        gen = torch.Generator().manual_seed(s)
        assert torch.equal(t[4 * i: 4 * i + 4], torch.rand(4, generator=gen).clamp(1e-3, 1.0))
        assert torch.equal(eps[4 * i: 4 * i + 4], torch.randn((4, 2), generator=gen))


def test_grid_levels_are_distinct_grid_points_and_independent_of_sharding():
    grid = time_grid(25, shift=3.0)[:-1]  # 25 non-zero points
    seeds = torch.arange(400)
    t, _ = nft_noise(seeds, 24, (2,), torch.float32, grid)
    per_sample = t.view(400, 24)
    for row in per_sample:
        hit = torch.isclose(row[:, None], grid[None, :], atol=0, rtol=0)
        assert (hit.sum(1) == 1).all() and (hit.sum(0) <= 1).all()  # each t a grid point, none twice
    # A sample's levels depend on its own seed only: the same whatever else is in its shard.
    alone, _ = nft_noise(seeds[7:8], 24, (2,), torch.float32, grid)
    assert torch.equal(alone, per_sample[7])
    # 24 of 25 without replacement: each point is left out with probability 1/25. Over 400 samples the
    # count of omissions of one point is Binomial(400, 0.04): mean 16, sd 3.9; 5 sd bounds it.
    omitted = 400 - torch.isclose(t[:, None], grid[None, :], atol=0, rtol=0).sum(0)
    assert omitted.sum() == 400 and ((omitted - 16).abs() <= 20).all()
    # The mean level is the grid's mean (0.67 for SD3.5's grid vs 0.5 for U(0, 1)).
    assert abs(float(t.mean()) - float(grid.mean())) < 0.01 and float(grid.mean()) > 0.6

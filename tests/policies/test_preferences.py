"""Preference sampling on the simplex, seeds, and sweep grids."""

import numpy as np

from policies.preferences import PreferenceMix, group_seed, preference_for_group, sample_preference, simplex_grid


def test_two_objective_mix_has_corners_and_interior():
    rng = np.random.default_rng(0)
    ws = np.array([sample_preference(2, PreferenceMix(corner_prob=0.1), rng) for _ in range(5000)])
    assert np.allclose(ws.sum(1), 1) and (ws >= 0).all()
    corners = np.isclose(ws.max(1), 1.0).mean()
    assert 0.08 < corners < 0.12
    assert 0.45 < ws[:, 0].mean() < 0.55


def test_three_objective_mix_fractions():
    rng = np.random.default_rng(1)
    ws = np.array([sample_preference(3, PreferenceMix(vertex_prob=0.5, edge_prob=0.35), rng) for _ in range(6000)])
    nonzero = (ws > 0).sum(1)
    assert np.allclose(ws.sum(1), 1)
    assert abs((nonzero == 1).mean() - 0.5) < 0.03
    assert abs((nonzero == 2).mean() - 0.35) < 0.03
    assert abs((nonzero == 3).mean() - 0.15) < 0.03


def test_group_seeds_deterministic_and_distinct():
    assert group_seed(0, 3, 1, 2) == group_seed(0, 3, 1, 2)
    seeds = {group_seed(0, e, p, s) for e in range(5) for p in range(5) for s in range(3)}
    assert len(seeds) == 75
    mix = PreferenceMix()
    assert np.array_equal(preference_for_group(3, mix, 42), preference_for_group(3, mix, 42))


def test_simplex_grid():
    g2 = simplex_grid(2, 11)
    assert g2.shape == (11, 2) and np.allclose(g2[:, 0], np.linspace(0, 1, 11))
    g3 = simplex_grid(3, 11)
    assert g3.shape == (66, 3) and np.allclose(g3.sum(1), 1)

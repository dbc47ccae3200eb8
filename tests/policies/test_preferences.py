"""Preference sampling on the simplex, seeds, and sweep grids."""

import numpy as np

from conftest import tiny_cfg
from policies.preferences import (PreferenceMix, group_seed, plan_groups, preference_for_group, sample_preference,
                                 simplex_grid, slot_preference)


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


def test_antithetic_slots_rotate_one_draw_per_bundle(tmp_path):
    mix = PreferenceMix()
    # Two objectives: slot 1 is 1 - w of slot 0's own draw; slot 2 starts the next bundle with its own draw.
    w0 = preference_for_group(2, mix, group_seed(7, 3, 5, 0))
    assert np.array_equal(slot_preference(2, mix, 7, 3, 5, 0, antithetic=True), w0)
    assert np.array_equal(slot_preference(2, mix, 7, 3, 5, 1, antithetic=True), w0[::-1])
    assert np.array_equal(slot_preference(2, mix, 7, 3, 5, 2, antithetic=True),
                          preference_for_group(2, mix, group_seed(7, 3, 5, 2)))
    # Three objectives: each slot of the bundle puts the first draw's weights on other objectives.
    v0 = preference_for_group(3, mix, group_seed(7, 3, 5, 0))
    bundle = [slot_preference(3, mix, 7, 3, 5, k, antithetic=True) for k in range(3)]
    assert [list(b) for b in bundle] == [list(v0), [v0[2], v0[0], v0[1]], [v0[1], v0[2], v0[0]]]
    assert np.allclose(sum(bundle), v0.sum())  # every objective gets every weight once per bundle
    # Off, every slot draws alone (the paper's sampling, bit for bit).
    assert np.array_equal(slot_preference(2, mix, 7, 3, 5, 1, antithetic=False),
                          preference_for_group(2, mix, group_seed(7, 3, 5, 1)))
    # In a step's plan: the two slots of each prompt mirror each other; the noise seeds stay per slot.
    cfg = tiny_cfg(tmp_path, "base.pt")
    cfg = cfg.model_copy(update={"preferences": cfg.preferences.model_copy(update={"antithetic": True})})
    groups = plan_groups(cfg, 4)
    for a, b in zip(groups[::2], groups[1::2], strict=True):
        assert a.prompt_idx == b.prompt_idx and (a.slot, b.slot) == (0, 1) and a.seed != b.seed
        assert b.preference == a.preference[::-1]

"""Front metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from policies.fronts import (count_dominated, dominates, hypervolume, mean_interval, nearest_distance,
                             non_dominated, reference_point, sample_hypervolume, slider_monotonicity)
from policies.preferences import simplex_grid


def test_hypervolume_2d_staircase():
    # Three unit-wide columns of heights 3, 2, 1 above (0, 0): 3 + 2 + 1.
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(pts, np.zeros(2)) == pytest.approx(6.0)
    # A dominated point and a point below the reference add nothing.
    more = np.vstack([pts, [[1.5, 1.5], [4.0, -1.0]]])
    assert hypervolume(more, np.zeros(2)) == pytest.approx(6.0)
    # Reference (-1, -1): columns [-1, 1] 4 high, [1, 2] 3 high, [2, 3] 2 high -> 8 + 3 + 2.
    assert hypervolume(pts, -np.ones(2)) == pytest.approx(13.0)


def test_hypervolume_3d_boxes():
    assert hypervolume(np.array([[2.0, 3.0, 4.0]]), np.zeros(3)) == pytest.approx(24.0)
    # Boxes 2x2x1 and 1x1x3 overlap in a 1x1x1 cube: 4 + 3 - 1.
    pts = np.array([[2.0, 2.0, 1.0], [1.0, 1.0, 3.0]])
    assert hypervolume(pts, np.zeros(3)) == pytest.approx(6.0)
    # Inclusion-exclusion over three boxes against the same reference.
    pts3 = np.vstack([pts, [[3.0, 1.0, 1.0]]])
    # New box 3x1x1 = 3; it overlaps box 1 in 2x1x1, box 2 in 1x1x1, and both at once in 1x1x1.
    assert hypervolume(pts3, np.zeros(3)) == pytest.approx(6.0 + 3 - 2 - 1 + 1)
    with pytest.raises(ValueError, match="objectives"):
        hypervolume(pts, np.zeros(2))


def test_front_extraction_and_dominance():
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [1.5, 1.5], [3.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    assert non_dominated(pts).tolist() == [True, True, False, True, True, False]
    assert not dominates(pts[1], pts[4])[0, 0]  # equal points do not dominate each other
    assert count_dominated(pts[[1]], pts) == 2  # (1.5, 1.5) and (0, 0)
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(200, 3))
    mask = non_dominated(cloud)
    for i in range(len(cloud)):  # brute force: kept iff no other point is >= everywhere and > somewhere
        beaten = any((cloud[j] >= cloud[i]).all() and (cloud[j] > cloud[i]).any() for j in range(len(cloud)))
        assert mask[i] == (not beaten)


def test_sweep_grid():
    g2 = simplex_grid(2, 11)
    np.testing.assert_allclose(g2[:, 0], np.linspace(0, 1, 11), atol=1e-12)
    np.testing.assert_allclose(g2.sum(1), 1.0)
    g3 = simplex_grid(3, 4)  # spacing 1/3: C(3 + 2, 2) = 10 points, one interior
    assert g3.shape == (10, 3) and len({tuple(r) for r in g3}) == 10
    assert ((g3 > 0).all(1)).sum() == 1
    np.testing.assert_allclose(g3.sum(1), 1.0)


def test_monotonicity_interval_reference_and_drift():
    w = simplex_grid(2, 5)
    r = np.stack([w[:, 0] ** 2, -w[:, 0]], axis=1)  # r_1 rises with w_1; r_2 rises with w_2
    np.testing.assert_allclose(slider_monotonicity(w, r), [1.0, 1.0])
    r_bad = r.copy()
    r_bad[:, 0] = [0, 3, 1, 2, 4]
    assert slider_monotonicity(w, r_bad)[0] == pytest.approx(stats.spearmanr(w[:, 0], r_bad[:, 0]).statistic)
    assert np.isnan(slider_monotonicity(w, np.ones_like(r))).all()

    x = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [6.0, 10.0]])
    mean, half = mean_interval(x)
    np.testing.assert_allclose(mean, [3.0, 10.0])
    # t(0.975, 3) = 3.182446; sd = sqrt(14/3)
    assert half[0] == pytest.approx(3.182446 * np.sqrt(14 / 3) / 2, rel=1e-5) and half[1] == 0

    base = np.array([[0.0, -4.0], [1.0, -3.0], [2.0, -2.0], [3.0, -1.0], [4.0, 0.0]])
    ref = reference_point(base, quantile=0.0, margin=0.5)
    np.testing.assert_allclose(ref, [0.0 - 0.5 * 2.0, -4.0 - 0.5 * 2.0])

    ref_set = np.array([[0.0, 0.0], [10.0, 0.0]])
    assert nearest_distance(np.array([[0.0, 3.0], [6.0, 0.0]]), ref_set, chunk=1) == pytest.approx((3 + 4) / 2)


def test_sample_hypervolume_credits_compromises_not_mixtures():
    ref = np.zeros(2)
    mixture = np.array([[1.0, 0.0], [0.0, 1.0]])  # mean (0.5, 0.5), but no sample is good at both
    compromise = np.array([[0.3, 0.3], [0.3, 0.3]])
    assert sample_hypervolume(mixture, ref) == 0.0
    assert sample_hypervolume(compromise, ref) == pytest.approx(0.09)
    assert hypervolume(mixture.mean(0), ref) > hypervolume(compromise.mean(0), ref)
    assert sample_hypervolume(np.array([[2.0, 3.0], [-1.0, 5.0]]), np.array([1.0, 1.0])) == pytest.approx(2 / 2)


def test_max_jump_scores_a_switch_at_one_and_an_even_slider_at_one_step():
    from policies.fronts import slider_max_jump

    w = simplex_grid(2, 11)  # w_1 = 1, 0.9, ..., 0 (any order)
    even = np.stack([w[:, 0], 1 - w[:, 0] ** 2], axis=1)  # r_1 moves 0.1 per step; r_2 unevenly
    switch = np.where(w[:, :1] > 0.5, [[1.0, 0.0]], [[0.0, 1.0]])
    np.testing.assert_allclose(slider_max_jump(w, even), [0.1, 0.19])  # 1 - 0.9^2 = 0.19 at the w_1 = 1 end
    np.testing.assert_allclose(slider_max_jump(w, switch), [1.0, 1.0])
    flat = np.ones((11, 2))
    assert np.isnan(slider_max_jump(w, flat)).all()
    # 3 objectives on the lattice with 4 points per edge: r = w moves 1/3 of its range per step.
    w3 = simplex_grid(3, 4)
    np.testing.assert_allclose(slider_max_jump(w3, w3), [1 / 3] * 3)


def test_sample_front_is_the_brute_force_non_dominated_set_of_the_pool():
    from policies.fronts import sample_front

    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(150, 3)), rng.normal(size=(80, 3)) + 0.3]
    parts[1][:2] = parts[0][:2]  # duplicates across parts are kept once
    pool = np.concatenate(parts)
    expected = {tuple(p) for p in pool
                if not any((q >= p).all() and (q > p).any() for q in pool)}
    got = sample_front(parts)
    assert len(got) == len({tuple(p) for p in got}) == len(expected)
    assert {tuple(p) for p in got} == expected


def test_coverage_is_the_best_share_of_one_settings_samples_reaching_each_front_point():
    from policies.fronts import front_coverage

    # A linear front at 11 points. A switch: its settings give one end or the other, and its middle
    # setting a 50/50 mixture of the ends.
    t = np.linspace(0, 1, 11)
    front = np.stack([t, 1 - t], axis=1)
    ends = np.array([[0.0, 1.0], [1.0, 0.0]])
    switch = [ends[[0]], ends[[1]], ends]
    assert front_coverage(switch, front, tol=0.05) == pytest.approx(2 / 11)
    assert front_coverage([front], front, tol=0.0) == pytest.approx(1 / 11)  # one setting, each sample once
    # An even slider at 6 settings (step 0.2) reaches every point within half its step, not within less.
    slider = [front[[i]] for i in range(0, 11, 2)]
    assert front_coverage(slider, front, tol=0.1) == 1.0
    assert front_coverage(slider, front, tol=0.09) == pytest.approx(6 / 11)
    # Brute force on random clouds: per front point, the best share over settings of samples s with
    # s_m >= f_m - tol * span_m for every m.
    rng = np.random.default_rng(2)
    scale = np.array([1.0, 10.0, 0.1])
    f = rng.normal(size=(40, 3)) * scale
    settings = [rng.normal(size=(n, 3)) * scale + rng.normal(size=3) for n in (50, 1500, 7)]
    span = f.max(0) - f.min(0)
    best = [max(np.mean([all(si[m] >= fi[m] - 0.1 * span[m] for m in range(3)) for si in s]) for s in settings)
            for fi in f]
    assert front_coverage(settings, f, tol=0.1) == pytest.approx(np.mean(best))


def test_seed_spread_is_the_std_over_seeds_per_point():
    from policies.fronts import seed_spread

    means = np.array([[[0.0, 1.0], [2.0, 2.0]], [[2.0, 1.0], [2.0, 6.0]]])  # [S=2, P=2, M=2]
    np.testing.assert_allclose(seed_spread(means), [[1.0, 0.0], [0.0, 2.0]])

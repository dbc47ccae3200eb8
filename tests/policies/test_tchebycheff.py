"""Tchebycheff scalarisation against a numpy loop, and what it changes on a concave front."""

import numpy as np
import pytest
import torch

from policies.objectives import advantage_terms, tchebycheff_advantages


def numpy_tchebycheff(r: np.ndarray, w: np.ndarray, g: np.ndarray) -> np.ndarray:
    lo, hi = r.min(0), r.max(0)
    s = np.array([-max(w[i, m] * (1 - (r[i, m] - lo[m]) / (hi[m] - lo[m] + 1e-4)) for m in range(r.shape[1]))
                  for i in range(len(r))])
    return numpy_group_normalise(s, g)


def numpy_group_normalise(s: np.ndarray, g: np.ndarray) -> np.ndarray:
    out = np.zeros_like(s)
    for k in np.unique(g):
        sel = g == k
        out[sel] = (s[sel] - s[sel].mean()) / (s[sel].std() + 1e-4)
    return out[:, None]


def test_tchebycheff_matches_numpy_reference():
    rng = np.random.default_rng(3)
    r = rng.normal(size=(30, 3))
    w = rng.dirichlet([1, 1, 1], size=5).repeat(6, 0)
    g = np.repeat(np.arange(5), 6)
    got = tchebycheff_advantages(torch.tensor(r), torch.tensor(w), torch.tensor(g)).numpy()
    np.testing.assert_allclose(got, numpy_tchebycheff(r, w, g), rtol=1e-9, atol=1e-9)
    adv, lam = advantage_terms(torch.tensor(r), torch.tensor(w), torch.tensor(g), "tchebycheff")
    assert adv.shape == (30, 1) and lam.tolist() == [[1.0]] * 30
    with pytest.raises(ValueError, match="tchebycheff"):
        advantage_terms(torch.tensor(r), torch.tensor(w), torch.tensor(g), "pbi")


def test_tchebycheff_prefers_the_middle_of_a_concave_front_where_linear_prefers_an_end():
    # Gaussian closeness to two targets along a segment: r = exp(-d^2 / 2), a concave front.
    pos = np.linspace(0, 1, 9)
    r = np.stack([np.exp(-0.5 * (3 * pos) ** 2), np.exp(-0.5 * (3 * (1 - pos)) ** 2)], axis=1)
    w = np.full_like(r, 0.5)
    g = np.zeros(len(r), dtype=np.int64)
    cheb, _ = advantage_terms(torch.tensor(r), torch.tensor(w), torch.tensor(g), "tchebycheff")
    early, _ = advantage_terms(torch.tensor(r), torch.tensor(w), torch.tensor(g), "early")
    assert int(cheb[:, 0].argmax()) == 4  # the midpoint
    assert int(early[:, 0].argmax()) in (0, 8)  # an end
    # A one-hot w reduces to that objective alone, as early scalarisation does.
    w1 = np.tile([1.0, 0.0], (9, 1))
    c1, _ = advantage_terms(torch.tensor(r), torch.tensor(w1), torch.tensor(g), "tchebycheff")
    e1, _ = advantage_terms(torch.tensor(r), torch.tensor(w1), torch.tensor(g), "early")
    assert np.argsort(c1[:, 0].numpy()).tolist() == np.argsort(e1[:, 0].numpy()).tolist()


def numpy_smooth_tchebycheff(r: np.ndarray, w: np.ndarray, g: np.ndarray, mu: float) -> np.ndarray:
    lo, hi = r.min(0), r.max(0)
    s = np.array([-mu * np.log(sum(np.exp(w[i, m] * (1 - (r[i, m] - lo[m]) / (hi[m] - lo[m] + 1e-4)) / mu)
                                   for m in range(r.shape[1]))) for i in range(len(r))])
    return numpy_group_normalise(s, g)


def test_smooth_tchebycheff_matches_numpy_and_spans_max_to_weighted_sum():
    rng = np.random.default_rng(4)
    r = rng.normal(size=(30, 3))
    w = rng.dirichlet([1, 1, 1], size=5).repeat(6, 0)
    g = np.repeat(np.arange(5), 6)
    t = [torch.tensor(x) for x in (r, w, g)]
    smooth, lam = advantage_terms(*t, "smooth_tchebycheff", mu=0.2)
    np.testing.assert_allclose(smooth.numpy(), numpy_smooth_tchebycheff(r, w, g, 0.2), rtol=1e-9, atol=1e-9)
    assert lam.tolist() == [[1.0]] * 30
    # mu -> 0: within mu log M of the max, so (before normalisation) it orders samples as Tchebycheff does.
    sharp, _ = advantage_terms(*t, "smooth_tchebycheff", mu=1e-4)
    cheb, _ = advantage_terms(*t, "tchebycheff")
    np.testing.assert_allclose(sharp.numpy(), cheb.numpy(), atol=1e-2)
    # mu large: -mu log sum_m exp(x_m / mu) = -mu log M - mean_m(x_m) + O(1 / mu), the weighted sum of the
    # shortfalls over M: the early scalarisation of the range-normalised rewards (the group
    # normalisation removes the constant; the mean, not the sum, so its 1e-4 std guard acts alike).
    flat, _ = advantage_terms(*t, "smooth_tchebycheff", mu=1e4)
    lo, hi = r.min(0), r.max(0)
    linear = ((r - lo) / (hi - lo + 1e-4) * w).mean(1, keepdims=True)
    np.testing.assert_allclose(flat.numpy(), numpy_group_normalise(linear[:, 0], g), atol=1e-3)

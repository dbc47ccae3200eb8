"""Objectives against independent numpy / hand computations."""

import numpy as np
import pytest
import torch

from policies.objectives import (advantage_terms, early_advantages, ema_update, grpo_loss, group_normalise, late_advantages,
                                 nft_loss, nft_reward_weight, nft_x0_losses, old_policy_decay, orient_rewards,
                                 reward_units)


def numpy_group_adv(r: np.ndarray, g: np.ndarray) -> np.ndarray:
    out = np.zeros_like(r)
    for k in np.unique(g):
        sel = g == k
        out[sel] = (r[sel] - r[sel].mean(0)) / (r[sel].std(0) + 1e-4)
    return out


def test_late_advantages_match_numpy_reference():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(24, 3))
    g = np.repeat(np.arange(4), 6)
    rng.shuffle(g)
    got = late_advantages(torch.tensor(r), torch.tensor(g)).numpy()
    np.testing.assert_allclose(got, numpy_group_adv(r, g), rtol=1e-10, atol=1e-10)


def test_group_normalise_1d_and_zero_variance_group():
    x = torch.tensor([1.0, 1.0, 2.0, 4.0])
    g = torch.tensor([0, 0, 1, 1])
    out = group_normalise(x, g)
    assert out[:2].abs().max() == 0  # constant group -> no signal, not NaN
    np.testing.assert_allclose(out[2:].numpy(), [-1 / (1 + 1e-4), 1 / (1 + 1e-4)], rtol=1e-6)


def test_batch_std_keeps_a_saturated_group_near_zero():
    """flow_grpo's global std: centred per group, scaled by the batch's population std per column
    (numpy); a group whose rewards differ by 1e-3 stays near 0 instead of +-1 under the group std."""
    r = np.array([[0.999, 0.5], [0.998, 0.7], [0.2, 0.6], [0.9, 0.4]])
    g = np.array([0, 0, 1, 1])
    got = late_advantages(torch.tensor(r), torch.tensor(g), std="batch").numpy()
    means = np.stack([r[g == k].mean(0) for k in range(2)])[g]
    np.testing.assert_allclose(got, (r - means) / (r.std(0) + 1e-4), rtol=1e-10)
    assert np.abs(got[:2, 0]).max() < 0.01
    assert np.abs(late_advantages(torch.tensor(r), torch.tensor(g)).numpy()[:2, 0]).min() > 0.8
    with pytest.raises(ValueError, match="adv_std"):
        group_normalise(torch.tensor(r), torch.tensor(g), std="global")


def test_early_advantages_normalise_weighted_sum():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(12, 2))
    w = np.tile([0.3, 0.7], (12, 1))
    g = np.repeat(np.arange(2), 6)
    got = early_advantages(torch.tensor(r), torch.tensor(w), torch.tensor(g)).numpy()
    np.testing.assert_allclose(got, numpy_group_adv((r * w).sum(1, keepdims=True), g), rtol=1e-10)


def test_early_advantages_with_batch_std_weigh_commensurate_units():
    rng = np.random.default_rng(2)
    r = rng.normal(size=(12, 2)) * [1.0, 30.0]  # the second objective's raw scale is 30x the first's
    w = np.tile([0.5, 0.5], (12, 1))
    g = np.repeat(np.arange(2), 6)
    rt = torch.tensor(r)
    got = early_advantages(rt, torch.tensor(w), torch.tensor(g), units=reward_units(rt, "batch_std")).numpy()
    unit = r / r.std(0)  # numpy: each objective in units of its own batch std
    np.testing.assert_allclose(got, numpy_group_adv((unit * w).sum(1, keepdims=True), g), atol=1e-3)
    # Unscaled, the large objective decides alone; scaled, the two count alike.
    raw = early_advantages(torch.tensor(r), torch.tensor(w), torch.tensor(g)).numpy()[:, 0]
    assert np.corrcoef(raw, numpy_group_adv(r[:, 1:], g)[:, 0])[0, 1] > 0.99
    assert np.corrcoef(got[:, 0], numpy_group_adv(unit[:, :1], g)[:, 0])[0, 1] > 0.3
    with pytest.raises(ValueError, match="reward_scale"):
        reward_units(rt, "range")


def test_first_batch_std_units_stay_fixed_while_batch_std_units_move():
    rng = np.random.default_rng(3)
    first = rng.normal(size=(16, 2)) * [0.2, 3.0]
    later = rng.normal(size=(16, 2)) * [0.2, 30.0]  # the policy spread the second objective 10x
    units = reward_units(torch.tensor(first), "batch_std")
    np.testing.assert_allclose(units.numpy(), first.std(0) + 1e-4, rtol=1e-12)
    kept = reward_units(torch.tensor(later), "first_batch_std", units)
    assert torch.equal(kept, units)
    np.testing.assert_allclose(reward_units(torch.tensor(later), "batch_std").numpy(), later.std(0) + 1e-4, rtol=1e-12)
    # In fixed units a w keeps weighing the same raw trade-off: the group ranks by r1 / u1 + r2 / u2.
    w = np.full((16, 2), 0.5)
    g = np.repeat(np.arange(2), 8)
    got = early_advantages(torch.tensor(later), torch.tensor(w), torch.tensor(g), units=kept).numpy()
    expected = numpy_group_adv((later / (first.std(0) + 1e-4) * w).sum(1, keepdims=True), g)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    with pytest.raises(ValueError, match="first batch"):
        reward_units(torch.tensor(later), "first_batch_std")


def test_orient_rewards_flips_min_objectives():
    r = torch.tensor([[1.0, 2.0]])
    assert orient_rewards(r, ["max", "min"]).tolist() == [[1.0, -2.0]]


def test_nft_reward_weight_clips():
    a = torch.tensor([-10.0, -5.0, 0.0, 2.5, 7.0])
    assert nft_reward_weight(a, 5.0).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0]


def test_nft_losses_against_hand_computation():
    torch.manual_seed(0)
    x0, eps = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    v, v_old = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    beta = 0.1
    lp, ln = nft_x0_losses(x0, xt, t, v, v_old, beta)
    for i in range(5):
        for got, vv in ((lp[i], beta * v[i] + (1 - beta) * v_old[i]), (ln[i], (1 + beta) * v_old[i] - beta * v[i])):
            e = (xt[i] - t[i] * vv - x0[i]).numpy()
            assert np.isclose(got.item(), (e**2).mean() / max(np.abs(e).mean(), 1e-5))


def test_nft_loss_weights_objectives_by_preference():
    torch.manual_seed(1)
    n = 6
    x0, xt, t = torch.randn(n, 2), torch.randn(n, 2), torch.rand(n)
    v, v_old = torch.randn(n, 2, requires_grad=True), torch.randn(n, 2)
    adv = torch.randn(n, 2) * 3
    w = torch.tensor([[1.0, 0.0]] * n)
    loss_w1, _ = nft_loss(x0, xt, t, v, v_old, None, adv, w, 0.1, 5.0, 5.0, 0.0)
    loss_single, _ = nft_loss(x0, xt, t, v, v_old, None, adv[:, :1], torch.ones(n, 1), 0.1, 5.0, 5.0, 0.0)
    assert torch.isclose(loss_w1, loss_single)
    # Positive advantage on the only weighted objective pulls v towards the positive branch.
    loss, m = nft_loss(x0, xt, t, v, v_old, v_old + 1, adv, w, 0.1, 5.0, 5.0, 1e-4)
    assert m["loss/kl"] > 0
    loss.backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()


def test_grpo_loss_clipping_and_kl():
    lp_old = torch.zeros(4)
    lp = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.0]))
    adv = torch.tensor([1.0, 1.0, -1.0, 0.0])
    mean = torch.zeros(4, 2)
    ref = torch.ones(4, 2)
    std = torch.full((4, 2), 2.0)
    loss, m = grpo_loss(lp, lp_old, adv, 0.2, mean, ref, std, 0.5)
    ratio = np.array([1.0, 1.5, 0.5, 1.0])
    a = adv.numpy()
    expected_policy = np.maximum(-a * ratio, -a * np.clip(ratio, 0.8, 1.2)).mean()
    expected_kl = (1.0 / (2 * 4.0))
    assert np.isclose(m["loss/policy"].item(), expected_policy)
    assert np.isclose(m["loss/kl"].item(), expected_kl)
    assert np.isclose(loss.item(), expected_policy + 0.5 * expected_kl)
    assert m["grpo/clip_frac"].item() == 0.5


def test_old_policy_decay_and_ema():
    assert old_policy_decay(0, 0.001, 0.5) == 0.0
    assert old_policy_decay(100, 0.001, 0.5) == 0.1
    assert old_policy_decay(10_000, 0.001, 0.5) == 0.5
    target, source = [torch.zeros(3)], [torch.ones(3)]
    ema_update(target, source, 0.9)
    assert torch.allclose(target[0], torch.full((3,), 0.1))


def test_ema_warmup_is_the_references_schedule():
    from fractions import Fraction

    from policies.objectives import ema_decay

    # The reference's EMAModuleWrapper: min((1 + s) / (10 + s), 0.9), s = optimizer steps taken (1 first).
    assert [ema_decay(k, 0.9, "warmup") for k in range(3)] == [2 / 11, 3 / 12, 4 / 13]
    assert ema_decay(7, 0.9, "warmup") == 9 / 18 and ema_decay(79, 0.9, "warmup") == 0.9
    assert ema_decay(0, 0.9, "constant") == 0.9
    # The share of the initial weights left in the EMA after 5 steps is the product of the decays.
    left = 1
    for s in range(1, 6):
        left *= Fraction(1 + s, 10 + s)
    assert left == Fraction(720, 360360) and float(left) < 0.002  # 0.2%; constant 0.9: 0.9^5 = 59%
    e, theta = [torch.zeros(1, dtype=torch.float64)], [torch.ones(1, dtype=torch.float64)]
    for k in range(5):
        ema_update(e, theta, ema_decay(k, 0.9, "warmup"))
    assert torch.isclose(1 - e[0], torch.tensor(float(left), dtype=torch.float64))


def test_batch_std_units_keep_the_fronts_slopes_where_late_scalarisation_jumps_at_one_half():
    """Groups that each hold two neighbouring vertices of a convex front (the shapes editing front of
    ``benchmarks/shapes_edit_front.py``: copy, one, two, three changes; adherence vs. -distance), at
    many ``w``: the ``w1`` from which the group prefers the more adherent vertex."""
    front = torch.tensor([[0.002, -0.682], [0.331, -0.996], [0.666, -1.551], [0.998, -3.948]], dtype=torch.float64)
    ws = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    r = torch.cat([torch.stack([front[k], front[k + 1]]) for k in range(3) for _ in ws])
    w = torch.stack([ws, 1 - ws], 1).repeat(3, 1).repeat_interleave(2, 0)
    g = torch.arange(3 * len(ws)).repeat_interleave(2)

    def switch_points(scalarisation: str, **kw) -> list[float]:
        adv, lam = advantage_terms(r, w, g, scalarisation, **kw)
        prefers_more = ((adv * lam).sum(1).view(3, len(ws), 2).diff(dim=2)[..., 0] > 0).int()
        return [float(ws[int(row.argmax())]) for row in prefers_more]

    # Batch-std units: each segment switches where w1 / w2 meets its slope in those units (steeper
    # segments later), so every vertex is some w's choice and the slider walks through them.
    early = switch_points("early", units=reward_units(r, "batch_std"))
    assert early[0] < early[1] < early[2] and early[0] <= 0.3 and early[2] >= 0.65
    # Per-group normalisation: every segment switches at w1 ~ 0.5, whatever its slope.
    assert all(0.45 <= x <= 0.6 for x in switch_points("late"))

"""Pareto-front metrics on mean rewards (every objective maximised). Pure numpy, no Ray.

Symbols: ``P`` points (e.g. swept preferences), ``M`` objectives; a point is a row of mean
rewards ``[M]``. ``a`` dominates ``b`` when ``a >= b`` everywhere and ``a > b`` somewhere.
"""

from __future__ import annotations

import moocore
import numpy as np
from scipy import stats


def dominates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[Pa, Pb]`` bool: row ``a[i]`` Pareto-dominates row ``b[j]`` (maximisation)."""
    a, b = np.atleast_2d(a)[:, None, :], np.atleast_2d(b)[None, :, :]
    return (a >= b).all(-1) & (a > b).any(-1)


def non_dominated(points: np.ndarray) -> np.ndarray:
    """``[P]`` bool mask of the points no other point dominates (duplicates are all kept)."""
    return ~dominates(points, points).any(axis=0)


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Volume dominated by ``points`` and bounded below by ``ref`` (moocore, maximisation).

    Points that do not strictly beat ``ref`` in every objective add nothing (moocore drops them).
    """
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    ref = np.asarray(ref, dtype=np.float64)
    if pts.shape[1] != ref.shape[0]:
        raise ValueError(f"points have {pts.shape[1]} objectives but the reference point has {ref.shape[0]}")
    return float(moocore.hypervolume(pts, ref=ref, maximise=True))


def sample_hypervolume(rewards: np.ndarray, ref: np.ndarray) -> float:
    """Mean over samples of the hypervolume of each sample's own rewards: ``E_x prod_m (r_m(x) - ref_m)_+``.

    The hypervolume of *mean* rewards credits a 50/50 mixture of two single-objective samples with
    the chord between them; this one credits only samples that are good on every objective at once.
    """
    gain = np.clip(np.asarray(rewards, dtype=np.float64) - np.asarray(ref, dtype=np.float64), 0.0, None)
    return float(gain.prod(axis=1).mean())


def count_dominated(front: np.ndarray, points: np.ndarray) -> int:
    """How many of ``points`` at least one point of ``front`` dominates."""
    return int(dominates(front, points).any(axis=0).sum())


def reference_point(base_rewards: np.ndarray, quantile: float, margin: float) -> np.ndarray:
    """A shared hypervolume reference point from the base model's per-sample rewards ``[N, M]``.

    Per objective: the ``quantile`` of the base's rewards, moved down by ``margin`` times their
    inter-quartile range, so the base's own mean and every trained front lie above it.
    """
    r = np.asarray(base_rewards, dtype=np.float64)
    q = np.quantile(r, quantile, axis=0)
    iqr = np.quantile(r, 0.75, axis=0) - np.quantile(r, 0.25, axis=0)
    return q - margin * iqr


def slider_monotonicity(preferences: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """``[M]`` Spearman rank correlation between ``w_m`` and mean ``r_m`` along a sweep.

    1 means moving the slider towards objective ``m`` never lowers its reward; NaN when either
    column is constant.
    """
    out = []
    for m in range(preferences.shape[1]):
        w, r = preferences[:, m], rewards[:, m]
        out.append(np.nan if np.ptp(w) == 0 or np.ptp(r) == 0 else stats.spearmanr(w, r).statistic)
    return np.asarray(out, dtype=np.float64)


def slider_max_jump(preferences: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """``[M]`` the largest change of mean ``r_m`` between adjacent sweep points, as a share of ``r_m``'s
    range over the sweep (controllability: a switch scores 1 whatever its hypervolume; a slider that
    moves evenly over ``P`` points of a line, ``1 / (P - 1)``).

    Adjacent points are those at the grid's smallest L1 distance (neighbours on the simplex lattice);
    NaN where ``r_m`` is constant.
    """
    w, r = np.asarray(preferences, dtype=np.float64), np.asarray(rewards, dtype=np.float64)
    dist = np.abs(w[:, None, :] - w[None, :, :]).sum(-1)
    step = dist[dist > 1e-12].min()
    i, j = np.nonzero(np.triu(np.abs(dist - step) <= 1e-9 * step, k=1))
    span = np.ptp(r, axis=0)
    jumps = np.abs(r[i] - r[j]).max(axis=0)
    return np.where(span > 0, jumps / np.where(span > 0, span, 1.0), np.nan)


def sample_front(rewards: list[np.ndarray]) -> np.ndarray:
    """``[F, M]`` the non-dominated per-sample rewards pooled over ``rewards`` (each ``[N_i, M]``),
    duplicates once (moocore's O(n log n) filter: the pool holds ~10^5 samples)."""
    pooled = np.concatenate([np.asarray(r, dtype=np.float64) for r in rewards])
    return pooled[moocore.is_nondominated(pooled, maximise=True)]


def front_coverage(samples: list[np.ndarray], front: np.ndarray, tol: float) -> float:
    """How well one setting of the slider delivers each point of the per-sample ``front [F, M]``:
    the mean over front points ``f`` of ``max_p P_p(f)``, where ``P_p(f)`` is the share of setting
    ``p``'s samples (``samples[p]``, ``[N_p, M]``) with ``s_m >= f_m - tol * span_m`` for every ``m``
    (``span_m``: the front's range in objective ``m``).

    1 when for every front point some ``w`` gives it (within ``tol``) with every sample; a switch
    scores low on the compromises, however high its hypervolume of means, and a 50/50 mixture of the
    ends reaches a middle point only with its few samples caught in between. ``front`` is the
    non-dominated set of the per-sample rewards of every method compared (:func:`sample_front`), so
    every method is scored against the same front; its points weigh the front by where
    non-dominated samples lie.

    ``tol``: half the sweep's grid step (``0.5 / (points_per_edge - 1)``), so a slider moving evenly
    along the front has a setting within tolerance of every front point.
    """
    f = np.asarray(front, dtype=np.float64)
    span = np.ptp(f, axis=0)
    slack = f - tol * np.where(span > 0, span, 0.0)
    best = np.zeros(len(f))
    for s in samples:
        s = np.asarray(s, dtype=np.float64)
        share = np.zeros(len(f))
        for i in range(0, len(s), 1024):
            share += (s[i:i + 1024, None, :] >= slack[None]).all(-1).sum(0)
        best = np.maximum(best, share / len(s))
    return float(best.mean())


def seed_spread(means: np.ndarray) -> np.ndarray:
    """``[P, M]`` std over seeds of each sweep point's mean reward, from ``means [S, P, M]`` (ddof 0,
    as the tables' ``mean ± std``): where along the front each seed settles, point by point."""
    return np.asarray(means, dtype=np.float64).std(axis=0)


def mean_interval(x: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``x [N, M]``: the mean and the half-width of its ``confidence`` t-interval."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    mean = x.mean(axis=0)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    sem = x.std(axis=0, ddof=1) / np.sqrt(n)
    return mean, stats.t.ppf(0.5 + confidence / 2, n - 1) * sem


def nearest_distance(samples: np.ndarray, reference: np.ndarray, chunk: int = 4096) -> float:
    """Mean Euclidean distance from each sample to its nearest ``reference`` sample (flattened).

    A drift guard: near 0 while samples stay on the base model's support; grows as they leave it.
    """
    x = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    ref_sq = (ref**2).sum(1)
    nearest = []
    for i in range(0, len(x), chunk):
        xc = x[i:i + chunk]
        d2 = (xc**2).sum(1)[:, None] - 2 * xc @ ref.T + ref_sq[None]
        nearest.append(np.sqrt(np.maximum(d2.min(1), 0.0)))
    return float(np.concatenate(nearest).mean())

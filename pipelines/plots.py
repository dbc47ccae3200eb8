"""Figures logged to MLflow (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from infra.config import Config  # noqa: E402
from policies.batch import RolloutBatch  # noqa: E402


def preference_colours(w: np.ndarray) -> np.ndarray:
    """RGB per sample: two objectives blend blue -> red along w1; three map w to RGB directly."""
    if w.shape[1] == 2:
        return plt.get_cmap("coolwarm")(w[:, 0])[:, :3]
    rgb = np.zeros((w.shape[0], 3))
    rgb[:, : min(3, w.shape[1])] = w[:, :3]
    return rgb


def target_points(cfg: Config) -> list[tuple[str, list[float]]]:
    return [(o.display, o.args["target"]) for o in cfg.rewards.objectives if "target" in o.args]


def sample_scatter(batch: RolloutBatch, cfg: Config, title: str) -> plt.Figure:
    """Toy2d samples coloured by the preference they were drawn with; targets as stars."""
    x, w = batch.samples_numpy(), batch.preferences.numpy()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(x[:, 0], x[:, 1], s=4, c=preference_colours(w), alpha=0.6)
    for name, (tx, ty) in target_points(cfg):
        ax.scatter([tx], [ty], marker="*", s=200, c="k")
        ax.annotate(name, (tx, ty), textcoords="offset points", xytext=(6, 6))
    ax.set_title(f"{title} (colour = w[{cfg.objective_names[0]}])" if w.shape[1] == 2 else title)
    ax.set_aspect("equal")
    lim = 1.3 * cfg.pretrain.data.radius
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    fig.tight_layout()
    return fig


FRONT_STYLES = {"base": dict(marker="X", s=120, c="k", zorder=5), "fixed": dict(marker="s", s=60, zorder=4)}


def front_plot(methods: list[tuple[str, np.ndarray, bool]], names: list[str], ref: np.ndarray,
               title: str) -> plt.Figure:
    """Mean rewards of every method overlaid; ``(label, points [P, M], is_sweep)`` per method.

    Sweeps are drawn as lines in sweep order, other methods as markers; the shared hypervolume
    reference point is a grey cross. Three or more objectives get one panel per pair.
    """
    m = len(names)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.5), dpi=100, squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        for label, pts, is_sweep in methods:
            kind = label.split("_")[0]
            if is_sweep:
                ax.plot(pts[:, i], pts[:, j], marker="o", ms=3, lw=1, label=label)
            else:
                ax.scatter(pts[:, i], pts[:, j], label=label, **FRONT_STYLES.get(kind, dict(marker="D", s=40)))
        ax.scatter([ref[i]], [ref[j]], marker="+", s=120, c="grey", label="reference point")
        ax.set_xlabel(f"r: {names[i]}")
        ax.set_ylabel(f"r: {names[j]}")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

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

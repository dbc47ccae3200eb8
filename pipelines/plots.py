"""Figures logged to MLflow (matplotlib, headless)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from infra.config import Config  # noqa: E402
from policies.batch import RolloutBatch  # noqa: E402
from policies.fronts import hypervolume  # noqa: E402

if TYPE_CHECKING:  # pipelines.evaluate draws with these functions
    from pipelines.evaluate import FrontPoints, Sweep

GRID_COLUMNS = 8
"""Samples per row in an image grid."""


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


def front_plot(methods: list[FrontPoints], sweeps: set[str], names: list[str], ref: np.ndarray,
               title: str) -> plt.Figure:
    """Mean rewards of every method overlaid, each with its confidence interval as error bars and
    its hypervolume (against ``ref``) in the legend.

    Methods named in ``sweeps`` are drawn as lines in sweep order, others as markers; the shared
    hypervolume reference point is a grey cross. Three or more objectives get one panel per pair.
    """
    m = len(names)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.5), dpi=100, squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        for p in methods:
            label = f"{p.method} (HV {hypervolume(p.mean, ref):.3g})"
            err = dict(xerr=p.half_width[:, i], yerr=p.half_width[:, j], elinewidth=0.8, capsize=2)
            if p.method in sweeps:
                ax.errorbar(p.mean[:, i], p.mean[:, j], marker="o", ms=3, lw=1, label=label, **err)
            else:
                style = FRONT_STYLES.get(p.method.split("_")[0], dict(marker="D", s=40))
                dots = ax.scatter(p.mean[:, i], p.mean[:, j], label=label, **style)
                ax.errorbar(p.mean[:, i], p.mean[:, j], fmt="none", ecolor=dots.get_facecolor()[0], **err)
        ax.scatter([ref[i]], [ref[j]], marker="+", s=120, c="grey", label="reference point")
        ax.set_xlabel(f"r: {names[i]}")
        ax.set_ylabel(f"r: {names[j]}")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _frame(image: np.ndarray) -> np.ndarray:
    """A reward-layout image ``[3, H, W]`` (or the middle frame of a video ``[F, 3, H, W]``) as
    ``[H, W, 3]`` for imshow."""
    image = image[image.shape[0] // 2] if image.ndim == 4 else image
    return np.moveaxis(image, 0, -1)


def sample_figure(batch: RolloutBatch, cfg: Config, title: str) -> plt.Figure:
    """Toy2d: the scatter; images: the first samples of each group, one row per group (<= 8 rows)."""
    if batch.images is None:
        return sample_scatter(batch, cfg, title)
    images = batch.reward_samples()
    groups = batch.group_index.numpy()
    rows = [np.flatnonzero(groups == g)[:GRID_COLUMNS] for g in range(min(len(batch.groups), 8))]
    fig, axes = plt.subplots(len(rows), GRID_COLUMNS, figsize=(GRID_COLUMNS * 1.1, len(rows) * 1.3), squeeze=False)
    for r, idx in enumerate(rows):
        g = batch.groups[r]
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(idx):
                ax.imshow(_frame(images[idx[c]]))
        w = ", ".join(f"{x:.2f}" for x in g.preference)
        axes[r][0].set_title(f"{g.prompt[:40]}  w=({w})", fontsize=6, loc="left")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def sweep_strip(sweep: Sweep) -> np.ndarray:
    """A video slider's sweep as one clip: ``[F, H, (P + 1) W, 3]`` uint8, the first evaluation prompt's
    first sample at every swept ``w`` side by side, the base model last (what an animated strip plays)."""
    clips = [b.images[0].numpy() for b in sweep.batches] + [sweep.base_batch.images[0].numpy()]
    return np.concatenate(clips, axis=2)


def sweep_grid(sweep: Sweep, names: list[str], rows: int = 4) -> plt.Figure:
    """The same prompt (and source) at every swept ``w``: one row per evaluation prompt, one column
    per preference, the source image first when there is one, the base model last."""
    base = sweep.base_batch
    per_prompt = len(base) // len(base.groups)
    picks = list(range(0, len(base), per_prompt))[:rows]
    sources, prompts = base.source_images(), base.prompts
    lead = sources is not None
    samples = [b.reward_samples() for b in sweep.batches] + [base.reward_samples()]
    titles = [f"w1={w[0]:.2f}" for w in sweep.points.preferences] + ["base"]
    cols = lead + len(samples)
    fig, axes = plt.subplots(len(picks), cols, figsize=(cols * 1.2, len(picks) * 1.35), squeeze=False)
    for r, i in enumerate(picks):
        row = axes[r]
        if lead:
            row[0].imshow(_frame(sources[i]))
            row[0].set_title("source", fontsize=6)
        for c, (images, title) in enumerate(zip(samples, titles)):
            row[lead + c].imshow(_frame(images[i]))
            row[lead + c].set_title(title, fontsize=6)
        for ax in row:
            ax.axis("off")
        row[0].text(0, -0.35, prompts[i], transform=row[0].transAxes, fontsize=6)
    fig.suptitle(f"sweep across the slider (w1 = weight of {names[0]})", fontsize=8)
    fig.tight_layout()
    return fig

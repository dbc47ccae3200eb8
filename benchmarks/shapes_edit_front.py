"""The best an editor can do in the shapes world, per fidelity reward: the front of partial edits.

Recolours the shape of ``--edits`` random scenes a fraction ``a`` of the way from its colour to the
asked one (``a = 0``: no edit, ``1``: the full edit), passes the images through the base's VAE (every
sample of the editor is a VAE decoding, so this is the reachable front, not the rendered one) and
scores adherence (``shapes_classifier_adherence``) and fidelity (``ssim_to_source``,
``feature_distance_to_source``) with the registered rewards. Prints the means per ``a`` and, per
fidelity reward, how far each partial edit lies above (+) or below (-) the straight line between no
edit and the full edit, in units of the fidelity range: points below it are on a concave part of the
front, where a weighted sum of the two rewards (late scalarisation) prefers one of the two ends.

    python benchmarks/shapes_edit_front.py [-c configs/shapes_edit.yaml] [--edits 64]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from infra.config import RewardSpec, load_config
from policies import shapes
from policies.batch import channels_first
from policies.policy import load_base
from reward_servers.base import RewardInputs
from reward_servers.registry import build_reward

FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
FIDELITY = {"ssim_to_source": 1.0, "feature_distance_to_source": -1.0}
"""Fidelity rewards and their sign (distances: lower is more faithful)."""


def partial_edits(n: int, a: float, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(instructions, sources, edits)``: each edit is the source blended with the true edit by ``a``
    (they differ only on the shape, so this recolours it a fraction ``a`` of the way)."""
    rng = np.random.default_rng(seed)
    prompts, sources, targets = zip(*(shapes.edit_example(rng, 32) for _ in range(n)))
    sources, targets = np.stack(sources), np.stack(targets)
    return list(prompts), sources, ((1 - a) * sources + a * targets).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-c", "--config", default="configs/shapes_edit.yaml")
    ap.add_argument("--edits", type=int, default=64)
    args = ap.parse_args()
    cfg = load_config(args.config)
    base = load_base(cfg.model, cfg.num_objectives, cfg.pretrain.checkpoint).eval()
    adherence = build_reward(RewardSpec(name="shapes_classifier_adherence"))
    fidelity = {name: build_reward(RewardSpec(name=name)) for name in FIDELITY}
    rows = []
    for a in FRACTIONS:
        prompts, sources, edits = partial_edits(args.edits, a, seed=0)
        with torch.no_grad():
            decoded = base.decode(base.encode_images(torch.from_numpy(edits))).numpy()
        batch = RewardInputs(channels_first(decoded), prompts, source_images=channels_first(sources))
        rows.append([a, adherence.score(batch).mean(), *(fidelity[n].score(batch).mean() for n in FIDELITY)])
    table = np.array(rows)
    print(f"{'a':>4} {'adherence':>10} " + " ".join(f"{n:>27}" for n in FIDELITY))
    for r in table:
        print(f"{r[0]:4.1f} {r[1]:10.3f} " + " ".join(f"{v:27.3f}" for v in r[2:]))
    adh = table[:, 1]
    for j, (name, sign) in enumerate(FIDELITY.items()):
        fid = sign * table[:, 2 + j]
        # Chord from the no-edit end to the full-edit end, as fidelity over adherence.
        chord = fid[0] + (fid[-1] - fid[0]) * (adh - adh[0]) / (adh[-1] - adh[0])
        gap = (fid - chord) / abs(fid[0] - fid[-1])
        print(f"{name}: partial edits vs. the chord (+ convex, - concave): "
              + ", ".join(f"a={a:.1f} {g:+.2f}" for a, g in zip(FRACTIONS[1:-1], gap[1:-1])))


if __name__ == "__main__":
    main()

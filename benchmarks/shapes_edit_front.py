"""The best an editor can do in the shapes world, per fidelity reward: the front of partial edits.

An instruction changes one to three attributes of the source (shape, colour, background). A partial
edit carries out only some of them. For ``--edits`` random three-change edits this renders every
partial edit (no change, each single change, each pair, the full edit), passes it through the base's
VAE (every sample of the editor is a VAE decoding, so this is the reachable front, not the rendered
one) and scores adherence (``shapes_classifier_adherence``) and fidelity (``ssim_to_source``,
``feature_distance_to_source``) with the registered rewards.

Prints the mean scores per partial edit and, per fidelity reward, the front's vertices in order of
adherence with the fidelity each further third of the instruction costs. When that cost rises from
vertex to vertex the front is convex, so a weighted sum of the two rewards (early scalarisation)
has every vertex as its optimum for some preference: the slider walks from copy to full edit
through the partial ones instead of jumping between the two ends.

    python benchmarks/shapes_edit_front.py [-c configs/shapes_edit.yaml] [--edits 96]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from infra.config import RewardSpec, load_config
from policies import shapes
from policies.batch import channels_first
from policies.policy import load_base
from reward_servers.base import RewardInputs
from reward_servers.registry import build_reward

FIDELITY = {"ssim_to_source": 1.0, "feature_distance_to_source": -1.0}
"""Fidelity rewards and their sign (distances: lower is more faithful)."""


def partial_edit_scores(base, edits: list[shapes.Edit], size: int, adherence,
                        fidelity) -> dict[tuple[str, ...], np.ndarray]:
    """``{changes carried out: [adherence, *fidelity]}`` means over ``edits`` rendered at ``size``."""
    prompts = [e.instruction() for e in edits]
    sources = np.stack([shapes.render(e.source, size) for e in edits])
    out = {}
    for k in range(len(shapes.EDITABLE) + 1):
        for done in itertools.combinations(shapes.EDITABLE, k):
            images = np.stack([shapes.render(e.partial(done), size) for e in edits])
            with torch.no_grad():
                decoded = base.decode(base.encode_images(torch.from_numpy(images))).numpy()
            batch = RewardInputs(channels_first(decoded), prompts, source_images=channels_first(sources))
            out[done] = np.array([adherence.score(batch).mean(), *(f.score(batch).mean() for f in fidelity.values())])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-c", "--config", default="configs/shapes_edit.yaml")
    ap.add_argument("--edits", type=int, default=96)
    args = ap.parse_args()
    cfg = load_config(args.config)
    base = load_base(cfg.model, cfg.num_objectives, cfg.pretrain.checkpoint).eval()
    adherence = build_reward(RewardSpec(name="shapes_classifier_adherence"))
    fidelity = {name: build_reward(RewardSpec(name=name)) for name in FIDELITY}
    rng, size = np.random.default_rng(0), cfg.model.tiny.image_size
    edits = [shapes.random_edit(rng, size, num_changes=3) for _ in range(args.edits)]
    scores = partial_edit_scores(base, edits, size, adherence, fidelity)
    print(f"{'changes carried out':>28} {'adherence':>10} " + " ".join(f"{n:>27}" for n in FIDELITY))
    for done, s in sorted(scores.items(), key=lambda kv: kv[1][0]):
        print(f"{'+'.join(done) or 'none (copy)':>28} {s[0]:10.3f} " + " ".join(f"{v:27.3f}" for v in s[1:]))
    for j, (name, sign) in enumerate(FIDELITY.items()):
        # The front's vertex per number of changes: the most faithful partial edit with k changes.
        chain = [max((d for d in scores if len(d) == k), key=lambda d: sign * scores[d][1 + j])
                 for k in range(len(shapes.EDITABLE) + 1)]
        costs = [sign * (scores[a][1 + j] - scores[b][1 + j]) / (scores[b][0] - scores[a][0])
                 for a, b in itertools.pairwise(chain)]
        verdict = "convex" if all(x <= y for x, y in itertools.pairwise(costs)) else "not convex"
        print(f"{name}: " + " -> ".join("+".join(d) or "copy" for d in chain)
              + "; fidelity lost per unit of adherence: " + ", ".join(f"{c:.3f}" for c in costs) + f" ({verdict})")


if __name__ == "__main__":
    main()

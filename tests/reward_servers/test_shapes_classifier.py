"""The shipped shapes classifier and its adherence reward, on rendered scenes with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from infra.config import RewardSpec
from policies import shapes
from policies.batch import channels_first
from reward_servers.base import RewardInputs
from reward_servers.registry import build_reward
from reward_servers.shapes_classifier import (ATTRIBUTES, classifier_accuracy, load_classifier, train_classifier,
                                              training_batch)


def rendered(n: int, seed: int, blur: float = 0.0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    scenes = [shapes.random_scene(rng, 32) for _ in range(n)]
    images = np.stack([shapes.render(s, 32) for s in scenes])
    if blur:
        images = gaussian_filter(images, sigma=(0, blur, blur, 0), mode="nearest").astype(np.float32)
    return images, [s.caption() for s in scenes]


def test_shipped_classifier_reads_clean_scenes():
    images, captions = rendered(300, seed=11)
    acc = classifier_accuracy(load_classifier(), images, captions)
    assert acc["colour"] == 1.0 and acc["background"] == 1.0 and acc["shape"] >= 0.97, acc


def test_classifier_keeps_reading_shapes_where_the_fill_ratio_fails():
    """Soft edges (what a tiny VAE decodes) round corners: the analytic reader's fill ratio then
    confuses squares and triangles with circles; the classifier, trained on such damage (blur up to
    1.2 px), does not, even past what it was trained on (measured: 100% vs. 69%)."""
    images, captions = rendered(300, seed=12, blur=1.5)
    learned = classifier_accuracy(load_classifier(), images, captions)["shape"]
    analytic = shapes.attribute_accuracy(images, captions)["shape"]
    assert learned >= 0.9 and learned > analytic + 0.15, (learned, analytic)


def test_classifier_adherence_prefers_the_described_scene_and_the_edit():
    reward = build_reward(RewardSpec(name="shapes_classifier_adherence"))
    s = shapes.Scene("square", "red", "white", 15, 16, 8)
    good, blue = shapes.render(s, 32), shapes.render(s.recoloured("blue"), 32)
    circle = shapes.render(shapes.Scene("circle", "red", "white", 15, 16, 8), 32)
    r = reward.score(RewardInputs(channels_first(np.stack([good, blue, circle])), [s.caption()] * 3))
    assert r[0] > 0.9 and r[0] > r[1] + 0.2 and r[0] > r[2] + 0.2, r
    # An edit asks for the shape and the new colour only: the recoloured scene adheres, the source does not.
    edit = reward.score(RewardInputs(channels_first(np.stack([good, blue])), ["make the square blue"] * 2))
    assert edit[1] > 0.9 and edit[0] < 0.6, edit
    assert reward.range == (0.0, 1.0) and ((0 <= r) & (r <= 1)).all()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        reward.score(RewardInputs(np.zeros((2, 2)), ["a red square"] * 2))


def test_missing_weights_name_the_path_and_the_rebuild_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m reward_servers.shapes_classifier"):
        load_classifier(tmp_path / "nope.safetensors")


def test_training_batch_labels_match_the_rendered_scenes():
    x, labels = training_batch(np.random.default_rng(0), 16)
    assert x.shape == (16, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert {k: v.shape for k, v in labels.items()} == {k: (16,) for k in ATTRIBUTES}
    # The background is the border's colour: its label is the palette entry nearest the corner pixel.
    corner = x[:, :, 0, 0].numpy()
    palette = np.array([shapes.BACKGROUNDS[b] for b in ATTRIBUTES["background"]])
    nearest = ((corner[:, None] - palette[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest, labels["background"].numpy())


@pytest.mark.slow
def test_training_from_scratch_learns_the_world():
    """The training recipe behind the shipped weights, shortened (400 of 3,000 steps): colours and
    backgrounds are learnt first, shapes well above chance (1/3; measured 62%, 100% at 3,000 steps)."""
    model = train_classifier(steps=400, seed=1)
    images, captions = rendered(200, seed=13)
    acc = classifier_accuracy(model, images, captions)
    assert acc["colour"] >= 0.95 and acc["background"] >= 0.95 and acc["shape"] >= 0.5, acc
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert model(torch.zeros(1, 3, 32, 32))["shape"].shape == (1, 3)

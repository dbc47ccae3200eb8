"""Shapes-world rewards and the analytic scene reader, on rendered images with known answers."""

from __future__ import annotations

import numpy as np

from policies.batch import channels_first
import pytest

from infra.config import RewardSpec
from policies import shapes
from reward_servers.base import RewardInputs
from reward_servers.registry import build_reward
from reward_servers.shapes import ssim


def scenes(n: int, seed: int = 0) -> list[shapes.Scene]:
    rng = np.random.default_rng(seed)
    return [shapes.random_scene(rng, 32) for _ in range(n)]


def test_reader_recovers_every_attribute_of_rendered_scenes():
    sc = scenes(300)
    images = np.stack([shapes.render(s, 32) for s in sc])
    acc = shapes.attribute_accuracy(images, [s.caption() for s in sc])
    assert acc == {"shape": 1.0, "colour": 1.0, "background": 1.0, "all": 1.0}
    assert shapes.parse_prompt("make the triangle cyan") == {"shape": "triangle", "colour": "cyan"}


def test_adherence_prefers_the_described_scene():
    reward = build_reward(RewardSpec(name="shapes_adherence"))
    s = shapes.Scene("circle", "red", "gray", 16, 16, 8)
    good, wrong_colour = shapes.render(s, 32), shapes.render(s.recoloured("blue"), 32)
    wrong_shape = shapes.render(shapes.Scene("triangle", "red", "gray", 16, 16, 8), 32)
    blank = np.full((32, 32, 3), 0.5, dtype=np.float32)
    r = reward.score(RewardInputs(channels_first(np.stack([good, wrong_colour, wrong_shape, blank])), [s.caption()] * 4))
    assert r[0] > 0.95 and r[0] > r[1] and r[0] > r[2] and r[2] > r[3]
    assert r[3] == pytest.approx(1 / 3, abs=1e-3)  # only the background matches
    edit = reward.score(RewardInputs(channels_first(np.stack([good, wrong_colour])), ["make the circle blue"] * 2))
    assert edit[1] > 0.95 > edit[0]


def test_ssim_matches_an_independent_loop_and_fidelity_rewards_rank_edits():
    rng = np.random.default_rng(0)
    a, b = rng.random((1, 16, 16, 3)), rng.random((1, 16, 16, 3))
    # Independent: scipy-free Gaussian window, channel by channel, same constants.
    r = np.arange(-5, 6)
    g = np.exp(-(r**2) / (2 * 1.5**2))
    g /= g.sum()

    def blur(x):
        p = np.pad(x, 5, mode="symmetric")  # scipy's "reflect"
        y = np.apply_along_axis(lambda v: np.convolve(v, g, mode="valid"), 0, p)
        return np.apply_along_axis(lambda v: np.convolve(v, g, mode="valid"), 1, y)

    vals = []
    for c in range(3):
        x, y = a[0, :, :, c], b[0, :, :, c]
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        vals.append((((2 * mx * my + 1e-4) * (2 * cxy + 9e-4)) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4))).mean())
    assert ssim(a, b)[0] == pytest.approx(np.mean(vals), abs=1e-9)
    assert ssim(a, a)[0] == pytest.approx(1.0)

    s = shapes.Scene("square", "green", "white", 14, 15, 7)
    src = shapes.render(s, 32)
    edited = shapes.render(s.recoloured("magenta"), 32)
    moved = shapes.render(shapes.Scene("square", "magenta", "white", 20, 20, 7), 32)
    batch = RewardInputs(channels_first(np.stack([src, edited, moved])), source_images=channels_first(np.stack([src] * 3)))
    sim = build_reward(RewardSpec(name="ssim_to_source")).score(batch)
    dist = build_reward(RewardSpec(name="feature_distance_to_source")).score(batch)
    assert sim[0] == pytest.approx(1.0) and sim[0] > sim[1] > sim[2]
    assert dist[0] == pytest.approx(0.0, abs=1e-6) and dist[0] < dist[1] < dist[2]


def test_image_rewards_reject_points_and_missing_sources():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        build_reward(RewardSpec(name="shapes_area")).score(RewardInputs(np.zeros((4, 2))))
    batch = RewardInputs(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="source_images"):
        batch.require(build_reward(RewardSpec(name="ssim_to_source")).inputs, "ssim_to_source")


def test_videos_get_the_frame_mean_of_image_rewards_at_the_boundary():
    from infra.config import RewardsConfig
    from reward_servers.base import score_batch
    from reward_servers.client import RewardClient

    sc = scenes(6, seed=3)
    frames = channels_first(np.stack([shapes.render(s, 32) for s in sc]))  # [6, 3, 32, 32]
    videos = frames.reshape(2, 3, 3, 32, 32)  # two videos of 3 frames
    prompts = [sc[0].caption(), sc[3].caption()]
    cfg = RewardsConfig(objectives=[RewardSpec(name="shapes_adherence"), RewardSpec(name="shapes_area")],
                        backend="local")
    with RewardClient(cfg) as client:
        per_video = client.score(RewardInputs(videos, prompts))
        per_frame = client.score(RewardInputs(frames, [p for p in prompts for _ in range(3)]))
    assert per_video.shape == (2, 2)
    np.testing.assert_allclose(per_video, per_frame.reshape(2, 3, 2).mean(axis=1), rtol=1e-6)

    class WholeVideo:
        name, inputs, range, direction, takes_video = "frames_seen", ("samples",), (0.0, 99.0), "max", True

        def score(self, batch: RewardInputs) -> np.ndarray:
            return np.full(len(batch), batch.samples.shape[1], dtype=np.float32)

    assert score_batch(WholeVideo(), RewardInputs(videos)).tolist() == [3.0, 3.0]

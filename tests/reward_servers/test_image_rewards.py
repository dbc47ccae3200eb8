"""Image rewards on constructed images: CLIP / PickScore / aesthetic, SSIM / MS-SSIM, perceptual, OCR.

Models are tiny, built from configs and loaded back from a temp dir through ``from_pretrained``;
the OCR reward uses the weights shipped in the rapidocr package.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from infra.config import RewardSpec
from reward_servers.base import RewardInputs
from reward_servers.registry import build_reward
from reward_servers.tiny_models import build_tiny_clip

RED, BLUE = (1.0, 0.1, 0.1), (0.1, 0.1, 1.0)


def solid(color: tuple[float, float, float], n: int = 1, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.broadcast_to(np.array(color, dtype=np.float32)[None, :, None, None], (n, 3, size, size))
    return np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1).astype(np.float32)


def reward(name: str, **args):
    return build_reward(RewardSpec(name=name, args=args))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny CLIP trained for a few seconds to tell red from blue (so text matching can be checked)."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from reward_servers.codecs import to_pil

    path = build_tiny_clip(tmp_path_factory.mktemp("clip"))
    model, tok = CLIPModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    pixels = AutoImageProcessor.from_pretrained(path)(
        images=to_pil(np.concatenate([solid(RED, 4, seed=1), solid(BLUE, 4, seed=2)])), return_tensors="pt"
    )["pixel_values"]
    text = tok(["a red image"] * 4 + ["a blue image"] * 4, padding=True, return_tensors="pt")
    labels = torch.arange(8) // 4
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(60):
        out = model(**text, pixel_values=pixels)
        # Two classes: cross-entropy of each image against the two captions.
        logits = out.logits_per_image[:, [0, 4]]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(path)
    return str(path)


def test_clip_score_prefers_the_right_text(clip_dir):
    r = reward("clip_score", model=clip_dir)
    images = np.concatenate([solid(RED, seed=5), solid(BLUE, seed=6)])
    right = r.score(RewardInputs(images, ["a red image", "a blue image"]))
    wrong = r.score(RewardInputs(images, ["a blue image", "a red image"]))
    assert right.shape == (2,) and right.dtype == np.float32
    assert (right > wrong + 0.1).all(), (right, wrong)
    assert (np.abs(right) <= 1 + 1e-6).all()


def test_pickscore_is_scaled_cosine_with_prefix(clip_dir):
    clip = reward("clip_score", model=clip_dir)
    pick = reward("pickscore", model=clip_dir, prefix="a ")
    images = solid(RED, 2, seed=7)
    np.testing.assert_allclose(pick.score(RewardInputs(images, ["red image", "blue image"])),
                               pick.scale * clip.score(RewardInputs(images, ["a red image", "a blue image"])),
                               rtol=1e-5)
    assert pick.range == (-pick.scale, pick.scale) and pick.scale > 1


def test_aesthetic_head_applies_linear_stack(clip_dir, tmp_path):
    from safetensors.torch import save_file

    from reward_servers.clip_scores import ClipEncoder

    images = np.concatenate([solid(RED, seed=8), solid(BLUE, seed=9)])
    emb = ClipEncoder(clip_dir).images(images)
    # Two layers, as LAION's predictor stacks them: project on the red embedding, then 2x + 1.
    path = tmp_path / "head.safetensors"
    save_file({"layers.0.weight": emb[:1].clone(), "layers.10.weight": torch.tensor([[2.0]]),
               "layers.10.bias": torch.tensor([1.0])}, path)
    scores = reward("aesthetic", model=clip_dir, head=str(path)).score(RewardInputs(images))
    np.testing.assert_allclose(scores, 2 * (emb @ emb[0]).numpy() + 1, rtol=1e-5)
    assert scores[0] == pytest.approx(3.0, abs=1e-5) and scores[0] > scores[1]


def test_models_must_be_local(tmp_path):
    with pytest.raises(ValueError, match="'model' must be a local checkpoint directory, got 'openai/clip-vit'"):
        reward("clip_score", model="openai/clip-vit")
    with pytest.raises(ValueError, match="'head' must be a local .safetensors file"):
        reward("aesthetic", model=str(tmp_path), head=str(tmp_path / "missing.safetensors"))


# --- fidelity ----------------------------------------------------------------------------------------


def noisy_pair(size: int, noise: float, seed: int = 0) -> RewardInputs:
    rng = np.random.default_rng(seed)
    src = rng.random((2, 3, size, size)).astype(np.float32)
    src = (src + np.roll(src, 1, axis=2) + np.roll(src, 1, axis=3)) / 3  # some structure at every scale
    out = np.clip(src + noise * rng.standard_normal(src.shape), 0, 1).astype(np.float32)
    return RewardInputs(out, source_images=src)


def test_ssim_matches_pytorch_msssim():
    from pytorch_msssim import ms_ssim, ssim

    small = noisy_pair(32, 0.1)
    ref = ssim(torch.from_numpy(small.samples), torch.from_numpy(small.source_images), data_range=1.0,
               size_average=False)
    np.testing.assert_allclose(reward("ssim").score(small), ref.numpy(), rtol=1e-4)
    big = noisy_pair(176, 0.1, seed=1)  # pytorch_msssim's MS-SSIM needs > 160 px
    ref = ms_ssim(torch.from_numpy(big.samples), torch.from_numpy(big.source_images), data_range=1.0,
                  size_average=False)
    np.testing.assert_allclose(reward("ssim", scales=5).score(big), ref.numpy(), rtol=1e-4)


def test_ssim_orders_by_damage_and_checks_sizes():
    r = reward("ssim", scales=2)
    same, mild, heavy = (r.score(noisy_pair(32, n)) for n in (0.0, 0.05, 0.3))
    np.testing.assert_allclose(same, 1.0, atol=1e-6)
    assert (same > mild).all() and (mild > heavy).all()
    with pytest.raises(ValueError, match=r"ssim with scales=3 needs images of at least 44 px a side, got \(32, 32\)"):
        reward("ssim", scales=3).score(noisy_pair(32, 0.1))
    with pytest.raises(ValueError, match=r"ssim source_images must be images \[B, 3, H, W\]"):
        r.score(RewardInputs(np.zeros((2, 3, 32, 32)), source_images=np.zeros((2, 32, 32, 3))))


@pytest.mark.parametrize("kind", ["lpips", "cosine"])
def test_perceptual_orders_by_damage(clip_dir, kind):
    r = reward("perceptual", model=clip_dir, kind=kind)
    same, mild, heavy = (r.score(noisy_pair(32, n, seed=3)) for n in (0.0, 0.05, 0.4))
    if kind == "lpips":
        assert r.direction == "min"
        np.testing.assert_allclose(same, 0.0, atol=1e-6)
        assert (same < mild).all() and (mild < heavy).all()
    else:
        assert r.direction == "max"
        np.testing.assert_allclose(same, 1.0, atol=1e-5)
        assert (same > mild).all() and (mild > heavy).all()


# --- OCR -------------------------------------------------------------------------------------------------


def text_image(text: str) -> np.ndarray:
    img = Image.new("RGB", (128, 64), "white")
    ImageDraw.Draw(img).text((8, 20), text, fill="black", font=ImageFont.load_default(size=20))
    return (np.asarray(img, dtype=np.float32) / 255).transpose(2, 0, 1)[None]


def test_ocr_rewards_the_right_text():
    from reward_servers.ocr import levenshtein, target_text

    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3
    assert target_text('a sign that says "OPEN 24" in neon') == "OPEN 24"
    r = reward("ocr")
    images = np.concatenate([text_image("HELLO"), np.ones_like(text_image(""))])
    scores = r.score(RewardInputs(images, ['a sign that says "Hello"', 'a sign that says "HELLO"']))
    wrong = r.score(RewardInputs(images[:1], ['a sign that says "WORLD"']))
    assert scores[0] == pytest.approx(1.0)  # case and spaces do not count
    assert scores[1] == 0.0  # a blank image renders nothing
    assert wrong[0] < 0.5


def test_uint8_images_score_exactly_as_their_float_copies(clip_dir):
    """Images cross the reward boundary as uint8; every reward reads x / 255 in float32, so the scores are
    the float path's to the bit, and a Serve batch mixing both kinds compares them as floats."""
    from reward_servers.base import score_batch

    pixels = np.random.default_rng(3).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    wire = RewardInputs(pixels, ["a red image", "a blue image", "a cat"], source_images=pixels / 255.0)
    floats = RewardInputs(pixels.astype(np.float32) / 255.0, wire.prompts, source_images=pixels / 255.0)
    assert wire.samples.dtype == np.uint8 and wire.samples.nbytes * 4 == floats.samples.nbytes
    for name, args in (("clip_score", {"model": clip_dir}), ("ssim", {})):
        r = reward(name, **args)
        np.testing.assert_array_equal(score_batch(r, wire), score_batch(r, floats))
    mixed = RewardInputs.concat([wire, floats])
    assert mixed.samples.dtype == np.float32 and np.array_equal(mixed.samples[:3], mixed.samples[3:])

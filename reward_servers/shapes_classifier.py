"""A small CNN that reads shape, colour and background off a shapes-world image.

Why learned: the analytic reader (``policies.shapes.read_scene``) tells a shape by how much of its
bounding box it fills, which is exact on rendered scenes but breaks on generated ones — soft edges
round a square's corners and fill a triangle's, so both read as circles. This net is trained on the
same procedural scenes under the damage a tiny VAE and sampler do (blur, stretch, noise, colour
drift), so it keeps telling corners from curves on soft images.

- :func:`train_classifier` trains it from a seed (3,000 steps: ~8.5 min on two CPU cores); the weights
  ship in ``reward_servers/weights/shapes_classifier.safetensors`` (nothing downloads or trains at
  run time) and ``python -m reward_servers.shapes_classifier`` rebuilds them.
- ``shapes_classifier_adherence`` (registered reward): the mean over the attributes the prompt asks
  for of the classifier's probability of the asked value — a caption asks shape, colour and
  background, an edit the attributes it changes (``"make the circle red"``: shape and colour).
- :func:`classifier_accuracy`: the share of images whose most likely attributes match the prompt
  (how the pre-trained bases are measured).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies import shapes
from reward_servers.base import RewardInputs
from reward_servers.registry import register
from reward_servers.shapes import channels_last_images

WEIGHTS = Path(__file__).parent / "weights" / "shapes_classifier.safetensors"
ATTRIBUTES = shapes.ATTRIBUTE_VALUES


class ShapesClassifier(nn.Module):
    """Four conv layers (32 -> 4 px) and one linear head per attribute; input ``[B, 3, H, W]`` in [0, 1]."""

    def __init__(self, width: int = 24):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({k: nn.Linear(4 * w, len(v)) for k, v in ATTRIBUTES.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute, ``{name: [B, n_values]}``."""
        h = self.features(images * 2 - 1)
        return {k: head(h) for k, head in self.heads.items()}


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur of ``[B, 3, H, W]`` with std ``sigma [B]`` (0: unchanged)."""
    r = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-0.5 * (r[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)  # [B, 7]
    b, c, h, w = x.shape
    y = F.pad(x.reshape(1, b * c, h, w), (3, 3, 3, 3), mode="replicate")
    kx = k.repeat_interleave(c, 0)
    y = F.conv2d(y, kx.view(b * c, 1, 1, 7), groups=b * c)
    y = F.conv2d(y, kx.view(b * c, 1, 7, 1), groups=b * c)
    return y.view(b, c, h, w)


def training_batch(rng: np.random.Generator, n: int, size: int = 32) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Procedural scenes under the damage a tiny generator does: stretch (x, y by 0.75-1.33: an
    oval is still a circle, a rectangle still has corners), blur (sigma 0-1.2 px), colour drift and
    pixel noise. Returns ``images [n, 3, H, W]`` and the label index of every attribute."""
    scenes = [shapes.random_scene(rng, size) for _ in range(n)]
    x = torch.from_numpy(np.stack([shapes.render(s, size) for s in scenes])).permute(0, 3, 1, 2)
    # Stretch about the shape's centre; the border padding keeps the background plain.
    centre = torch.tensor([[s.cx, s.cy] for s in scenes], dtype=torch.float32) / size * 2 - 1
    scale = torch.from_numpy(np.exp(rng.uniform(-math.log(4 / 3), math.log(4 / 3), size=(n, 2)))).float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / scale[:, 0], 1 / scale[:, 1]
    theta[:, :, 2] = centre - centre / scale
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = _gaussian_blur(x, torch.from_numpy(rng.uniform(0, 1.2, n)).float())
    x = x * torch.from_numpy(rng.uniform(0.9, 1.1, (n, 3, 1, 1))).float()
    x = x + torch.from_numpy(rng.uniform(-0.06, 0.06, (n, 3, 1, 1))).float()
    x = x + torch.from_numpy(rng.normal(0, 1, x.shape) * rng.uniform(0, 0.05, (n, 1, 1, 1))).float()
    labels = {k: torch.tensor([values.index(getattr(s, k)) for s in scenes]) for k, values in ATTRIBUTES.items()}
    return x.clamp(0, 1), labels


def train_classifier(steps: int = 3000, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     progress: bool = False) -> ShapesClassifier:
    """Train the classifier on :func:`training_batch` (AdamW, cosine schedule); deterministic per seed."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ShapesClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.perf_counter()
    for i in range(steps):
        x, labels = training_batch(rng, batch_size)
        logits = model(x)
        loss = sum(F.cross_entropy(logits[k], labels[k]) for k in ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and i % 100 == 0:
            print(f"step {i:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f}s", flush=True)
    return model.eval().requires_grad_(False)


def load_classifier(path: str | Path = WEIGHTS) -> ShapesClassifier:
    """The shipped (or a given) classifier, in eval mode."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shapes classifier weights not found at {path}; rebuild them with "
                                "`python -m reward_servers.shapes_classifier`")
    model = ShapesClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def attribute_probabilities(model: ShapesClassifier, images: np.ndarray) -> dict[str, np.ndarray]:
    """``{attribute: [B, n_values]}`` probabilities for channels-last images ``[B, H, W, 3]`` in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    return {k: v.softmax(-1).numpy() for k, v in model(x).items()}


def classifier_readings(model: ShapesClassifier, images: np.ndarray) -> list[dict[str, str]]:
    """The most likely ``{shape, colour, background}`` of each channels-last image."""
    probs = attribute_probabilities(model, images)
    return [{k: ATTRIBUTES[k][int(p[i].argmax())] for k, p in probs.items()} for i in range(len(images))]


def classifier_accuracy(model: ShapesClassifier, images: np.ndarray, prompts: list[str]) -> dict[str, float]:
    """Share of images whose most likely shape / colour / background is the one the prompt asks for."""
    return shapes.attribute_accuracy(images, prompts, classifier_readings(model, images))


@register("shapes_classifier_adherence")
class ShapesClassifierAdherence:
    """Mean probability, under the shipped classifier, of each attribute value the prompt asks for."""

    name = "shapes_classifier_adherence"
    inputs = ("samples", "prompts")
    range = (0.0, 1.0)
    direction = "max"

    def __init__(self, weights: str | None = None):
        self.model = load_classifier(weights or WEIGHTS)

    def score(self, batch: RewardInputs) -> np.ndarray:
        probs = attribute_probabilities(self.model, channels_last_images(batch, self.name))
        out = np.zeros(len(batch.prompts), dtype=np.float32)
        for i, prompt in enumerate(batch.prompts):
            want = shapes.parse_prompt(prompt)
            terms = [probs[k][i, ATTRIBUTES[k].index(v)] for k, v in want.items()]
            out[i] = float(np.mean(terms)) if terms else 0.0
        return out


def main(steps: int = 3000, seed: int = 0, out: Path = WEIGHTS) -> None:
    """Rebuild the shipped weights and print the held-out accuracy on damaged and on clean scenes."""
    from safetensors.torch import save_file

    model = train_classifier(steps=steps, seed=seed, progress=True)
    rng = np.random.default_rng(seed + 1000)
    x, labels = training_batch(rng, 1024)
    with torch.no_grad():
        logits = model(x)
    print({k: float((logits[k].argmax(-1) == labels[k]).float().mean()) for k in ATTRIBUTES})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    import typer

    typer.run(main)

"""The shapes world: procedural images of one coloured shape on a plain background, with captions.

Text-to-image: ``"a red circle on a gray background"`` -> the rendered scene (random position and
size). Editing: a source scene + an instruction that changes one to three of its attributes
(``"make the circle blue"``, ``"make the circle a red square on a white background"``,
``"make the background black"``) -> the edited scene (same position and size).
:func:`read_scene` is the analytic classifier used both as the adherence reward and to measure how
well a pre-trained base follows captions: the background is the median border colour, the shape
is every pixel far from it, its colour is the nearest palette entry to the shape's mean colour and
its kind comes from how much of its bounding box it fills (square 1, circle pi/4, triangle 1/2).
Images are float32 ``[H, W, 3]`` in [0, 1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

SHAPE_COLOURS = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1), "magenta": (0.9, 0.15, 0.85), "cyan": (0.1, 0.85, 0.9),
}
BACKGROUNDS = {"black": (0.05, 0.05, 0.05), "gray": (0.5, 0.5, 0.5), "white": (0.97, 0.97, 0.97)}
SHAPES = ("circle", "square", "triangle")
FILL_RATIO = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}
"""Share of its bounding box a shape covers; what :func:`read_scene` reads the kind from."""
WORDS = [*SHAPE_COLOURS, *BACKGROUNDS, *SHAPES]
ATTRIBUTE_VALUES = {"shape": list(SHAPES), "colour": list(SHAPE_COLOURS), "background": list(BACKGROUNDS)}
"""Every attribute of a scene and its values, in a fixed order (the classifier's label indices)."""
EDITABLE = tuple(ATTRIBUTE_VALUES)
"""The attributes an edit instruction can change."""


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    cx: float
    """Centre and half-size in pixels."""
    cy: float
    half: float

    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"

    def recoloured(self, colour: str) -> Scene:
        return replace(self, colour=colour)


def random_scene(rng: np.random.Generator, size: int, shape: str | None = None, colour: str | None = None,
                 background: str | None = None) -> Scene:
    half = rng.uniform(0.18, 0.3) * size
    cx, cy = rng.uniform(half + 1, size - half - 1, size=2)
    return Scene(shape or SHAPES[rng.integers(len(SHAPES))],
                 colour or list(SHAPE_COLOURS)[rng.integers(len(SHAPE_COLOURS))],
                 background or list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))], float(cx), float(cy), float(half))


def shape_mask(scene: Scene, size: int) -> np.ndarray:
    """``[size, size]`` bool mask of the shape (pixel centres inside it)."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = x - scene.cx, y - scene.cy
    h = scene.half
    if scene.shape == "circle":
        return dx**2 + dy**2 <= h**2
    if scene.shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    # Upward isosceles triangle in the box [-h, h]^2: half-width shrinks linearly to the apex.
    return (dy <= h) & (dy >= -h) & (np.abs(dx) <= (dy + h) / 2)


def render(scene: Scene, size: int) -> np.ndarray:
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = BACKGROUNDS[scene.background]
    img[shape_mask(scene, size)] = SHAPE_COLOURS[scene.colour]
    return img


def caption_grid() -> list[str]:
    """Every caption of the world (54), in a fixed order: the text-to-image prompt set."""
    return [f"a {c} {s} on a {b} background" for s in SHAPES for c in SHAPE_COLOURS for b in BACKGROUNDS]


def parse_prompt(prompt: str) -> dict[str, str]:
    """The attributes a caption or an edit instruction asks for: ``shape``, ``colour``, ``background``
    (the last shape named wins: ``"make the circle a square"`` asks for a square)."""
    words = re.findall(r"[a-z]+", prompt.lower())
    out = {}
    for i, w in enumerate(words):
        if w in SHAPES:
            out["shape"] = w
        elif w in BACKGROUNDS and "background" in words[max(i - 1, 0):i + 2]:
            out["background"] = w
        elif w in SHAPE_COLOURS:
            out["colour"] = w
    return out


@dataclass(frozen=True)
class Edit:
    """A source scene and the scene its instruction asks for."""

    source: Scene
    target: Scene

    @property
    def changed(self) -> tuple[str, ...]:
        return tuple(a for a in EDITABLE if getattr(self.source, a) != getattr(self.target, a))

    def instruction(self) -> str:
        s, t, changed = self.source, self.target, self.changed
        if "shape" in changed:
            head = f"make the {s.shape} a {t.colour + ' ' if 'colour' in changed else ''}{t.shape}"
        elif "colour" in changed:
            head = f"make the {s.shape} {t.colour}"
        else:
            return f"make the background {t.background}"
        return head + (f" on a {t.background} background" if "background" in changed else "")

    def partial(self, attributes: Iterable[str]) -> Scene:
        """The source with only ``attributes`` changed as asked: an edit that does part of the instruction."""
        return replace(self.source, **{a: getattr(self.target, a) for a in attributes})


def random_edit(rng: np.random.Generator, size: int, num_changes: int | None = None) -> Edit:
    """A random scene and an edit of ``num_changes`` (default: 1 to 3 at random) of its attributes."""
    source = random_scene(rng, size)
    k = int(rng.integers(1, len(EDITABLE) + 1)) if num_changes is None else num_changes
    if not 1 <= k <= len(EDITABLE):
        raise ValueError(f"num_changes must be 1..{len(EDITABLE)}, got {k}")
    changes = {}
    for attribute in rng.choice(EDITABLE, size=k, replace=False):
        others = [v for v in ATTRIBUTE_VALUES[attribute] if v != getattr(source, attribute)]
        changes[str(attribute)] = others[rng.integers(len(others))]
    return Edit(source, replace(source, **changes))


def edit_example(rng: np.random.Generator, size: int) -> tuple[str, np.ndarray, np.ndarray]:
    """``(instruction, source, target)`` of a :func:`random_edit`."""
    edit = random_edit(rng, size)
    return edit.instruction(), render(edit.source, size), render(edit.target, size)


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[float, float, float]]) -> str:
    names = list(palette)
    d = ((np.asarray([palette[n] for n in names]) - rgb) ** 2).sum(-1)
    return names[int(np.argmin(d))]


@dataclass
class SceneReading:
    """What :func:`read_scene` sees in one image."""

    background_rgb: np.ndarray
    shape_rgb: np.ndarray | None
    """Mean colour of the shape pixels (None when no pixel stands out from the background)."""
    fill: float
    """Shape pixels / bounding-box pixels (0 without a shape)."""
    area: float
    """Shape pixels / image pixels."""

    @property
    def background(self) -> str:
        return _nearest(self.background_rgb, BACKGROUNDS)

    @property
    def colour(self) -> str | None:
        return None if self.shape_rgb is None else _nearest(self.shape_rgb, SHAPE_COLOURS)

    @property
    def shape(self) -> str | None:
        if self.shape_rgb is None:
            return None
        return min(FILL_RATIO, key=lambda s: abs(FILL_RATIO[s] - self.fill))


def read_scene(image: np.ndarray, threshold: float = 0.3) -> SceneReading:
    """Background, shape colour and fill ratio of one ``[H, W, 3]`` image in [0, 1]."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    bg = np.median(border, axis=0)
    mask = np.linalg.norm(image - bg, axis=-1) > threshold
    if mask.sum() < 4:
        return SceneReading(bg, None, 0.0, 0.0)
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    return SceneReading(bg, image[mask].mean(0), float(mask.sum() / box), float(mask.mean()))


def attribute_accuracy(images: np.ndarray, prompts: list[str],
                       readings: list[dict[str, str | None]] | None = None) -> dict[str, float]:
    """Share of images whose shape / colour / background matches what the prompt asks for, as read
    by :func:`read_scene` or given as ``readings`` (one ``{attribute: value}`` per image)."""
    if readings is None:
        readings = [{k: getattr(r, k) for k in ("shape", "colour", "background")} for r in map(read_scene, images)]
    hits: dict[str, list[bool]] = {"shape": [], "colour": [], "background": []}
    for reading, prompt in zip(readings, prompts):
        for key, want in parse_prompt(prompt).items():
            hits[key].append(reading[key] == want)
    out = {k: float(np.mean(v)) for k, v in hits.items() if v}
    out["all"] = float(np.mean([x for v in hits.values() for x in v]))
    return out

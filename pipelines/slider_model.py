"""A trained slider ready for inference: base model + EMA trainable weights + objectives.

One object serves every way a trained model is used after training — the MLflow pyfunc model,
the Ray Serve endpoint and the benchmark — and loads from either of two places:

- a training run directory (``config.yaml`` + the latest checkpoint's EMA weights);
- a model directory written by :meth:`SliderModel.export` (what the MLflow model carries)::

      slider.json     manifest: model kind, output kind, objectives, base pointer + sha256, step
      config.yaml     the resolved training config
      trainable.pt    EMA trainable tensors (LoRA + preference modules), torch weights-only format

The base model is not copied: the manifest points at it and records its sha256 (of the file, or
over every file of a diffusers directory: ``infra.checkpoint.content_sha256``), and loading fails
if the base there is not the one the adapter was trained on. A hub id (``model.diffusers.pretrained``)
is recorded as such, unhashed: the manifest says so.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from infra.checkpoint import atomic_write_bytes, atomic_write_text, content_sha256, load_latest_checkpoint
from infra.config import Config, dump_config
from pipelines.plots import preference_colours, target_points
from pipelines.pretrain import base_location
from policies.batch import GroupSpec
from policies.policy import build_policy
from policies.rollout import rollout_groups

MANIFEST = "slider.json"
FORMAT_VERSION = 1

OutputKind = Literal["points", "image"]


@dataclass(frozen=True)
class ModelIO:
    """What a backbone family takes and gives at inference (drives the request checks and the page)."""

    output_kind: OutputKind
    """``points``: a ``[N, 2]`` sample cloud, shown as a scatter; ``image``: ``[H, W, 3]`` uint8."""
    uses_prompt: bool
    """Every request needs a non-empty prompt (models without one ignore it)."""
    uses_source_image: bool
    """Every request needs a source image to edit (models without one refuse it)."""


MODEL_IO: dict[str, ModelIO] = {
    "toy2d": ModelIO("points", uses_prompt=False, uses_source_image=False),
    "sd3": ModelIO("image", uses_prompt=True, uses_source_image=False),
    "flux_kontext": ModelIO("image", uses_prompt=True, uses_source_image=True),
}
"""Inference contract per ``model.kind``: what the requests must bring and what ``generate`` returns
(the backbone's ``decode`` gives the pixels; a video kind adds its entry and its frames' encoding)."""

BaseKind = Literal["file", "directory", "hub"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""``namespace/name`` of a hub repository (a local path that does not exist is not taken for one
unless it has exactly this shape)."""
HUB_NOTE = "hub id: not hashed, the hub revision it resolves to when loaded is not pinned"


@dataclass(frozen=True)
class Objective:
    """One slider: an objective of the training config, in ``w`` order."""

    index: int
    label: str
    reward: str
    """Registry name of the reward that scored it during training."""
    args: dict[str, Any]
    description: str
    """First line of the reward's docstring, with the reward's arguments."""


@dataclass(frozen=True)
class GenerationSpec:
    """One checked request: the trade-off ``preference`` (on the simplex) and the sampling knobs."""

    preference: tuple[float, ...]
    seed: int
    steps: int
    num_samples: int = 1
    prompt: str = ""
    source_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    """Editing models: ``[H, W, 3]`` float32 in [0, 1] at the model's size (see ``check_inputs``)."""


class InvalidRequest(ValueError):
    """A request value that cannot be served; ``field`` names it (HTTP answers 422 with both)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def decode_image(data: str, max_side: int) -> Image.Image:
    """An RGB image from base64 PNG or JPEG (optionally a ``data:`` URL); ``InvalidRequest`` naming
    ``source_image`` if it is not one or is over ``max_side`` pixels a side."""
    from PIL import UnidentifiedImageError

    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(payload, validate=True)
        image = Image.open(io.BytesIO(raw))
        if max(image.size) > max_side:
            raise InvalidRequest("source_image", f"is {image.size[0]}x{image.size[1]}; the limit is "
                                 f"{max_side} pixels a side")
        image.load()
    except (binascii.Error, UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        if isinstance(err, InvalidRequest):
            raise
        raise InvalidRequest("source_image", f"is not a base64 PNG or JPEG image ({err or type(err).__name__})") from None
    return image.convert("RGB")


@dataclass(frozen=True)
class BaseRef:
    """Where the base model of an adapter lives: a file (toy2d), a diffusers directory, or a hub id."""

    location: str
    """Absolute path, or the hub id as configured."""
    kind: BaseKind

    @classmethod
    def of_config(cls, cfg: Config, where: Path) -> BaseRef:
        """The base of a training config (relative paths from the working directory); fails if a
        local base is missing. ``where`` names the config in the messages."""
        location = base_location(cfg)
        name = "pretrain.checkpoint" if isinstance(location, Path) else "model.diffusers.pretrained"
        if isinstance(location, str) and not Path(location).exists() and HUB_ID.match(location):
            return cls(location, "hub")
        path = Path(location).resolve()
        if cfg.model.kind == "toy2d":
            if not path.is_file():
                raise FileNotFoundError(f"base checkpoint {path} ({name} of {where}) not found")
            return cls(str(path), "file")
        if not (path / "model_index.json").is_file():
            hub = " nor a hub id (namespace/name)" if isinstance(location, str) else ""
            raise FileNotFoundError(f"base model {path} ({name} of {where}) is not a diffusers directory "
                                    f"(no model_index.json){hub}")
        return cls(str(path), "directory")

    def sha256(self) -> str | None:
        return None if self.kind == "hub" else content_sha256(self.location)

    def manifest(self, sha256: str | None) -> dict[str, Any]:
        out = {"base_checkpoint": self.location, "base_kind": self.kind, "base_sha256": sha256}
        return {**out, "base_note": HUB_NOTE} if self.kind == "hub" else out

    def verify(self, sha256: str | None, manifest_path: Path) -> None:
        """Fail unless the base is still there and (local bases) has the recorded ``sha256``."""
        if self.kind == "hub":
            return
        path = Path(self.location)
        if not (path.is_dir() if self.kind == "directory" else path.is_file()):
            raise FileNotFoundError(f"base {self.kind} {path} named by {manifest_path} not found")
        if content_sha256(path) != sha256:
            what = "sha256 over its files" if self.kind == "directory" else "sha256"
            raise ValueError(f"base {self.kind} {path} changed since the model was exported ({what} differs "
                             f"from {manifest_path}); the adapter needs its own base")


def _describe(spec) -> str:
    from reward_servers.registry import reward_factory

    doc = (reward_factory(spec.name).__doc__ or "").strip().replace("``", "")
    args = ", ".join(f"{k}={v}" for k, v in spec.args.items())
    return (doc.splitlines()[0] if doc else spec.name) + (f" ({args})" if args else "")


class SliderModel:
    """The EMA policy of a finished run, its objectives, and ``generate`` for checked requests."""

    def __init__(self, cfg: Config, trainable: dict[str, torch.Tensor], base: BaseRef,
                 objectives: list[Objective], step: int, mlflow_run_id: str | None,
                 base_sha256: str | None = None):
        if cfg.model.kind not in MODEL_IO:
            raise ValueError(f"model.kind {cfg.model.kind!r} has no inference contract yet; "
                             f"known: {sorted(MODEL_IO)}")
        self.cfg, self.io = cfg, MODEL_IO[cfg.model.kind]
        self.base, self.objectives = base, objectives
        self.step, self.mlflow_run_id = step, mlflow_run_id
        self._base_sha256 = base_sha256  # hashing a multi-GB base directory once is enough
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.policy = build_policy(cfg.model, cfg.num_objectives, base.location).eval()
        self.policy.load_trainable_state(trainable)
        self.policy.to(self.device)

    @property
    def base_checkpoint(self) -> Path | str:
        """The base's path (a hub id stays a string)."""
        return self.base.location if self.base.kind == "hub" else Path(self.base.location)

    # ---- loading and saving ---------------------------------------------------------------------
    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> SliderModel:
        """The EMA weights of the run's latest checkpoint (base path resolved from the working dir)."""
        run_dir = Path(run_dir)
        cfg = Config.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
        latest = load_latest_checkpoint(run_dir)
        if latest is None:
            raise FileNotFoundError(f"run directory {run_dir} has no checkpoint (checkpoints/latest.json)")
        step, blob = latest
        base = BaseRef.of_config(cfg, run_dir / "config.yaml")
        objectives = [Objective(i, s.display, s.name, dict(s.args), _describe(s))
                      for i, s in enumerate(cfg.rewards.objectives)]
        return cls(cfg, blob["weights"]["ema"], base, objectives, step, blob["loop"]["mlflow_run_id"] or None)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> SliderModel:
        """A directory written by :meth:`export`; a local base must match the recorded sha256."""
        model_dir = Path(model_dir)
        manifest = json.loads((model_dir / MANIFEST).read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{model_dir / MANIFEST}: format {manifest.get('format')!r}, "
                             f"this code reads format {FORMAT_VERSION}")
        # Manifests written before image models had no base_kind: their base was a file.
        base = BaseRef(manifest["base_checkpoint"], manifest.get("base_kind", "file"))
        base.verify(manifest["base_sha256"], model_dir / MANIFEST)
        cfg = Config.model_validate(yaml.safe_load((model_dir / "config.yaml").read_text()))
        trainable = torch.load(model_dir / "trainable.pt", map_location="cpu", weights_only=True)
        objectives = [Objective(**o) for o in manifest["objectives"]]
        return cls(cfg, trainable, base, objectives, manifest["step"], manifest["mlflow_run_id"],
                   manifest["base_sha256"])

    def manifest(self) -> dict[str, Any]:
        if self._base_sha256 is None:
            self._base_sha256 = self.base.sha256()
        return {"format": FORMAT_VERSION, "model_kind": self.cfg.model.kind, **asdict(self.io),
                "objectives": [asdict(o) for o in self.objectives], **self.base.manifest(self._base_sha256),
                "step": self.step, "mlflow_run_id": self.mlflow_run_id}

    def export(self, out_dir: str | Path) -> Path:
        """Write the model directory (manifest, config, EMA trainable tensors)."""
        out = Path(out_dir)
        buf = io.BytesIO()
        torch.save(self.policy.trainable_state(), buf)
        atomic_write_bytes(out / "trainable.pt", buf.getvalue())
        atomic_write_text(out / "config.yaml", dump_config(self.cfg))
        atomic_write_text(out / MANIFEST, json.dumps(self.manifest(), indent=2) + "\n")
        return out

    # ---- inference ------------------------------------------------------------------------------
    @property
    def objective_labels(self) -> list[str]:
        return [o.label for o in self.objectives]

    @property
    def default_steps(self) -> int:
        return self.cfg.rollout.sampler.num_steps

    def check_preference(self, value: list[float] | dict[str, float]) -> tuple[float, ...]:
        """``w`` as a list in objective order or ``{label: weight}`` (missing labels weigh 0),
        checked and scaled onto the simplex."""
        labels = self.objective_labels
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(labels))
            if unknown:
                raise InvalidRequest("preference", f"unknown objective(s) {unknown}; objectives are {labels}")
            value = [value.get(label, 0.0) for label in labels]
        try:
            w = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidRequest("preference", f"must be {len(labels)} numbers, got {value!r}") from None
        if w.shape != (len(labels),):
            raise InvalidRequest("preference", f"needs {len(labels)} weights, one per objective {labels}; "
                                 f"got {w.size}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise InvalidRequest("preference", f"weights must be finite and >= 0, got {w.tolist()}")
        if w.sum() <= 0:
            raise InvalidRequest("preference", "at least one weight must be > 0")
        return tuple(float(x) for x in w / w.sum())

    @property
    def native_size(self) -> tuple[int, int] | None:
        """``(width, height)`` the image models generate at (None for point clouds)."""
        d = self.cfg.model.diffusers
        return (d.width, d.height) if self.io.output_kind == "image" else None

    def check_inputs(self, prompt: str, source_image: str | None, max_side: int | None = None) -> np.ndarray | None:
        """A request's prompt and base64 source image against what the model takes.

        Returns the source image as ``[H, W, 3]`` float32 in [0, 1], converted to RGB and resized
        (stretched) to ``model.diffusers`` height x width, or None without one. ``InvalidRequest``
        names the field: an undecodable image or one over ``max_side`` (default ``serve.max_size``),
        a source image for a model that edits none, a missing prompt or source image.
        """
        source = None
        if source_image is not None:
            image = decode_image(source_image, max_side or self.cfg.serve.max_size)
            if not self.io.uses_source_image:
                raise InvalidRequest("source_image", f"this {self.cfg.model.kind} model takes no source image")
            source = np.asarray(image.resize(self.native_size, Image.Resampling.BICUBIC), dtype=np.float32) / 255
        self._require(prompt, source is not None)
        return source

    def _require(self, prompt: str, has_source: bool) -> None:
        kind = self.cfg.model.kind
        if self.io.uses_prompt and not prompt.strip():
            raise InvalidRequest("prompt", f"is required: this {kind} model generates from a text prompt")
        if self.io.uses_source_image and not has_source:
            raise InvalidRequest("source_image", f"is required: this {kind} model edits a source image "
                                 "(base64 PNG or JPEG)")

    @torch.no_grad()
    def generate(self, specs: list[GenerationSpec]) -> list[np.ndarray]:
        """One output per spec, in order: ``[num_samples, *sample_shape]`` float32 samples (point
        clouds) or ``[num_samples, H, W, 3]`` uint8 images.

        Specs with the same ``(steps, num_samples)`` run as one batch through the rollout path
        (encode prompt and source image, sample, decode); each spec's noise comes from its own seed,
        so an output does not depend on what it was batched with (up to float rounding of batched
        kernels: images may differ by one level in a few pixels).
        """
        for s in specs:
            self._require(s.prompt, s.source_image is not None)
        sampler = self.cfg.rollout.sampler.model_copy(update={"kind": "ode"})
        out: list[np.ndarray | None] = [None] * len(specs)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(specs):
            by_shape.setdefault((s.steps, s.num_samples), []).append(i)
        for (steps, n), idx in by_shape.items():
            groups = [GroupSpec(epoch=-1, prompt_idx=i, slot=0, seed=specs[i].seed, preference=specs[i].preference,
                                prompt=specs[i].prompt, source_image=specs[i].source_image) for i in idx]
            batch = rollout_groups(self.policy, groups, n, sampler.model_copy(update={"num_steps": steps}),
                                   policy_version=-1, device=self.device)
            outputs = batch.samples_numpy().astype(np.float32) if batch.images is None else batch.images.numpy()
            for j, output in zip(idx, outputs.reshape(len(idx), n, *outputs.shape[1:])):
                out[j] = output
        return out

    def to_png(self, output: np.ndarray, preference: tuple[float, ...], width: int, height: int) -> bytes:
        """PNG of one output: a scatter for point clouds (targets starred), else its first image."""
        if self.io.output_kind == "image":
            image = Image.fromarray(np.asarray(output[0], dtype=np.uint8)).resize((width, height))
        else:
            image = self._scatter(output, preference, width, height)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    def _scatter(self, points: np.ndarray, preference: tuple[float, ...], width: int, height: int) -> Image.Image:
        lim = 1.3 * self.cfg.pretrain.data.radius
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)

        def px(x: float, y: float) -> tuple[float, float]:
            return (x + lim) / (2 * lim) * (width - 1), (lim - y) / (2 * lim) * (height - 1)

        draw.line([px(-lim, 0), px(lim, 0)], fill=(220, 220, 220))
        draw.line([px(0, -lim), px(0, lim)], fill=(220, 220, 220))
        # Darkened: the two-objective colour map is pale grey in the middle of the slider.
        colour = tuple(int(190 * c) for c in preference_colours(np.asarray([preference]))[0])
        r = max(1.0, min(width, height) / 160)
        for x, y in points:
            cx, cy = px(float(x), float(y))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        for name, (tx, ty) in target_points(self.cfg):
            cx, cy = px(tx, ty)
            draw.regular_polygon((cx, cy, 3 * r + 3), 5, fill="black")
            left = cx > 0.7 * width  # keep labels near the right edge inside the picture
            x = cx - 3 * r - 5 - draw.textlength(name) if left else cx + 3 * r + 5
            draw.text((x, cy - 3 * r - 8), name, fill="black")
        return image

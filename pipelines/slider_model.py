"""A trained slider ready for inference: base model + EMA trainable weights + objectives.

One object serves every way a trained model is used after training — the MLflow pyfunc model,
the Ray Serve endpoint and the benchmark — and loads from either of two places:

- a training run directory (``config.yaml`` + the latest checkpoint's EMA weights);
- a model directory written by :meth:`SliderModel.export` (what the MLflow model carries)::

      slider.json     manifest: model kind, output kind, objectives, base pointer + sha256, step
      config.yaml     the resolved training config
      trainable.pt    EMA trainable tensors (LoRA + preference modules), torch weights-only format

The base model is not copied: the manifest points at it and records its sha256, and loading fails
if the file there is not the one the adapter was trained on.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from infra.checkpoint import atomic_write_bytes, atomic_write_text, load_latest_checkpoint
from infra.config import Config, dump_config
from pipelines.plots import preference_colours, target_points
from policies.batch import GroupSpec
from policies.policy import build_policy
from policies.rollout import sample_groups

MANIFEST = "slider.json"
FORMAT_VERSION = 1

OutputKind = Literal["points", "image"]


@dataclass(frozen=True)
class ModelIO:
    """What a backbone family takes and gives at inference (drives the request checks and the page)."""

    output_kind: OutputKind
    """``points``: a ``[N, 2]`` sample cloud, shown as a scatter; ``image``: ``[H, W, 3]`` uint8."""
    uses_prompt: bool
    uses_source_image: bool


MODEL_IO: dict[str, ModelIO] = {"toy2d": ModelIO("points", uses_prompt=False, uses_source_image=False)}
"""Inference contract per ``model.kind``; an image backbone adds its entry next to its generator."""


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


class InvalidRequest(ValueError):
    """A request value that cannot be served; ``field`` names it (HTTP answers 422 with both)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _describe(spec) -> str:
    from reward_servers.registry import reward_factory

    doc = (reward_factory(spec.name).__doc__ or "").strip().replace("``", "")
    args = ", ".join(f"{k}={v}" for k, v in spec.args.items())
    return (doc.splitlines()[0] if doc else spec.name) + (f" ({args})" if args else "")


class SliderModel:
    """The EMA policy of a finished run, its objectives, and ``generate`` for checked requests."""

    def __init__(self, cfg: Config, trainable: dict[str, torch.Tensor], base_checkpoint: Path,
                 objectives: list[Objective], step: int, mlflow_run_id: str | None):
        if cfg.model.kind not in MODEL_IO:
            raise ValueError(f"model.kind {cfg.model.kind!r} has no inference contract yet; "
                             f"known: {sorted(MODEL_IO)}")
        self.cfg, self.io = cfg, MODEL_IO[cfg.model.kind]
        self.base_checkpoint, self.objectives = base_checkpoint, objectives
        self.step, self.mlflow_run_id = step, mlflow_run_id
        self.policy = build_policy(cfg.model, cfg.num_objectives, base_checkpoint).eval()
        self.policy.load_trainable_state(trainable)

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
        base = Path(cfg.pretrain.checkpoint).resolve()
        if not base.is_file():
            raise FileNotFoundError(f"base checkpoint {base} (pretrain.checkpoint of {run_dir}) not found")
        objectives = [Objective(i, s.display, s.name, dict(s.args), _describe(s))
                      for i, s in enumerate(cfg.rewards.objectives)]
        return cls(cfg, blob["weights"]["ema"], base, objectives, step, blob["loop"]["mlflow_run_id"] or None)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> SliderModel:
        """A directory written by :meth:`export`; the base file must match the recorded sha256."""
        model_dir = Path(model_dir)
        manifest = json.loads((model_dir / MANIFEST).read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{model_dir / MANIFEST}: format {manifest.get('format')!r}, "
                             f"this code reads format {FORMAT_VERSION}")
        base = Path(manifest["base_checkpoint"])
        if not base.is_file():
            raise FileNotFoundError(f"base checkpoint {base} named by {model_dir / MANIFEST} not found")
        if _sha256(base) != manifest["base_sha256"]:
            raise ValueError(f"base checkpoint {base} changed since the model was exported "
                             f"(sha256 differs from {model_dir / MANIFEST}); the adapter needs its own base")
        cfg = Config.model_validate(yaml.safe_load((model_dir / "config.yaml").read_text()))
        trainable = torch.load(model_dir / "trainable.pt", map_location="cpu", weights_only=True)
        objectives = [Objective(**o) for o in manifest["objectives"]]
        return cls(cfg, trainable, base, objectives, manifest["step"], manifest["mlflow_run_id"])

    def manifest(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "model_kind": self.cfg.model.kind, **asdict(self.io),
                "objectives": [asdict(o) for o in self.objectives],
                "base_checkpoint": str(self.base_checkpoint), "base_sha256": _sha256(self.base_checkpoint),
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

    @torch.no_grad()
    def generate(self, specs: list[GenerationSpec]) -> list[np.ndarray]:
        """One output per spec, in order: ``[num_samples, *sample_shape]`` float32 samples.

        Specs with the same ``(steps, num_samples)`` run as one batch; each spec's noise comes from
        its own seed, so an output does not depend on what it was batched with.
        """
        sampler = self.cfg.rollout.sampler.model_copy(update={"kind": "ode"})
        out: list[np.ndarray | None] = [None] * len(specs)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(specs):
            by_shape.setdefault((s.steps, s.num_samples), []).append(i)
        for (steps, n), idx in by_shape.items():
            groups = [GroupSpec(epoch=-1, prompt_idx=i, slot=0, seed=specs[i].seed,
                                preference=specs[i].preference, prompt=specs[i].prompt) for i in idx]
            batch = sample_groups(self.policy.velocity, groups, n, self.policy.sample_shape,
                                  sampler.model_copy(update={"num_steps": steps}), policy_version=-1)
            for j, samples in zip(idx, batch.samples_numpy().reshape(len(idx), n, *self.policy.sample_shape)):
                out[j] = samples.astype(np.float32)
        return out

    def to_png(self, output: np.ndarray, preference: tuple[float, ...], width: int, height: int) -> bytes:
        """PNG of one output: a scatter for point clouds (targets starred), the image itself otherwise."""
        if self.io.output_kind == "image":
            image = Image.fromarray(np.asarray(output, dtype=np.uint8)).resize((width, height))
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

"""A trained slider at inference: the base model + EMA trainable weights, and ``generate`` for checked requests.

One object serves every way a trained model is used after training — the MLflow pyfunc model,
the Ray Serve endpoint and the benchmark — and loads from either of two places:

- a training run directory (``config.yaml`` + the latest checkpoint's EMA weights; the base where
  the config says it is);
- a model directory (``pipelines.slider_artifact``: what the MLflow model carries, base included or
  pinned on the hub).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from infra.config import Config
from pipelines.plots import target_points
from pipelines.slider_artifact import (Objective, RunWeights, is_hub_id, local_base, model_io, objectives_of,
                                       read_manifest, read_trainable, resolve_base)
from pipelines.slider_render import png, scatter
from pipelines.slider_requests import GenerationSpec, check_inputs, preference_on_simplex, require_inputs
from policies.batch import GroupSpec
from policies.policy import build_policy
from policies.rollout import rollout_groups


class SliderModel:
    """The EMA policy of a finished run, its objectives, and ``generate`` for checked requests."""

    def __init__(self, cfg: Config, trainable: dict[str, torch.Tensor], base: str | Path,
                 objectives: list[Objective], step: int, mlflow_run_id: str | None):
        self.cfg, self.io = cfg, model_io(cfg.model.kind)
        self.base, self.objectives = base, objectives  # a local path; a hub id only for format-1 hub models
        self.step, self.mlflow_run_id = step, mlflow_run_id
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.policy = build_policy(cfg.model, cfg.num_objectives, base).eval()
        self.policy.load_trainable_state(trainable)
        self.policy.to(self.device)

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> SliderModel:
        """The EMA weights of the run's latest checkpoint (base path resolved from the working dir)."""
        run = RunWeights.read(run_dir)
        cfg = run.cfg
        base = cfg.model.diffusers.pretrained if is_hub_id(cfg) else local_base(cfg, Path(run_dir) / "config.yaml")
        return cls(cfg, run.ema, base, objectives_of(cfg), run.step, run.mlflow_run_id)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> SliderModel:
        """A model directory (``pipelines.slider_artifact``); its base must match the recorded digest."""
        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir)
        base = resolve_base(model_dir, manifest["base"])
        cfg = Config.model_validate(yaml.safe_load((model_dir / "config.yaml").read_text()))
        return cls(cfg, read_trainable(model_dir), base, [Objective(**o) for o in manifest["objectives"]],
                   manifest["step"], manifest["mlflow_run_id"])

    # ---- inference ------------------------------------------------------------------------------
    @property
    def objective_labels(self) -> list[str]:
        return [o.label for o in self.objectives]

    @property
    def default_steps(self) -> int:
        return self.cfg.rollout.sampler.num_steps

    def check_preference(self, value: list[float] | dict[str, float]) -> tuple[float, ...]:
        """``w`` as a list in objective order or ``{label: weight}``, checked and put on the simplex."""
        return preference_on_simplex(value, self.objective_labels)

    @property
    def native_size(self) -> tuple[int, int] | None:
        """``(width, height)`` the image models generate at (None for point clouds)."""
        d = self.cfg.model.diffusers
        return None if self.io.output_kind == "points" else (d.width, d.height)

    def check_inputs(self, prompt: str, source_image: str | None, max_side: int | None = None) -> np.ndarray | None:
        """A request's prompt and base64 source image against what the model takes (see
        ``pipelines.slider_requests.check_inputs``); ``max_side`` defaults to ``serve.max_size``."""
        return check_inputs(self.cfg.model.kind, self.io, self.native_size, prompt, source_image,
                            max_side or self.cfg.serve.max_size)

    @torch.no_grad()
    def generate(self, specs: list[GenerationSpec]) -> list[np.ndarray]:
        """One output per spec, in order: ``[num_samples, *sample_shape]`` float32 samples (point
        clouds), ``[num_samples, H, W, 3]`` uint8 images or ``[num_samples, F, H, W, 3]`` uint8 videos.

        Specs with the same ``(steps, num_samples)`` run as one batch through the rollout path
        (encode prompt and source image, sample, decode); each spec's noise comes from its own seed,
        so an output does not depend on what it was batched with (up to float rounding of batched
        kernels: images may differ by one level in a few pixels).
        """
        for s in specs:
            require_inputs(self.cfg.model.kind, self.io, s.prompt, s.source_image is not None)
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
        """PNG of one output: a scatter for point clouds (targets starred), else its first image (the
        first frame of a video)."""
        if self.io.output_kind == "points":
            radius = 1.3 * self.cfg.pretrain.data.radius
            return png(scatter(output, preference, target_points(self.cfg), radius, width, height))
        first = output[0] if self.io.output_kind == "image" else output[0, 0]
        return png(Image.fromarray(np.asarray(first, dtype=np.uint8)).resize((width, height)))

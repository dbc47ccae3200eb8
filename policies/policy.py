"""A trainable preference-conditioned policy around a velocity backbone.

The policy owns three views of one network:

- ``velocity(x, t, w, cond)``: the current weights (LoRA + preference modules trainable);
- ``reference_velocity(x, t, cond)``: the base model — adapters off and no ``w`` — the KL reference;
- ``swapped(state)``: temporarily runs with other trainable weights (the old/sampling policy or the
  EMA), so no second copy of the backbone is ever held.

Only the trainable tensors move between roles (rollout actors, checkpoints): see
:meth:`Policy.trainable_state`. The backbone (toy2d, or a diffusers one from
``policies.diffusers_backbones``) also encodes conditions and decodes samples; the policy forwards
those calls.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import peft
import torch
from torch import nn

from infra.checkpoint import atomic_write_bytes
from infra.config import ModelConfig, SamplerConfig
from policies.batch import Condition
from policies.samplers import time_grid
from policies.toy2d import Toy2dVelocity

PREF_PREFIX = "pref."
"""Parameter-name fragment of the preference modules (they train fully, at a larger lr)."""


def build_backbone(model_cfg: ModelConfig, num_objectives: int) -> nn.Module:
    """A freshly initialised toy2d backbone (diffusers backbones load with :func:`load_base`)."""
    if model_cfg.kind == "toy2d":
        return Toy2dVelocity(num_objectives, model_cfg.hidden_dim, model_cfg.num_blocks,
                             model_cfg.time_embed_dim, model_cfg.pref_hidden_dim)
    raise ValueError(f"build_backbone makes toy2d only; model.kind={model_cfg.kind!r} loads a "
                     "diffusers checkpoint with load_base")


def _architecture(model_cfg: ModelConfig) -> dict:
    return model_cfg.model_dump(include={"kind", "hidden_dim", "num_blocks", "time_embed_dim"})


def save_base(model: nn.Module, model_cfg: ModelConfig, path: str | Path) -> None:
    """Save a pre-trained base model (backbone weights only, no preference modules) atomically."""
    state = {k: v for k, v in model.state_dict().items() if PREF_PREFIX not in k}
    buf = io.BytesIO()
    torch.save({"architecture": _architecture(model_cfg), "state_dict": state}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_base(model_cfg: ModelConfig, num_objectives: int, path: str | Path, encoders: bool = True) -> nn.Module:
    """Build the backbone and load base weights; fails clearly if the architecture differs.

    Diffusers kinds load a pipeline directory or hub id; ``encoders=False`` skips the text
    encoders and the VAE (the learner trains on conditions encoded by the rollout actors).
    """
    if model_cfg.kind != "toy2d":
        from policies.diffusers_backbones import load_diffusers_backbone

        return load_diffusers_backbone(model_cfg, num_objectives, path, encoders)
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    saved, wanted = blob["architecture"], _architecture(model_cfg)
    if saved != wanted:
        diff = {k: (saved.get(k), wanted[k]) for k in wanted if saved.get(k) != wanted[k]}
        raise ValueError(f"base checkpoint {path} was built with a different model config "
                         f"(field: (checkpoint, config)) {diff}; re-run pretrain or fix model.*")
    model = build_backbone(model_cfg, num_objectives)
    missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
    if unexpected or any(PREF_PREFIX not in k for k in missing):
        raise ValueError(f"base checkpoint {path} does not fit the backbone: "
                         f"missing={missing}, unexpected={unexpected}")
    return model


class Policy(nn.Module):
    """Preference-conditioned velocity model with LoRA (peft) or full fine-tuning."""

    def __init__(self, backbone: nn.Module, model_cfg: ModelConfig):
        super().__init__()
        self.lora = model_cfg.lora_rank > 0
        self.sample_shape: tuple[int, ...] = tuple(backbone.sample_shape)
        if self.lora:
            init = True if model_cfg.lora_init == "default" else model_cfg.lora_init  # peft's own spelling
            lora_cfg = peft.LoraConfig(r=model_cfg.lora_rank, lora_alpha=model_cfg.lora_alpha, init_lora_weights=init,
                                       target_modules=backbone.lora_target_modules(model_cfg.lora_targets))
            self.net = peft.get_peft_model(backbone, lora_cfg)
            self.reference = None
        else:
            self.reference = copy.deepcopy(backbone).requires_grad_(False)
            self.net = backbone
        for name, p in self.net.named_parameters():
            if PREF_PREFIX in name:
                p.requires_grad_(True)

    def forward(self, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None,
                cond: Condition | None = None) -> torch.Tensor:
        return self.net(x, t, w, cond)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None,
                 cond: Condition | None = None) -> torch.Tensor:
        return self.net(x, t, w, cond)

    def reference_velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        """The base model: adapter disabled (or the frozen copy) and ``w`` absent."""
        if self.reference is not None:
            return self.reference(x, t, None, cond)
        with self.net.disable_adapter():
            return self.net(x, t, None, cond)

    @property
    def backbone(self) -> nn.Module:
        return self.net.get_base_model() if self.lora else self.net

    def encode_condition(self, prompts: list[str], source_images=None) -> Condition | None:
        """One condition row per prompt (None for toy2d)."""
        return self.backbone.encode_condition(prompts, source_images)

    def decode(self, samples: torch.Tensor) -> torch.Tensor | None:
        """Samples -> images ``[B, H, W, 3]`` (video ``[B, F, H, W, 3]``) in [0, 1]; None for toy2d."""
        return self.backbone.decode(samples)

    def time_grid(self, sampler: SamplerConfig) -> torch.Tensor:
        """The sampler's ``[num_steps + 1]`` times from 1 to 0: the backbone's own diffusers scheduler's
        sigmas (``time_grid: scheduler``) or the plain shifted linspace (``uniform``; toy2d has no scheduler)."""
        if sampler.time_grid == "scheduler":
            return self.backbone.scheduler_sigmas(sampler.num_steps, sampler.shift)
        return time_grid(sampler.num_steps, torch.float32, sampler.shift)

    def trainable_named(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.net.named_parameters() if p.requires_grad)

    def adapter_report(self, targets: list[str]) -> dict[str, int]:
        """How many modules each LoRA target name bound (``{}`` without LoRA): a target that bound none,
        or a count that differs between roles, means weights would sync into nothing."""
        if not self.lora:
            return {}
        from peft.tuners.lora import LoraLayer

        counts = dict.fromkeys(targets, 0)
        for name, module in self.net.named_modules():
            if isinstance(module, LoraLayer):
                for target in targets:  # a target names a module by its trailing path ("fc1", "attn.to_q")
                    counts[target] += name == target or name.endswith("." + target)
        return counts

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies of the trainable tensors (what is synced and checkpointed)."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.trainable_named()}

    @torch.no_grad()
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.trainable_named())
        if params.keys() != state.keys():
            missing = sorted(params.keys() - state.keys())[:5]
            extra = sorted(state.keys() - params.keys())[:5]
            raise ValueError(f"trainable state does not match the policy: missing={missing} extra={extra}")
        for n, p in params.items():
            p.copy_(state[n])

    @contextmanager
    def swapped(self, state: dict[str, torch.Tensor]) -> Iterator[None]:
        """Run with ``state`` as the trainable weights, restoring the current ones on exit."""
        current = {n: p.detach().clone() for n, p in self.trainable_named()}
        self.load_trainable_state(state)
        try:
            yield
        finally:
            self.load_trainable_state(current)

    def param_groups(self, lr: float, pref_lr_mult: float) -> list[dict]:
        """Backbone/LoRA params at ``lr``; preference modules at ``lr * pref_lr_mult``."""
        pref = [p for n, p in self.trainable_named() if PREF_PREFIX in n]
        rest = [p for n, p in self.trainable_named() if PREF_PREFIX not in n]
        groups = [{"params": rest, "lr": lr, "name": "backbone"},
                  {"params": pref, "lr": lr * pref_lr_mult, "name": "preference"}]
        return [g for g in groups if g["params"]]


def build_policy(model_cfg: ModelConfig, num_objectives: int, base_checkpoint: str | Path,
                 encoders: bool = True) -> Policy:
    """The policy the rollout actors and the learner both build (identical initial weights).

    ``encoders=False`` (the learner) leaves out text encoders and VAE of diffusers backbones.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)  # preference-module and LoRA init must match on every actor and rank
        backbone = load_base(model_cfg, num_objectives, base_checkpoint, encoders)
        # Loading a pretrained pipeline may draw random numbers (how many can differ between the
        # first and later loads in a process): re-seed so the LoRA init does not depend on it.
        torch.manual_seed(1)
        return Policy(backbone, model_cfg)

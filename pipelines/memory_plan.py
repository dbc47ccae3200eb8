"""Each role's peak GPU memory, measured on the ``meta`` device before anything is loaded.

Parameters, gradients and optimizer states are counted from the policy the dry run builds on meta;
activations are measured by running the role's own transformer passes on meta tensors while
:class:`LiveBytes` tracks the bytes alive after every op:

- a rollout actor: one sampler step on ``rollout.micro_batch_size`` samples (x2 rows with CFG), no grad;
- a learner rank: the DiffusionNFT micro-batch (``learner.micro_batch_size x train_timesteps`` rows):
  the old-policy and reference passes without grad, then the current policy's pass and its backward.

Attention is accounted as a flash kernel (it keeps q, k, v and the output, O(S)); the meta math path would
materialise the S x S matrix that flash attention never holds. Not counted: the text encoders and the VAE
(their configs do not ship offline), the CUDA context (~0.5 GiB) and allocator fragmentation. So the
estimate is a floor: a plan over ``cluster.gpu_memory_gb`` is refused, one close to it is a warning.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from infra.config import Config
from policies.batch import Condition

GIB = 2**30
CLIP_TOKENS = 77
"""SD3's CLIP context, prepended to the T5 tokens."""


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors ops create that are still alive, and their peak (views and in-place results
    share storage and add nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                nbytes = t.numel() * t.element_size()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, nbytes)
        return out


class _FlashAttention(torch.autograd.Function):
    """What a flash kernel keeps: the output forward, q/k/v for backward (no S x S matrix)."""

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.save_for_backward(q, k, v)
        return q.new_empty((*q.shape[:-1], v.shape[-1]))

    @staticmethod
    def backward(ctx, grad):
        q, k, v = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextmanager
def flash_attention_accounting():
    """Route ``F.scaled_dot_product_attention`` (looked up at call time by diffusers) through
    :class:`_FlashAttention` while measuring."""
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention
    def flash(query, key, value, *args, **kwargs):
        return _FlashAttention.apply(query, key, value)

    functional.scaled_dot_product_attention = flash
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original


def meta_condition(cfg: Config, transformer_config, rows: int, dtype: torch.dtype,
                   sample_shape: tuple[int, ...]) -> Condition:
    """Condition rows of the shapes the backbone's encoders produce (``policies.diffusers_backbones``)."""
    d, c, meta = cfg.model.diffusers, transformer_config, {"device": "meta", "dtype": dtype}
    if cfg.model.kind == "sd3":
        return Condition(text=torch.empty(rows, CLIP_TOKENS + d.max_sequence_length, c.joint_attention_dim, **meta),
                         pooled=torch.empty(rows, c.pooled_projection_dim, **meta))
    if cfg.model.kind == "flux_kontext":
        return Condition(text=torch.empty(rows, d.max_sequence_length, c.joint_attention_dim, **meta),
                         pooled=torch.empty(rows, c.pooled_projection_dim, **meta),
                         source=torch.empty(rows, *sample_shape, **meta))  # Kontext edits: source tokens too
    return Condition(text=torch.empty(rows, d.max_sequence_length, c.caption_channels, **meta),
                     audio_text=torch.empty(rows, d.max_sequence_length, c.caption_channels, **meta),
                     text_mask=torch.ones(rows, d.max_sequence_length, device="meta"))


@dataclass
class RoleMemory:
    role: str
    weights_gib: float
    """Parameters, gradients, optimizer states and weight copies."""
    activations_gib: float
    """Peak bytes alive during the measured passes."""

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.activations_gib


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _measure(fn) -> int:
    with flash_attention_accounting(), LiveBytes() as live:
        fn()
    return live.peak


def role_memory(cfg: Config, policy) -> list[RoleMemory]:
    """Estimated peak GPU memory of a rollout actor and of a learner rank, for a policy built on meta."""
    backbone, ro, lc, al = policy.backbone, cfg.rollout, cfg.learner, cfg.algorithm
    dtype, shape = backbone.dtype, tuple(policy.sample_shape)
    trainable = [p for _, p in policy.trainable_named()]
    n_train = sum(p.numel() for p in trainable)
    weights = _bytes(policy.parameters())  # the transformer with its adapters and the preference modules

    def passes(rows: int, grad: bool) -> None:
        x = torch.empty(rows, *shape, device="meta", dtype=dtype)
        t = torch.empty(rows, device="meta")
        w = torch.empty(rows, cfg.num_objectives, device="meta")
        cond = meta_condition(cfg, backbone.transformer.config, rows, dtype, shape)
        with torch.no_grad():
            policy.velocity(x, t, w, cond)  # the old policy (and the rollout's step)
            if grad and al.kl_coef > 0:
                policy.reference_velocity(x, t, cond)
        if grad:
            policy.velocity(x, t, w, cond).float().square().mean().backward()

    per_actor = math.ceil(ro.prompts_per_step * cfg.preferences.slots_per_prompt / ro.num_actors) * ro.group_size
    rows = min(per_actor, ro.micro_batch_size or per_actor) * (2 if ro.sampler.guidance_scale > 1 else 1)
    rollout = RoleMemory("rollout actor", weights / GIB, _measure(lambda: passes(rows, False)) / GIB)
    # ZeRO-2: fp32 master and Adam's two moments are partitioned over the ranks; gradients stay whole in
    # the model dtype (bucketed reduce); the old and EMA copies are whole fp32 (actors.learner).
    zero = lc.world_size if lc.zero_stage >= 1 else 1
    optim = n_train * 4 * 3 / zero + n_train * dtype.itemsize + n_train * 4 * 2
    learner = RoleMemory("learner rank", (weights + optim) / GIB,
                         _measure(lambda: passes(lc.micro_batch_size * al.train_timesteps, True)) / GIB)
    for p in trainable:
        p.grad = None
    return [rollout, learner]

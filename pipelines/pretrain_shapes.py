"""Pre-train a tiny diffusers base on the shapes world (``paretoslider pretrain -c configs/shapes.yaml``).

1. The ``AutoencoderKL`` learns to reconstruct shapes images; its latent shift and scale are then set
   from the data (as SD3's ``shift_factor`` / ``scaling_factor``).
2. ``pretrain.dataset_size`` examples are encoded once (latents; prompts through the frozen tiny
   text encoders, as SD3 keeps its encoders frozen) and the transformer learns rectified flow on
   them: captions -> images (SD3 kind), or instruction + source latents -> edited image (FLUX.1
   Kontext kind), logit-normal ``t`` (SD3's choice), ``pretrain.caption_dropout`` empty prompts.
3. The base is measured on fresh samples — by the shapes classifier (``reward_servers.shapes_classifier``)
   and the analytic reader of ``policies.shapes``, without and with classifier-free guidance — and saved
   with ``save_pretrained``: a directory that ``from_pretrained`` loads like a hub checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from infra.config import Config
from policies import shapes
from policies.batch import Condition
from policies.diffusers_backbones import BACKBONES, DiffusersBackbone
from policies.rollout import guided_velocity
from policies.samplers import ode_sample
from policies.tiny_models import TINY_BUILDERS
from reward_servers.shapes import ssim
from reward_servers.shapes_classifier import classifier_readings, load_classifier



def shapes_batch(rng: np.random.Generator, n: int, size: int, edit: bool):
    """``(prompts, targets [n, H, W, 3], sources or None)`` from the procedural world."""
    if edit:
        prompts, sources, targets = zip(*(shapes.edit_example(rng, size) for _ in range(n)))
        return list(prompts), np.stack(targets), np.stack(sources)
    scenes = [shapes.random_scene(rng, size) for _ in range(n)]
    return [s.caption() for s in scenes], np.stack([shapes.render(s, size) for s in scenes]), None


def _bar(n: int, desc: str, progress: bool):
    return tqdm(range(n), desc=desc, disable=not progress, mininterval=0.5 if sys.stderr.isatty() else 15.0)


def train_vae(vae, cfg: Config, rng: np.random.Generator, progress: bool) -> None:
    pc, size = cfg.pretrain, cfg.model.tiny.image_size
    opt = torch.optim.AdamW(vae.parameters(), lr=pc.vae_lr)
    vae.train()
    for i in (bar := _bar(pc.vae_steps, "pretrain vae", progress)):
        _, images, _ = shapes_batch(rng, pc.vae_batch_size, size, edit=False)
        x = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
        posterior = vae.encode(x).latent_dist
        loss = ((vae.decode(posterior.sample()).sample - x) ** 2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        _, images, _ = shapes_batch(rng, 512, size, edit=False)
        z = vae.encode(torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1.0 / z.std()))


@dataclass
class LatentDataset:
    """The pre-training set, encoded once: latents, source latents, and one condition row per prompt."""

    latents: torch.Tensor
    sources: torch.Tensor | None
    prompt_index: np.ndarray
    """Row of each example in ``conditions``; row 0 is the empty prompt."""
    conditions: Condition


@torch.no_grad()
def encode_dataset(backbone: DiffusersBackbone, cfg: Config, rng: np.random.Generator, edit: bool) -> LatentDataset:
    prompts, targets, sources = shapes_batch(rng, cfg.pretrain.dataset_size, cfg.model.tiny.image_size, edit)
    unique = ["", *sorted(set(prompts))]
    row = {p: i for i, p in enumerate(unique)}

    def encode(images: np.ndarray) -> torch.Tensor:
        return torch.cat([backbone.encode_images(torch.from_numpy(c)) for c in np.array_split(images, len(images) // 64 + 1)])

    return LatentDataset(encode(targets), None if sources is None else encode(sources),
                         np.array([row[p] for p in prompts]), backbone.encode_condition(unique))


def flow_matching_step(backbone: DiffusersBackbone, data: LatentDataset, idx: np.ndarray, drop: np.ndarray,
                       gen: torch.Generator) -> torch.Tensor:
    """Rectified-flow loss ``||v(x_t, t, c) - (eps - x0)||^2`` on examples ``idx`` (``drop``: empty prompt).

    An edit with its instruction dropped learns to return the source: an empty instruction asks for
    no change, so the unconditional branch of classifier-free guidance is the copy, not a blur of edits."""
    x0 = data.latents[idx]
    cond = data.conditions.rows(torch.from_numpy(np.where(drop, 0, data.prompt_index[idx])))
    if data.sources is not None:
        cond.source = data.sources[idx]
        x0 = torch.where(torch.from_numpy(drop).view(-1, 1, 1, 1), cond.source, x0)
    t = torch.sigmoid(torch.randn(x0.shape[0], generator=gen))
    eps = torch.randn(x0.shape, generator=gen)
    t_ = t.view(-1, 1, 1, 1)
    return ((backbone((1 - t_) * x0 + t_ * eps, t, None, cond) - (eps - x0)) ** 2).mean()


@torch.no_grad()
def generate(backbone: DiffusersBackbone, prompts: list[str], sources: np.ndarray | None,
             gen: torch.Generator, guidance_scale: float = 1.0, batch: int = 64, steps: int = 20) -> np.ndarray:
    """Decoded ODE samples for ``prompts`` (and sources), with classifier-free guidance when > 1."""
    out = []
    for a in range(0, len(prompts), batch):
        chunk, src = prompts[a:a + batch], None if sources is None else sources[a:a + batch]
        cond = backbone.encode_condition(chunk, src)
        uncond = backbone.encode_condition([""] * len(chunk), src) if guidance_scale > 1 else None
        v = guided_velocity(lambda x, t, w, c: backbone(x, t, None, c), cond, uncond, guidance_scale)
        noise = torch.randn((len(chunk), *backbone.sample_shape), generator=gen)
        out.append(backbone.decode(ode_sample(v, noise, None, steps)).numpy())
    return np.concatenate(out)


def measure_base(backbone: DiffusersBackbone, cfg: Config, edit: bool) -> dict[str, float]:
    """How well generated images follow their prompts, without and with the rollouts' guidance:
    ``cfg<s>/classifier/<attribute>`` (the shapes classifier, the measure we report) and
    ``cfg<s>/reader/<attribute>`` (the analytic reader); for edits also ``cfg<s>/kept_unasked`` (share of
    the attributes an instruction does not change that keep the source's value, by the classifier) and
    the SSIM to the source."""
    n, size = cfg.pretrain.eval_samples, cfg.model.tiny.image_size
    rng = np.random.default_rng(cfg.pretrain.seed + 1)
    if edit:
        prompts, targets, sources = shapes_batch(rng, n, size, edit=True)
    else:
        captions = shapes.caption_grid()
        prompts, sources = [captions[i % len(captions)] for i in range(n)], None
    classifier = load_classifier()
    read_src = classifier_readings(classifier, sources) if edit else None
    metrics = {}
    for scale in sorted({1.0, cfg.rollout.sampler.guidance_scale}):
        images = generate(backbone, prompts, sources, torch.Generator().manual_seed(cfg.pretrain.seed + 1), scale,
                          steps=cfg.pretrain.eval_steps)
        key = f"cfg{scale:g}"
        read = classifier_readings(classifier, images)
        learned = shapes.attribute_accuracy(images, prompts, read)
        metrics.update({f"{key}/classifier/{k}": v for k, v in learned.items()})
        metrics.update({f"{key}/reader/{k}": v for k, v in shapes.attribute_accuracy(images, prompts).items()})
        if edit:
            kept = [r[a] == r_src[a] for r, r_src, p in zip(read, read_src, prompts)
                    for a in shapes.EDITABLE if a not in shapes.parse_prompt(p)]
            metrics[f"{key}/kept_unasked"] = float(np.mean(kept))
            metrics[f"{key}/ssim_to_source"] = float(ssim(images, sources).mean())
    if edit:
        metrics["ssim_target_to_source"] = float(ssim(targets, sources).mean())
    return metrics


def pretrain_shapes(cfg: Config, out: str | Path | None = None, progress: bool = True) -> Path:
    """Build the tiny base of ``model.kind``, train it on the shapes world, measure it, save it."""
    mc, pc = cfg.model, cfg.pretrain
    size = mc.tiny.image_size
    if (mc.diffusers.height, mc.diffusers.width) != (size, size):
        raise ValueError(f"model.diffusers height/width {mc.diffusers.height}x{mc.diffusers.width} must equal "
                         f"model.tiny.image_size {size} for the shapes world")
    edit = cfg.data.kind == "shapes_edit"
    path = Path(out or pc.checkpoint)
    start = time.perf_counter()
    torch.manual_seed(pc.seed)
    rng, gen = np.random.default_rng(pc.seed), torch.Generator().manual_seed(pc.seed)
    pipe = TINY_BUILDERS[mc.kind](mc.tiny, shapes.WORDS)
    train_vae(pipe.vae, cfg, rng, progress)
    vae_s = time.perf_counter() - start
    backbone = BACKBONES[mc.kind](pipe.transformer, pipe, dict(pipe.vae.config), cfg.num_objectives, mc).eval()
    data = encode_dataset(backbone, cfg, rng, edit)
    params = list(backbone.transformer.parameters())
    opt = torch.optim.AdamW(params, lr=pc.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=pc.lr, total_steps=pc.steps, pct_start=0.05)
    backbone.train()
    for i in (bar := _bar(pc.steps, "pretrain transformer", progress)):
        idx = rng.integers(len(data.latents), size=pc.batch_size)
        loss = flow_matching_step(backbone, data, idx, rng.random(pc.batch_size) < pc.caption_dropout, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if i % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    backbone.eval().requires_grad_(False)
    train_s = time.perf_counter() - start - vae_s
    metrics = measure_base(backbone, cfg, edit)
    metrics.update(vae_seconds=vae_s, transformer_seconds=train_s, total_seconds=time.perf_counter() - start)
    pipe.save_pretrained(str(path))
    (path / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2))
    if progress:
        print(f"pretrained {mc.kind} base in {metrics['total_seconds']:.0f}s -> {path}")
        print(json.dumps(metrics, indent=2))
    return path

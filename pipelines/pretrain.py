"""``paretoslider pretrain``: the base model, by plain flow matching (no preference, no RL)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from infra.config import Config
from policies.policy import build_backbone, save_base
from policies.toy2d import flow_matching_loss, ring_mixture


def pretrain_base(cfg: Config, out: str | Path | None = None, progress: bool = True) -> Path:
    """Pre-train the base (toy2d: the ring mixture; diffusers kinds: the shapes world) and save it
    to ``pretrain.checkpoint``."""
    if cfg.model.kind == "ltx2":
        raise ValueError("model.kind='ltx2' has no in-repo pre-training (the shapes world is still images): set "
                         "model.diffusers.pretrained to an LTX-2 pipeline (directory or hub id) or "
                         "pretrain.checkpoint to a saved one (policies.tiny_models.save_tiny('ltx2', ...))")
    if cfg.model.kind != "toy2d":
        from pipelines.pretrain_shapes import pretrain_shapes

        return pretrain_shapes(cfg, out, progress)
    pc = cfg.pretrain
    path = Path(out or pc.checkpoint)
    gen = torch.Generator().manual_seed(pc.seed)
    torch.manual_seed(pc.seed)
    model = build_backbone(cfg.model, cfg.num_objectives)
    opt = torch.optim.Adam(model.parameters(), lr=pc.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, pc.steps)
    d = pc.data
    start = time.perf_counter()
    bar = tqdm(range(pc.steps), desc="pretrain", disable=not progress, mininterval=0.5 if sys.stderr.isatty() else 15.0)
    for i in bar:
        x0 = ring_mixture(pc.batch_size, d.num_modes, d.radius, d.mode_std, gen)
        loss = flow_matching_loss(model, x0, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if i % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    save_base(model, cfg.model, path)
    if progress:
        print(f"pretrained base in {time.perf_counter() - start:.1f}s -> {path}")
    return path


def base_location(cfg: Config) -> Path | str:
    """Where the base model of ``cfg`` lives: ``model.diffusers.pretrained`` (a diffusers directory
    or hub id) for diffusers kinds that set it, else ``pretrain.checkpoint`` (file or directory)."""
    if cfg.model.kind != "toy2d" and cfg.model.diffusers.pretrained:
        return cfg.model.diffusers.pretrained
    return Path(cfg.pretrain.checkpoint)


def ensure_base(cfg: Config, progress: bool = True) -> Path | str:
    """The base checkpoint (see :func:`base_location`), pre-trained on the fly if it does not exist yet."""
    path = base_location(cfg)
    if isinstance(path, str):
        return path
    exists = (path / "model_index.json").is_file() if cfg.model.kind != "toy2d" else path.is_file()
    return path if exists else pretrain_base(cfg, path, progress)

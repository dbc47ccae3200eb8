"""The slider model directory: what a registered model carries, written from a run without loading it.

::

    slider.json     manifest: format, model kind, what it takes and gives, objectives, base, step, run id
    config.yaml     the resolved training config
    trainable.pt    EMA trainable tensors (LoRA + preference modules) of the run's latest checkpoint
    base/           the base model, when it is local (toy2d file, or a diffusers pipeline directory)

Writing one (``write_model_dir``) copies tensors and files: it never builds the model, so
registering or serving an SD3.5 slider does not put SD3.5 in the driver's memory.

The manifest's ``base`` says how the base is found on the serving host:

- ``bundled``: inside the directory (``path`` relative to it), with its sha256: what the project
  pre-trained (toy2d, the shapes pipelines) or any local directory travels with the model, so a
  ``models:/`` URI serves on any host, after the run directory and the base are gone;
- ``hub``: a hub repository ``id`` at the commit ``revision`` it resolved to on the registering
  host, with the sha256 of every file of the pipeline's components there; the serving host fetches
  those files (its hub cache, or the hub) and checks them before loading.

Format 1 (before bases travelled) pointed at an absolute path and is still read.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from infra.checkpoint import atomic_write_bytes, atomic_write_text, content_sha256, load_latest_checkpoint
from infra.config import Config, dump_config
from pipelines.pretrain import base_location

MANIFEST = "slider.json"
FORMAT_VERSION = 2
READS_FORMATS = (1, 2)
BASE_DIR = "base"
TRAINABLE = "trainable.pt"

OutputKind = Literal["points", "image", "video"]


@dataclass(frozen=True)
class ModelIO:
    """What a backbone family takes and gives at inference (drives the request checks and the page)."""

    output_kind: OutputKind
    """``points``: a ``[N, 2]`` sample cloud, shown as a scatter; ``image``: ``[H, W, 3]`` uint8;
    ``video``: ``[F, H, W, 3]`` uint8 frames, answered as an animated WebP."""
    uses_prompt: bool
    """Every request needs a non-empty prompt (models without one ignore it)."""
    uses_source_image: bool
    """Every request needs a source image to edit (models without one refuse it)."""


MODEL_IO: dict[str, ModelIO] = {
    "toy2d": ModelIO("points", uses_prompt=False, uses_source_image=False),
    "sd3": ModelIO("image", uses_prompt=True, uses_source_image=False),
    "flux_kontext": ModelIO("image", uses_prompt=True, uses_source_image=True),
    "ltx2": ModelIO("video", uses_prompt=True, uses_source_image=False),
}
"""Inference contract per ``model.kind``: what the requests must bring and what ``generate`` returns
(the backbone's ``decode`` gives the pixels)."""


def model_io(kind: str) -> ModelIO:
    if kind not in MODEL_IO:
        raise ValueError(f"model.kind {kind!r} has no inference contract yet; known: {sorted(MODEL_IO)}")
    return MODEL_IO[kind]


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


def objectives_of(cfg: Config) -> list[Objective]:
    from reward_servers.registry import reward_factory

    out = []
    for i, spec in enumerate(cfg.rewards.objectives):
        doc = (reward_factory(spec.name).__doc__ or "").strip().replace("``", "")
        args = ", ".join(f"{k}={v}" for k, v in spec.args.items())
        description = (doc.splitlines()[0] if doc else spec.name) + (f" ({args})" if args else "")
        out.append(Objective(i, spec.display, spec.name, dict(spec.args), description))
    return out


# ---- the base -----------------------------------------------------------------------------------
def is_hub_id(cfg: Config) -> bool:
    """``model.diffusers.pretrained`` names a hub repository: it is set and no local path has that name
    (a missing local path is not taken for an id unless it is exactly ``namespace/name``)."""
    location = base_location(cfg)
    return (isinstance(location, str) and not Path(location).exists()
            and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", location) is not None)


def local_base(cfg: Config, where: Path) -> Path:
    """The local base file (toy2d) or diffusers directory of a training config (relative paths from the
    working directory); fails naming the field if it is missing. ``where`` names the config."""
    location = base_location(cfg)
    name = "pretrain.checkpoint" if isinstance(location, Path) else "model.diffusers.pretrained"
    path = Path(location).resolve()
    if cfg.model.kind == "toy2d":
        if not path.is_file():
            raise FileNotFoundError(f"base checkpoint {path} ({name} of {where}) not found")
        return path
    if not (path / "model_index.json").is_file():
        hub = " nor a hub id (namespace/name)" if isinstance(location, str) else ""
        raise FileNotFoundError(f"base model {path} ({name} of {where}) is not a diffusers directory "
                                f"(no model_index.json){hub}")
    return path


def pipeline_files(directory: Path) -> list[str]:
    """The files a diffusers pipeline loads: ``model_index.json`` and every file of the components it
    names (not the repository's other files, e.g. SD3.5's 16 GB single-file checkpoint at its root)."""
    index = json.loads((directory / "model_index.json").read_text())
    components = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]]
    files = ["model_index.json"]
    for c in sorted(components):
        files += sorted(f.relative_to(directory).as_posix() for f in (directory / c).rglob("*") if f.is_file())
    return files


def _hub_error(repo: str, revision: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"hub base {repo} at revision {revision} (model.diffusers.pretrained / model.diffusers.revision): {what}. "
        f"Download it on this host first (hf download {repo} --revision {revision}), or point HF_HOME / "
        "HF_HUB_CACHE at a cache that holds it (a gated repository also needs HF_TOKEN)")


def hub_base_entry(cfg: Config) -> dict[str, Any]:
    """The manifest entry of a hub base, from this host's copy in the hub cache (no download: the digest
    is of the copy the run used, not of whatever the hub serves today)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, revision = cfg.model.diffusers.pretrained, cfg.model.diffusers.revision or "main"
    try:
        snapshot = Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        raise _hub_error(repo, revision, "not in this host's hub cache, so its files cannot be hashed") from None
    if not (snapshot / "model_index.json").is_file():
        raise _hub_error(repo, revision, f"the cached snapshot {snapshot} has no model_index.json")
    files = {f: content_sha256(snapshot / f) for f in pipeline_files(snapshot)}
    return {"kind": "hub", "id": repo, "revision": snapshot.name, "files": files, "sha256": _files_digest(files)}


def _files_digest(files: dict[str, str]) -> str:
    """One digest of ``{path: sha256}``, as ``content_sha256`` hashes a directory."""
    import hashlib

    return hashlib.sha256("".join(f"{p}\0{h}\n" for p, h in sorted(files.items())).encode()).hexdigest()


def resolve_base(model_dir: Path, base: dict[str, Any]) -> Path | str:
    """The local path of a manifest's base on this host, checked against its recorded digest.

    A hub base's files are fetched through the hub cache (``snapshot_download``, which downloads what
    the cache lacks unless ``HF_HUB_OFFLINE`` is set); a missing or changed file fails naming it.
    """
    where = model_dir / MANIFEST
    if base["kind"] == "hub":
        # Format 1 recorded no files: from_pretrained resolves the id, unpinned, as it did then.
        return _resolve_hub(base) if base["files"] else base["id"]
    path = model_dir / base["path"] if base["kind"] == "bundled" else Path(base["path"])
    if not path.exists():
        raise FileNotFoundError(f"base {path} named by {where} not found")
    if content_sha256(path) != base["sha256"]:
        raise ValueError(f"base {path} changed since the model was exported (its sha256 differs from {where}); "
                         "the adapter needs its own base")
    return path


def _resolve_hub(base: dict[str, Any]) -> Path:
    from huggingface_hub import snapshot_download

    repo, revision, files = base["id"], base["revision"], base["files"]
    try:
        snapshot = Path(snapshot_download(repo, revision=revision, allow_patterns=list(files)))
    except Exception as err:  # noqa: BLE001 - offline, not found, gated: all mean "not here"
        raise _hub_error(repo, revision, f"cannot be fetched ({type(err).__name__}: {err})") from None
    missing = [f for f in files if not (snapshot / f).is_file()]
    if missing:
        raise _hub_error(repo, revision, f"{len(missing)} file(s) missing from {snapshot}: {missing[:5]}")
    changed = [f for f, digest in files.items() if content_sha256(snapshot / f) != digest]
    if changed:
        raise ValueError(f"hub base {repo} at {revision}: {changed[:5]} in {snapshot} differ from the files the "
                         "model was registered with (sha256); the adapter needs its own base")
    return snapshot


# ---- writing and reading ------------------------------------------------------------------------
@dataclass(frozen=True)
class RunWeights:
    """What a finished run gives a model directory: its config, EMA tensors, step and MLflow run."""

    cfg: Config
    ema: dict[str, torch.Tensor]
    step: int
    mlflow_run_id: str | None

    @classmethod
    def read(cls, run_dir: str | Path) -> RunWeights:
        run_dir = Path(run_dir)
        cfg = Config.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
        latest = load_latest_checkpoint(run_dir)
        if latest is None:
            raise FileNotFoundError(f"run directory {run_dir} has no checkpoint (checkpoints/latest.json)")
        step, blob = latest
        return cls(cfg, blob["weights"]["ema"], step, blob["loop"]["mlflow_run_id"] or None)


def write_model_dir(run: RunWeights, run_dir: Path, out_dir: str | Path) -> dict[str, Any]:
    """Write the model directory of ``run`` (read from ``run_dir``) to ``out_dir``; returns the manifest.

    Copies the EMA tensors and a local base (or records a hub base); loads no model.
    """
    out, cfg = Path(out_dir), run.cfg
    io_ = model_io(cfg.model.kind)
    if is_hub_id(cfg):
        base = hub_base_entry(cfg)
    else:
        src = local_base(cfg, run_dir / "config.yaml")
        dst = out / BASE_DIR / src.name if src.is_file() else out / BASE_DIR
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_file():
            shutil.copy2(src, dst)
        else:
            shutil.copytree(src, dst)
        base = {"kind": "bundled", "path": dst.relative_to(out).as_posix(), "sha256": content_sha256(dst)}
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in run.ema.items()}, buf)
    atomic_write_bytes(out / TRAINABLE, buf.getvalue())
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    manifest = {"format": FORMAT_VERSION, "model_kind": cfg.model.kind, **asdict(io_),
                "objectives": [asdict(o) for o in objectives_of(cfg)], "base": base,
                "step": run.step, "mlflow_run_id": run.mlflow_run_id}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """The manifest of a model directory, in format 2's shape; fails on an unknown format or kind."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{Path(model_dir)} is not a slider model directory (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") not in READS_FORMATS:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, this code reads formats {list(READS_FORMATS)}")
    if manifest["format"] == 1:
        # Format 1 pointed at the base where it was trained (a file or directory), or a hub id unpinned.
        kind = manifest.get("base_kind", "file")
        manifest["base"] = ({"kind": "hub", "id": manifest["base_checkpoint"], "revision": "main", "files": {}}
                            if kind == "hub" else
                            {"kind": "path", "path": manifest["base_checkpoint"], "sha256": manifest["base_sha256"]})
    model_io(manifest["model_kind"])
    return manifest


def read_trainable(model_dir: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(model_dir) / TRAINABLE, map_location="cpu", weights_only=True)

"""Atomic, resumable checkpoints in a run directory.

Layout::

    <run_dir>/checkpoints/step_00000050.pt   # torch.save of the driver's state dict
    <run_dir>/checkpoints/latest.json        # {"step": 50, "file": "step_00000050.pt"}

Every file is written to a temp file in the same directory, fsynced and renamed over the target
(``os.replace`` is atomic on POSIX), so a crash leaves either the old file or the new one, never
half of one. The pointer moves only after the checkpoint file is complete; ``latest.json`` is the
single source of truth for resume.

State types: checkpoints are read back with ``torch.load(weights_only=True)``, the loader that
cannot run arbitrary code, so a state may only hold tensors, ``dict``/``OrderedDict``, ``list``,
``tuple``, ``set``, ``int``, ``float``, ``complex``, ``bool``, ``str``, ``bytes``, ``None``,
``torch.dtype``, ``torch.device`` and ``torch.Size``, with these exact types (no subclasses:
``defaultdict``, namedtuples and numpy scalars are refused); dict keys are ``int``, ``float``,
``bool``, ``str``, ``bytes``, ``None`` or tuples of them. Group ids ``(epoch, prompt_idx, slot)``
fit as a set or list of int tuples; RNG states fit as ``torch.get_rng_state()``,
``random.getstate()`` and ``numpy.random.Generator.bit_generator.state`` (not the legacy
``np.random.get_state()``, which holds an ndarray). :func:`save_checkpoint` checks this before
writing and names the offending key, so a bad state fails at save time rather than on the resume
after a crash.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

logger = logging.getLogger(__name__)

POINTER = "latest.json"
_STEP_FILE = re.compile(r"^step_(\d{8,})\.pt$")

# Exact types: subclasses (defaultdict, namedtuple, str enums, numpy scalars) are refused by the
# weights-only loader even where isinstance() would accept them.
_KEY_TYPES = {int, float, bool, str, bytes, type(None)}
_LEAF_TYPES = _KEY_TYPES | {complex, torch.dtype, torch.device}
_MAPPINGS = {dict, collections.OrderedDict}
_SEQUENCES = {list, tuple, set, torch.Size}


class CheckpointError(RuntimeError):
    """A checkpoint pointer or file exists but cannot be used; the message names the path."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync_dir(directory: Path) -> None:
    # The rename itself lives in the directory entry; without this a power loss can undo it.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` only if the ``with`` block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old content or all of the new."""
    with _atomic_file(Path(path)) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode(encoding))


def _check_state(node: Any, where: str) -> None:
    """Raise ``TypeError`` at the first value the weights-only loader would refuse."""
    kind = type(node)
    if kind in _MAPPINGS:
        for k, v in node.items():
            if type(k) not in _KEY_TYPES and not (
                type(k) is tuple and all(type(x) in _KEY_TYPES for x in k)
            ):
                raise TypeError(f"checkpoint state{where}: key {k!r} of type {type(k).__name__}")
            _check_state(v, f"{where}[{k!r}]")
    elif kind in _SEQUENCES:
        for i, v in enumerate(node):
            _check_state(v, f"{where}[{i}]")
    elif kind not in _LEAF_TYPES and not isinstance(node, torch.Tensor):
        raise TypeError(
            f"checkpoint state{where}: {kind.__module__}.{kind.__qualname__} cannot be loaded "
            "with torch.load(weights_only=True); store tensors, plain Python values "
            "(.item() / .tolist() for numpy) and dicts/lists/tuples/sets of them"
        )


def _step_files(directory: Path) -> dict[int, Path]:
    out = {}
    for p in directory.glob("step_*.pt"):
        m = _STEP_FILE.match(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Save ``state`` as the checkpoint of ``step``, move ``latest.json`` to it, prune old ones.

    Keeps this checkpoint and the ``keep - 1`` newest ones before it; files of later steps
    (left behind if someone moved the pointer back by hand) are not touched.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    _check_state(state, "")

    directory = checkpoint_dir(run_dir)
    path = directory / f"step_{step:08d}.pt"
    with _atomic_file(path) as f:
        torch.save(state, f)
    atomic_write_text(directory / POINTER, json.dumps({"step": step, "file": path.name}) + "\n")

    older = sorted(s for s in _step_files(directory) if s < step)
    for s in older[: max(0, len(older) - (keep - 1))]:
        (directory / f"step_{s:08d}.pt").unlink(missing_ok=True)
    # Temp files survive only a hard kill mid-write (exceptions clean up after themselves).
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[int, dict[str, Any]] | None:
    """Return ``(step, state)`` of the checkpoint ``latest.json`` names, or None if there is none.

    None means a fresh start: no pointer file. A pointer that is unreadable or names a missing or
    unloadable file raises :class:`CheckpointError` instead: restarting from scratch then would
    train groups twice and fork the MLflow run, so a person should look first.
    """
    directory = checkpoint_dir(run_dir)
    pointer = directory / POINTER
    if not pointer.exists():
        if directory.is_dir() and _step_files(directory):
            logger.warning(
                "%s has checkpoint files but no %s; starting fresh (the pointer is the source "
                "of truth, restore it by hand to resume)", directory, POINTER
            )
        return None
    try:
        info = json.loads(pointer.read_text())
        step, name = int(info["step"]), str(info["file"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint pointer {pointer} is corrupt ({err!r}); expected "
            '{"step": <int>, "file": "step_<8 digits>.pt"}'
        ) from None
    if not _STEP_FILE.match(name):
        raise CheckpointError(f"checkpoint pointer {pointer} names {name!r}, not a step_*.pt file")
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint pointer {pointer} names {path}, which does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot load checkpoint {path}: {err}") from err
    return step, state


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_sha256(path: str | Path) -> str:
    """sha256 of a base model: of the file's bytes, or, for a directory (a diffusers pipeline), of
    every file under it in sorted relative-path order, each entry ``path NUL sha256(content) LF``.

    Paths are part of the digest, so renaming or moving a file inside the directory changes it too;
    symlinks (hub cache snapshots) count as the file they point to.
    """
    path = Path(path)
    if not path.is_dir():
        return _file_sha256(path)
    h = hashlib.sha256()
    for f in sorted((f for f in path.rglob("*") if f.is_file()), key=lambda f: f.relative_to(path).as_posix()):
        h.update(f"{f.relative_to(path).as_posix()}\0{_file_sha256(f)}\n".encode())
    return h.hexdigest()

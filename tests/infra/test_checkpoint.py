"""Atomic, resumable checkpoints: round trip, crash safety, pruning, refusal of unsafe state."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
from collections import OrderedDict

import numpy as np
import pytest
import torch

from infra import checkpoint
from infra.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    content_sha256,
    load_latest_checkpoint,
    save_checkpoint,
)


def driver_state(step: int) -> dict:
    """What the training driver saves: weights, optimizer, cursor, group ids, RNG, run id."""
    torch.manual_seed(step)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    net(torch.randn(4, 3)).pow(2).sum().backward()
    opt.step()
    return {
        "model": OrderedDict((k, v.clone()) for k, v in net.state_dict().items()),
        "old_policy": {k: v * 0.5 for k, v in net.state_dict().items()},
        "ema": {"weight": net.weight.detach().clone().to(torch.bfloat16)},
        "optimizer": opt.state_dict(),
        "cursor": {"epoch": 1, "prompt_idx": step * 8},
        "consumed_groups": {(0, i, s) for i in range(step) for s in range(3)},
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.default_rng(step).bit_generator.state,
        },
        "mlflow_run_id": "0123456789abcdef",
        "dtype": torch.float32,
    }


def assert_same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def files(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_round_trip_restores_every_value(tmp_path):
    state = driver_state(5)
    path = save_checkpoint(tmp_path, 5, state)
    assert path == tmp_path / "checkpoints" / "step_00000005.pt"
    pointer = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert pointer == {"step": 5, "file": "step_00000005.pt"}

    step, loaded = load_latest_checkpoint(tmp_path)
    assert step == 5
    assert_same(state, loaded)
    # The restored RNG state reproduces the same stream.
    torch.set_rng_state(loaded["rng"]["torch"])
    a = torch.rand(3)
    torch.set_rng_state(state["rng"]["torch"])
    assert torch.equal(a, torch.rand(3))


def test_nothing_saved_loads_none(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
    assert load_latest_checkpoint(tmp_path / "missing") is None


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 10, {"w": torch.ones(1000)})

    def crash_mid_write(obj, f):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 20, {"w": torch.zeros(1000)})
    monkeypatch.undo()

    assert files(tmp_path) == ["latest.json", "step_00000010.pt"]  # no partial or temp file
    step, state = load_latest_checkpoint(tmp_path)
    assert step == 10 and torch.equal(state["w"], torch.ones(1000))


def test_pointer_moves_only_after_the_file_is_complete(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 10, {"w": torch.ones(3)})
    real_replace = os.replace
    calls = []

    def crash_on_pointer(src, dst):
        calls.append(os.path.basename(dst))
        if os.path.basename(dst) == "latest.json":
            raise OSError("killed before the pointer moved")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_pointer)
    with pytest.raises(OSError, match="pointer"):
        save_checkpoint(tmp_path, 20, {"w": torch.zeros(3)})
    monkeypatch.undo()

    assert calls == ["step_00000020.pt", "latest.json"]  # checkpoint file first, pointer second
    step, state = load_latest_checkpoint(tmp_path)
    assert step == 10 and torch.equal(state["w"], torch.ones(3))
    # The next successful save moves the pointer on and the run continues normally.
    save_checkpoint(tmp_path, 30, {"w": torch.full((3,), 3.0)})
    assert load_latest_checkpoint(tmp_path)[0] == 30


def test_keeps_the_last_n(tmp_path):
    for step in (10, 20, 30, 40, 50):
        save_checkpoint(tmp_path, step, {"step": step}, keep=3)
    assert files(tmp_path) == [
        "latest.json", "step_00000030.pt", "step_00000040.pt", "step_00000050.pt"
    ]
    save_checkpoint(tmp_path, 60, {"step": 60}, keep=1)
    assert files(tmp_path) == ["latest.json", "step_00000060.pt"]
    assert load_latest_checkpoint(tmp_path) == (60, {"step": 60})


def test_stale_temp_files_from_a_hard_kill_are_removed(tmp_path):
    save_checkpoint(tmp_path, 1, {"a": 1})
    stale = tmp_path / "checkpoints" / ".step_00000002.pt.abc123.tmp"
    stale.write_bytes(b"partial")
    save_checkpoint(tmp_path, 2, {"a": 2})
    assert not stale.exists()
    assert load_latest_checkpoint(tmp_path) == (2, {"a": 2})


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"cursor": {"idx": np.int64(3)}}, "['cursor']['idx']: numpy.int64"),
        ({"rng": np.random.get_state()}, "['rng'][1]: numpy.ndarray"),
        ({"f": lambda: 0}, "['f']: builtins.function"),
        ({"ids": {frozenset({1}): 1}}, "key frozenset({1})"),
    ],
)
def test_unsafe_state_fails_at_save_time(tmp_path, state, where):
    with pytest.raises(TypeError) as err:
        save_checkpoint(tmp_path, 1, state)
    assert where in str(err.value)
    assert not (tmp_path / "checkpoints").exists()


def test_corrupt_pointer_raises_instead_of_starting_over(tmp_path):
    save_checkpoint(tmp_path, 7, {"a": 1})
    pointer = tmp_path / "checkpoints" / "latest.json"

    pointer.write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_latest_checkpoint(tmp_path)

    pointer.write_text(json.dumps({"step": 8, "file": "step_00000008.pt"}))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_latest_checkpoint(tmp_path)

    pointer.write_text(json.dumps({"step": 7, "file": "../../etc/passwd"}))
    with pytest.raises(CheckpointError, match="not a step"):
        load_latest_checkpoint(tmp_path)

    pointer.write_text(json.dumps({"step": 7, "file": "step_00000007.pt"}))
    (tmp_path / "checkpoints" / "step_00000007.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot load"):
        load_latest_checkpoint(tmp_path)


def test_arbitrary_pickles_are_not_loaded(tmp_path):
    """A checkpoint holding a pickled object is refused by the weights-only loader."""
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    torch.save({"obj": argparse.Namespace(cmd="rm -rf /")}, ckpt / "step_00000001.pt")
    (ckpt / "latest.json").write_text(json.dumps({"step": 1, "file": "step_00000001.pt"}))
    with pytest.raises(CheckpointError, match="cannot load"):
        load_latest_checkpoint(tmp_path)


def test_atomic_write_replaces_whole_file(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "state.json"
    atomic_write_text(target, "old")
    assert target.read_text() == "old"

    def fail(src, dst):
        raise OSError("crash")

    monkeypatch.setattr(checkpoint.os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new content")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]
    atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"


def test_content_sha256_of_a_file_and_of_a_directory(tmp_path):
    blob = tmp_path / "base.pt"
    blob.write_bytes(b"weights")
    assert content_sha256(blob) == hashlib.sha256(b"weights").hexdigest()

    def tree(root, files):
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        return content_sha256(root)

    files = {"model_index.json": b"{}", "vae/config.json": b"{'a': 1}", "transformer/w.safetensors": b"\0" * 10}
    digest = tree(tmp_path / "a", files)
    assert tree(tmp_path / "b", dict(reversed(files.items()))) == digest  # order of creation, place: no matter
    assert tree(tmp_path / "c", {**files, "vae/config.json": b"{'a': 2}"}) != digest
    assert tree(tmp_path / "d", {**files, "extra.txt": b""}) != digest
    moved = {("vae/w.safetensors" if k.startswith("transformer") else k): v for k, v in files.items()}
    assert tree(tmp_path / "e", moved) != digest  # same bytes under another path

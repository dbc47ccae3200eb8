"""How torch tensors cross Ray's object store: as raw bytes, not through ``torch.save``.

By default Ray pickles a tensor with torch's own reducer, which writes the whole storage through
``torch.save`` into a bytes object on the sender and parses it back with ``torch.load`` on the
reader: two extra copies and the legacy loader's per-tensor overhead. A py-spy profile of the
stage-cost simulation (docs/cluster.md, 4 actors) found the learner ranks spending about half their
CPU in that loader and the rollout actors most of theirs in the writer. Here a CPU tensor is sent as
a uint8 numpy view of its bytes instead, which pickle protocol 5 hands to the object store
out-of-band (one copy, into shared memory), and the reader copies it once into a private,
writable tensor.

Same semantics as torch's reducer for what crosses: dtype (bf16 included: numpy never sees the
element type), shape and values bit-exact, a writable tensor the reader owns (so in-place updates
never touch the shared object). Tensors that are not plain CPU strided ones (CUDA, requires_grad,
sparse, quantized) keep ``torch.save``, which restores them as before. Not kept: storage shared
between tensors of one object (a view arrives as its own compact tensor, which is also fewer bytes).
Ray's own ``RAY_ENABLE_ZERO_COPY_TORCH_TENSORS`` is not used: its readers get tensors over the
read-only shared buffer, and an in-place update there would corrupt the object for every reader.

Registered in every worker by :func:`register` (``worker_process_setup_hook``) and in the driver by
``infra.ray_init.start_ray``; a process that did not register still reads what one sent.
"""

from __future__ import annotations

import io

import numpy as np
import torch

SETUP_HOOK = "infra.tensor_transport.register"
"""The ``runtime_env`` ``worker_process_setup_hook`` that registers the reducer in every worker."""


def _fast(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.layout == torch.strided and not t.is_quantized and not t.requires_grad


def serialize(t: torch.Tensor) -> tuple:
    """A picklable form of ``t``: its bytes as a numpy array (pickled out-of-band), or torch.save's."""
    if _fast(t):
        raw = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        return ("raw", raw, str(t.dtype).removeprefix("torch."), tuple(t.shape))
    buf = io.BytesIO()
    torch.save(t, buf)
    return ("torch", buf.getvalue())


def deserialize(data: tuple) -> torch.Tensor:
    """The tensor :func:`serialize` described, in memory this process owns."""
    if data[0] == "raw":
        _, raw, dtype, shape = data
        if raw.size == 0:  # torch cannot reinterpret an empty byte tensor as a wider dtype
            return torch.empty(shape, dtype=getattr(torch, dtype))
        # The copy: ``raw`` is a read-only view of the shared object; the reader must own what it updates.
        return torch.from_numpy(np.array(raw, copy=True)).view(getattr(torch, dtype)).reshape(shape)
    return torch.load(io.BytesIO(data[1]), weights_only=True)


def register() -> None:
    """Send this process's torch tensors as raw bytes (idempotent; needs Ray initialised or a worker)."""
    import ray.util

    ray.util.register_serializer(torch.Tensor, serializer=serialize, deserializer=deserialize)

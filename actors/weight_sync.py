"""Versioned weight sync from the learner to the rollout actors.

Only trainable tensors move (LoRA + preference modules). Two paths:

- object store (``cluster.weight_sync=object_store``): the driver publishes each version once with
  ``ray.put`` (:class:`ObjectStoreWeightSync`) and actors pull it on their next call (:func:`fetch_weights`);
- collective (``cluster.weight_sync=collective``): learner rank 0 and the rollout actors form their own
  process group (:class:`CollectiveGroup`, gloo on CPU, NCCL on GPU) and rank 0 broadcasts the tensors
  in fixed-size buckets; each actor receives into a staging copy and applies it between rollouts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import ray
import torch

WIRE_DTYPE = torch.float32
"""Weights travel (and are digested) in float32 whatever either side holds: the learner's master copies
are float32, and an actor casts into its own parameters' dtype. Buckets are sized in wire bytes, so every
rank cuts the same buckets even when senders and receivers hold different dtypes."""


def _digest_tensor(digest, name: str, wire_values) -> None:
    """Feed one tensor (its name, then its float32 values as a numpy array) into ``digest``."""
    digest.update(name.encode())
    digest.update(wire_values.tobytes())


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A digest of ``state`` as it travels: names and float32 bytes, in sorted name order (so it does not
    depend on how the tensors were bucketed)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        _digest_tensor(digest, name, state[name].detach().to("cpu", WIRE_DTYPE).contiguous().numpy())
    return digest.hexdigest()


class WeightSyncError(RuntimeError):
    """What a rollout actor applied is not what the learner published (or its adapters bound elsewhere)."""


@dataclass(frozen=True)
class WeightHandle:
    """A published version; ``refs`` is a list so Ray does not resolve it when passed to an actor."""

    version: int
    refs: list
    num_bytes: int


def fetch_weights(handle: WeightHandle) -> dict[str, torch.Tensor]:
    """Actor side: pull the published tensors (zero-copy from the local object store)."""
    return ray.get(handle.refs[0])


class ObjectStoreWeightSync:
    """Driver side: keeps the newest published version in the object store."""

    def __init__(self) -> None:
        self.latest: WeightHandle | None = None

    def publish(self, version: int, state: dict[str, torch.Tensor] | ray.ObjectRef) -> WeightHandle:
        """Publish ``state`` (tensors, or a ref a learner already put) as ``version``."""
        if self.latest is not None and version <= self.latest.version:
            raise ValueError(f"weight versions must increase: {version} <= {self.latest.version}")
        ref = state if isinstance(state, ray.ObjectRef) else ray.put(state)
        num_bytes = 0 if isinstance(state, ray.ObjectRef) else sum(
            t.numel() * t.element_size() for t in state.values())
        # Dropping the old handle lets Ray free that version once no actor call still holds it.
        self.latest = WeightHandle(version, [ref], num_bytes)
        return self.latest


def bucket_names(state: dict[str, torch.Tensor], bucket_bytes: int) -> list[list[str]]:
    """Tensor names in a fixed (sorted) order, grouped into buckets of at most ``bucket_bytes``
    (a tensor larger than that gets a bucket of its own)."""
    buckets: list[list[str]] = [[]]
    size = 0
    wire_bytes = torch.empty((), dtype=WIRE_DTYPE).element_size()
    for name in sorted(state):
        nbytes = state[name].numel() * wire_bytes
        if buckets[-1] and size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(name)
        size += nbytes
    return [b for b in buckets if b]


class CollectiveGroup:
    """A standalone process group between learner rank 0 (rank 0) and the rollout actors.

    It lives outside the learner's DeepSpeed world (its own TCPStore rendezvous), so rollout actors
    never join the learner's collectives. Gloo on CPU, NCCL on GPU.
    """

    def __init__(self, addr: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float = 300):
        from datetime import timedelta

        import torch.distributed as dist

        timeout = timedelta(seconds=timeout_s)
        self._dist = dist
        self.rank = rank
        self.store = dist.TCPStore(addr, port, world_size, is_master=rank == 0, timeout=timeout)
        if backend == "nccl":
            self.pg = dist.ProcessGroupNCCL(self.store, rank, world_size)
        else:
            self.pg = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)

    @torch.no_grad()
    def broadcast_state(self, state: dict[str, torch.Tensor], bucket_bytes: int) -> str:
        """Rank 0 sends ``state``; every other rank receives into its ``state`` tensors in place (cast
        from ``WIRE_DTYPE`` to each tensor's own dtype). Every rank must hold the same names and shapes
        (the same trainable parameters). Returns :func:`state_digest` of what went over the wire, as
        sent (rank 0) or as received (the others), for the driver to compare."""
        digest = hashlib.blake2b(digest_size=16)
        for names in bucket_names(state, bucket_bytes):
            tensors = [state[n] for n in names]
            flat = torch.cat([t.reshape(-1).to(WIRE_DTYPE) for t in tensors]) if self.rank == 0 else torch.empty(
                sum(t.numel() for t in tensors), dtype=WIRE_DTYPE, device=tensors[0].device)
            opts = self._dist.BroadcastOptions()
            opts.rootRank = 0
            self.pg.broadcast([flat], opts).wait()
            host, offset = flat.cpu().numpy(), 0
            for name, t in zip(names, tensors):
                _digest_tensor(digest, name, host[offset: offset + t.numel()])
                if self.rank != 0:
                    t.copy_(flat[offset: offset + t.numel()].view_as(t))
                offset += t.numel()
        return digest.hexdigest()

"""Versioned weight sync from the learner to the rollout actors.

Only trainable tensors move (LoRA + preference modules). The object-store path publishes each
version once with ``ray.put`` and actors pull it on their next call. A collective (NCCL) path plugs
in behind the same two calls: ``publish`` on the driver side and ``fetch_weights`` on the actor side.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
import torch


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

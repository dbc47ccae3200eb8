"""Tensors cross the object store as raw bytes, bit-exact, and the reader owns what it gets."""

import pickle

import pytest
import ray
import torch

from infra import tensor_transport


@pytest.mark.parametrize("t", [
    torch.randn(4, 3),
    torch.randn(5, 7).to(torch.bfloat16),            # numpy has no bf16: the bytes travel, not the dtype
    torch.arange(12).reshape(3, 4).t(),              # non-contiguous view
    torch.arange(10)[2:5],                           # a slice: only its elements travel
    torch.tensor(3.5),                               # 0-dim
    torch.zeros(0, 4),                               # empty
    torch.tensor([True, False]),
    torch.ones(3, requires_grad=True),               # falls back to torch.save, keeps requires_grad
])
def test_round_trip_is_exact(t):
    back = tensor_transport.deserialize(pickle.loads(pickle.dumps(tensor_transport.serialize(t), protocol=5)))
    assert back.dtype == t.dtype and back.shape == t.shape and back.requires_grad == t.requires_grad
    assert torch.equal(back.detach(), t.detach())
    assert back.is_contiguous()


def test_raw_path_sends_bytes_out_of_band():
    t = torch.randn(256, 256)
    buffers = []
    pickle.dumps(tensor_transport.serialize(t), protocol=5, buffer_callback=buffers.append)
    assert sum(b.raw().nbytes for b in buffers) == t.numel() * t.element_size()


@ray.remote
class _Holder:
    def make(self) -> dict:
        return {"x": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, 2, dtype=torch.bfloat16)}

    def bump(self, d: dict) -> float:
        d["x"].add_(100)  # in place, on what the reader received
        return float(d["x"].sum())


def test_through_ray_reader_owns_its_copy(ray_local):
    """A worker's task result is read twice; an in-place update by one reader is not seen by the next."""
    holder = _Holder.remote()
    ref = holder.make.remote()
    assert ray.get(holder.bump.remote(ref)) == 15 + 600
    d = ray.get(ref)
    assert torch.equal(d["x"], torch.arange(6, dtype=torch.float32)) and d["b"].dtype == torch.bfloat16
    d["x"].add_(1)  # writable in the driver too
    assert torch.equal(ray.get(ref)["x"], torch.arange(6, dtype=torch.float32))

"""Process groups across real Ray actors, DeepSpeed data parallelism on gloo, and the DS config."""

from __future__ import annotations

import subprocess
import sys

import pytest
import ray
import torch
from torch import nn

from infra.config import LearnerConfig
from infra.deepspeed_config import deepspeed_config
from infra.distributed import destroy_process_group, init_process_group, pick_master_address, resolve_backend

IN_DIM, OUT_DIM, MICRO, STEPS = 4, 3, 2, 2
LEARNER = LearnerConfig(lr=1e-2, pref_lr_mult=10.0, weight_decay=0.01, grad_clip=1.0)

# pytest imports this file as a top-level module the Ray workers cannot import; ship it by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def make_model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(IN_DIM, OUT_DIM)


def param_groups(model: nn.Linear, learner: LearnerConfig) -> list[dict]:
    """The learner's two groups; the weight stands in for the backbone, the bias for the preference module."""
    return [
        {"params": [model.weight], "lr": learner.lr},
        {"params": [model.bias], "lr": learner.lr * learner.pref_lr_mult},
    ]


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A different micro-batch on every rank and step.

    Step 0's gradient norm (~5) is clipped to ``grad_clip`` and step 1's (~0.4) is not. AdamW is
    blind to a constant gradient scale, but not to the ratio between a clipped and an unclipped
    step, so summing instead of averaging over ranks would change the result.
    """
    g = torch.Generator().manual_seed(1000 * step + rank)
    x_scale, y_scale = (1.0, 5.0) if step == 0 else (0.3, 0.0)
    x = x_scale * torch.randn(MICRO, IN_DIM, generator=g)
    return x, y_scale * torch.randn(MICRO, OUT_DIM, generator=g)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # A mean, so DeepSpeed's average of per-rank gradients equals the gradient on the union.
    return (pred - target).pow(2).mean()


@ray.remote(num_cpus=0.5)
class Worker:
    """A learner rank stripped to the plumbing: join the group, train a Linear, leave."""

    def master_address(self) -> tuple[str, int]:
        return pick_master_address()

    def join(self, rank: int, world_size: int, addr: str, port: int) -> tuple[int, int]:
        init_process_group(rank, world_size, addr, port, backend="gloo")
        init_process_group(rank, world_size, addr, port, backend="gloo")  # idempotent
        self.rank = rank
        return torch.distributed.get_rank(), torch.distributed.get_world_size()

    def train(self, learner: LearnerConfig, world_size: int) -> dict[str, torch.Tensor]:
        import deepspeed

        model = make_model()
        engine, *_ = deepspeed.initialize(
            model=model,
            optimizer=torch.optim.AdamW(param_groups(model, learner), weight_decay=learner.weight_decay),
            config=deepspeed_config(learner, world_size, MICRO),
        )
        for step in range(STEPS):
            x, y = batch(self.rank, step)
            engine.backward(mse(engine(x), y))
            engine.step()
        params = list(engine.module.named_parameters())
        # ZeRO-3 partitions the module's parameters; gather them to read the full values.
        with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=learner.zero_stage == 3):
            out = {name: p.detach().clone() for name, p in params}
        engine.destroy()
        return out

    def leave(self) -> bool:
        destroy_process_group()
        destroy_process_group()  # safe when already gone
        return torch.distributed.is_initialized()


def reference_params(
    learner: LearnerConfig, world_size: int, grad_scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """The same steps in one process, each on the concatenation of all ranks' micro-batches."""
    model = make_model()
    opt = torch.optim.AdamW(param_groups(model, learner), weight_decay=learner.weight_decay)
    for step in range(STEPS):
        xs, ys = zip(*(batch(rank, step) for rank in range(world_size)))
        opt.zero_grad()
        (grad_scale * mse(model(torch.cat(xs)), torch.cat(ys))).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), learner.grad_clip)
        opt.step()
    return {name: p.detach() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def ray_cluster(ray_local):
    """The session's local Ray (tests/conftest.py)."""
    yield ray_local


def start_group(world_size: int) -> list:
    workers = [Worker.remote() for _ in range(world_size)]
    addr, port = ray.get(workers[0].master_address.remote())
    joined = ray.get([w.join.remote(r, world_size, addr, port) for r, w in enumerate(workers)])
    assert joined == [(r, world_size) for r in range(world_size)]
    return workers


def stop_group(workers: list) -> None:
    try:
        assert ray.get([w.leave.remote() for w in workers], timeout=60) == [False] * len(workers)
    finally:
        for w in workers:
            ray.kill(w)


@pytest.fixture(scope="module")
def pair(ray_cluster):
    workers = start_group(2)
    yield workers
    stop_group(workers)


@pytest.fixture(scope="module")
def single(ray_cluster):
    workers = start_group(1)
    yield workers
    stop_group(workers)


def assert_matches_reference(results: list[dict[str, torch.Tensor]], learner: LearnerConfig) -> None:
    for other in results[1:]:
        for name, p in results[0].items():
            assert torch.equal(p, other[name]), f"{name} differs between ranks"
    expected = reference_params(learner, len(results))
    start = dict(make_model().named_parameters())
    for name, p in results[0].items():
        assert not torch.allclose(p, start[name]), f"{name} did not move"
        torch.testing.assert_close(p, expected[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_two_ranks_allreduce_matches_single_process_adamw(pair, zero_stage):
    learner = LEARNER.model_copy(update={"zero_stage": zero_stage})
    results = ray.get([w.train.remote(learner, 2) for w in pair], timeout=120)
    assert_matches_reference(results, learner)


def test_world_size_one_matches_single_process_adamw(single):
    results = ray.get([w.train.remote(LEARNER, 1) for w in single], timeout=120)
    assert_matches_reference(results, LEARNER)


def test_reference_tells_apart_dropped_ranks_and_summed_gradients():
    """Guards the tests above: one rank's data only, or gradients summed over two ranks, or no
    clipping would each give parameters outside their tolerance."""
    expected = reference_params(LEARNER, 2)
    wrong = [
        reference_params(LEARNER, 1),
        reference_params(LEARNER, 2, grad_scale=2.0),
        reference_params(LEARNER.model_copy(update={"grad_clip": 1e6}), 2),
    ]
    for params in wrong:
        assert (params["weight"] - expected["weight"]).abs().max() > 1e-4


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_deepspeed_config(stage, precision):
    learner = LearnerConfig(zero_stage=stage, precision=precision, grad_clip=0.7)
    cfg = deepspeed_config(learner, world_size=4, micro_batch_size=8)
    assert cfg["train_micro_batch_size_per_gpu"] == 8
    assert cfg["gradient_accumulation_steps"] == 1
    assert cfg["train_batch_size"] == 32
    assert cfg["gradient_clipping"] == 0.7
    assert cfg["zero_optimization"] == {"stage": stage}
    assert cfg["wall_clock_breakdown"] is False
    assert cfg["steps_per_print"] >= 2**31 - 1
    assert "optimizer" not in cfg and "scheduler" not in cfg
    assert cfg.get("bf16", {}).get("enabled", False) == (precision == "bf16")
    assert cfg.get("fp16", {}).get("enabled", False) == (precision == "fp16")
    if precision == "fp16":
        assert cfg["fp16"]["loss_scale"] == 0  # dynamic


@pytest.mark.parametrize(("world_size", "micro"), [(0, 8), (2, 0)])
def test_deepspeed_config_rejects_empty_batches(world_size, micro):
    with pytest.raises(ValueError, match="must be >= 1"):
        deepspeed_config(LearnerConfig(), world_size=world_size, micro_batch_size=micro)


def test_resolve_backend():
    assert resolve_backend("gloo") == "gloo"
    assert resolve_backend("nccl") == "nccl"
    assert resolve_backend("auto") == ("nccl" if torch.cuda.is_available() else "gloo")
    with pytest.raises(ValueError, match="learner.backend must be one of"):
        resolve_backend("mpi")


def test_init_rejects_rank_outside_world():
    with pytest.raises(ValueError, match="rank must be in"):
        init_process_group(2, 2, "127.0.0.1", 29500, "gloo")
    assert not torch.distributed.is_initialized()


def test_destroy_without_group_is_a_no_op():
    destroy_process_group()
    assert not torch.distributed.is_initialized()


def test_pick_master_address_gives_a_bindable_port():
    import socket

    addr, port = pick_master_address()
    assert addr == ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", port))


def test_import_is_cheap():
    code = "import sys, infra.distributed; print(sorted({'ray', 'deepspeed', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

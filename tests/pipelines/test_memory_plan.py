"""The dry run's GPU memory estimate: live-byte accounting on the meta device, against sizes worked out by
hand, and the preset plans it accepts or refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infra.config import load_config
from pipelines.memory_plan import LiveBytes, flash_attention_accounting
from pipelines.plan import describe_plan

KIB = 1024


def test_live_bytes_counts_what_ops_create_while_it_is_alive():
    with LiveBytes() as live:
        a = torch.ones(256, device="meta")  # 1 KiB
        b = a + 1  # 2 KiB alive
        del a  # 1 KiB
        c = b * 2  # 2 KiB
        view = c.view(16, 16)  # a view shares c's storage
        c.add_(1)  # in place: nothing new
    assert live.peak == 2 * KIB and live.live == 2 * KIB and view.shape == (16, 16)


def test_an_mlp_forward_peaks_at_its_two_widest_activations():
    """No grad: Linear(64 -> 256) makes 32 KiB, GELU another 32 KiB while the first is still referenced,
    then the first is dropped and Linear(256 -> 64) adds 8 KiB: peak 64 KiB, 40 KiB left at the end
    (GELU's output is the Sequential's last reference only until it returns)."""
    with torch.device("meta"):
        mlp = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
        x = torch.empty(32, 64)
    with torch.no_grad(), LiveBytes() as live:
        out = mlp(x)
    assert live.peak == 64 * KIB and out.shape == (32, 64)


def test_attention_is_accounted_as_a_flash_kernel():
    """S = 1024: the math path's [B, H, S, S] scores are 4 * 2 * 1024^2 * 4 B = 32 MiB; a flash kernel holds
    only q, k, v (made before) and the output [B, H, S, D] = 4 * 2 * 1024 * 64 * 4 B = 2 MiB."""
    q, k, v = (torch.empty(4, 2, 1024, 64, device="meta") for _ in range(3))
    with LiveBytes() as math_path:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    with flash_attention_accounting(), LiveBytes() as flash:
        out = torch.nn.functional.scaled_dot_product_attention(query=q, key=k, value=v)
    assert math_path.peak >= 32 * 2**20 and flash.peak == 2 * 2**20 and out.shape == q.shape
    assert torch.nn.functional.scaled_dot_product_attention is not None  # restored on exit


def memory_lines(text: str) -> dict[str, str]:
    block = text.split("estimated peak GPU memory", 1)[1].splitlines()[1:]
    return {line.split(":")[0].strip(): line for line in block if ":" in line}


def gib(line: str, part: str) -> float:
    return float(line.split(part, 1)[1].split()[0])


def test_sd35_plan_fits_its_cards_and_scales_with_the_micro_batch():
    lines = memory_lines(describe_plan(load_config("configs/sd35.yaml")))
    assert set(lines) == {"rollout actor", "learner rank"}
    assert "of 40 GiB (cluster.rollout.gpu_memory_gb)" in lines["rollout actor"]
    # SD3.5 Medium's transformer: 2.243 B parameters, 4.18 GiB in bf16; the fp32 LoRA (r 32) and the
    # preference modules add ~0.1 GiB. A cast to fp32 would double it.
    assert 4.18 < gib(lines["rollout actor"], "weights and optimizer") < 4.6
    half = memory_lines(describe_plan(load_config("configs/sd35.yaml", ["rollout.micro_batch_size=32"])))
    ratio = gib(half["rollout actor"], "activations") / gib(lines["rollout actor"], "activations")
    assert 0.4 < ratio < 0.6  # activations are per sample: half the batch, about half the bytes


def test_a_plan_over_the_pools_cards_is_refused_naming_the_field():
    cfg = load_config("configs/sd35.yaml", ["cluster.rollout.gpu_memory_gb=4"])
    with pytest.raises(ValueError, match=r"rollout actor needs an estimated .* GiB .* cluster.rollout.gpu_memory_gb=4: "
                                         r"lower rollout.micro_batch_size"):
        describe_plan(cfg)

"""``train --dry-run``: the plan's weight count equals what a real policy trains, with no weights loaded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import diffusers_model
from infra.config import Config, ModelConfig, load_config
from pipelines.cli import app
from pipelines.plan import describe_plan, offline_config_dir, trainable_weights
from policies.policy import build_policy


@pytest.mark.parametrize("kind", ["sd3", "flux_kontext", "ltx2"])
def test_meta_device_count_matches_the_built_policy(tiny_pipeline, kind):
    cfg = Config.model_validate({"model": diffusers_model(kind), "pretrain": {"checkpoint": str(tiny_pipeline(kind))},
                                 "data": {"kind": "shapes"}})
    counted = trainable_weights(cfg)
    policy = build_policy(cfg.model, cfg.num_objectives, tiny_pipeline(kind), encoders=False)
    named = list(policy.trainable_named())
    assert counted.tensors == len(named) and counted.params == sum(p.numel() for _, p in named)
    assert counted.lora_params + counted.pref_params == counted.params and counted.lora_params > 0


def test_dry_run_prints_the_plan_and_rejects_unknown_rewards(tiny_pipeline):
    runner = CliRunner()
    ok = runner.invoke(app, ["train", "-c", "configs/shapes_edit.yaml", "--dry-run",
                             "--set", f"pretrain.checkpoint={tiny_pipeline('flux_kontext')}"])
    assert ok.exit_code == 0, ok.output
    assert "4 prompts x 2 preference slots = 8 groups x 8 samples = 64 samples" in ok.output
    assert "fidelity (feature_distance_to_source)" in ok.output and "weights to sync" in ok.output
    assert "advantages: early scalarisation, objectives in batch-std units, divided by the group std" in ok.output
    bad = Config.model_validate({"rewards": {"objectives": [{"name": "nope"}]}})
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        describe_plan(bad)
    missing = runner.invoke(app, ["train", "-c", "configs/shapes.yaml", "--dry-run",
                                  "--set", "model.diffusers.pretrained=/nonexistent/base"])
    assert missing.exit_code == 2 and "offline" in missing.output


# ---- the GPU presets: dry runs offline, from the configs shipped in configs/hub ----------------------

REPO = Path(__file__).resolve().parents[2]
PRESET_RUNS = {
    "sd35": ["-c", "configs/sd35.yaml"],
    "sd35_large": ["-c", "configs/sd35.yaml", "--set", "model.diffusers.pretrained=stabilityai/stable-diffusion-3.5-large"],
    "flux_kontext": ["-c", "configs/flux_kontext.yaml"],
    "ltx2": ["-c", "configs/ltx2.yaml"],
}
# One child process runs every dry run (imports paid once) and reports its peak memory: a loaded
# SD3.5 Medium alone would be ~5 GB in bf16, FLUX.1 Kontext ~24 GB.
DRY_RUNS = """
import json, resource, sys
from typer.testing import CliRunner
from pipelines.cli import app
out = {}
for name, args in json.loads(sys.argv[1]).items():
    r = CliRunner().invoke(app, ["train", *args, "--dry-run"])
    out[name] = {"exit_code": r.exit_code, "output": r.output}
out["maxrss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def preset_dry_runs(tmp_path_factory):
    """The presets' dry runs in a child with no network and an empty Hugging Face cache."""
    home = tmp_path_factory.mktemp("hf_home")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", DRY_RUNS, json.dumps(PRESET_RUNS)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(home.rglob("*.safetensors")), "a dry run wrote weights into the cache"
    return json.loads(proc.stdout.splitlines()[-1])


def _lora_sd3(c: dict, r: int) -> int:
    """SD3 joint blocks: q, k, v, out and the context stream's add_q/k/v + to_add_out (absent in the
    last, context-pre-only block) of ``attn`` only, as the reference (the second attention of
    ``dual_attention_layers`` stays frozen); every projection is d x d with d = heads x head_dim, and
    LoRA adds r (in + out) to each. SD3.5 Medium: 191 modules, 18.8 M parameters at r = 32."""
    d, n = c["num_attention_heads"] * c["attention_head_dim"], c["num_layers"]
    return (8 * n - 1) * r * 2 * d


def _lora_flux(c: dict, r: int) -> int:
    """Flux: 8 projections per double-stream block; q, k, v per single-stream block (its output
    projection is ``proj_out``, not an attention projection); all d x d."""
    d = c["num_attention_heads"] * c["attention_head_dim"]
    return (8 * c["num_layers"] + 3 * c["num_single_layers"]) * r * 2 * d


def _lora_by_regex(kind: str, c: dict, r: int, targets: list[str]) -> int:
    """r (in + out) summed over the transformer's Linear layers the backbone's LoRA regex selects."""
    import diffusers

    from policies.diffusers_backbones import BACKBONES

    cls = BACKBONES[kind]
    pattern = re.compile(cls.lora_target_modules(cls, targets))
    with torch.device("meta"):
        transformer = getattr(diffusers, cls.transformer_class).from_config(c)
    return sum(r * (m.in_features + m.out_features) for n, m in transformer.named_modules()
               if isinstance(m, torch.nn.Linear) and pattern.fullmatch(f"transformer.{n}"))


PRESETS = [
    pytest.param("sd35", "stabilityai/stable-diffusion-3.5-medium", _lora_sd3,
                 "12 GPU(s) = rollout 2 + learner 8 + rewards 2", id="sd35"),
    pytest.param("sd35_large", "stabilityai/stable-diffusion-3.5-large", _lora_sd3, "12 GPU(s)", id="sd35_large"),
    pytest.param("flux_kontext", "black-forest-labs/FLUX.1-Kontext-dev", _lora_flux,
                 "15 GPU(s) = rollout 4 + learner 8 + rewards 3", id="flux_kontext"),
    pytest.param("ltx2", "Lightricks/LTX-2", None, "19 GPU(s) = rollout 8 + learner 8 + rewards 3", id="ltx2"),
]


def test_lora_count_by_regex_agrees_with_the_flux_formula():
    """The regex count the ltx2 row relies on, checked where a closed form exists."""
    config = json.loads((REPO / "configs/hub/black-forest-labs/FLUX.1-Kontext-dev/transformer/config.json").read_text())
    targets = ModelConfig(kind="flux_kontext").lora_targets
    assert _lora_by_regex("flux_kontext", config, 32, targets) == _lora_flux(config, 32) == 52_297_728


@pytest.mark.parametrize("name,base,lora_formula,gpus", PRESETS)
def test_gpu_preset_dry_run_offline(preset_dry_runs, name, base, lora_formula, gpus):
    run = preset_dry_runs[name]
    out = run["output"]
    assert run["exit_code"] == 0, out
    preset = load_config(REPO / PRESET_RUNS[name][1], PRESET_RUNS[name][3:4])
    m, ro = preset.model, preset.rollout
    assert f"base={base})" in out and f"config: shipped copy configs/hub/{base};" in out
    assert (f"rollout  {ro.num_actors} actor(s) x 1 GPU" in out
            and f"learner  world size {preset.learner.world_size} x 1 GPU, ZeRO-2, bf16, backend nccl" in out)
    assert f"total    {gpus}" in out
    groups = ro.prompts_per_step * 3
    assert f"{ro.prompts_per_step} prompts x 3 preference slots = {groups} groups x 8 samples = {groups * 8} samples" in out
    # LoRA rank 32 on the attention projections, counted independently from the shipped transformer config.
    config = json.loads((REPO / "configs" / "hub" / base / "transformer" / "config.json").read_text())
    lora = (lora_formula(config, 32) if lora_formula else _lora_by_regex(m.kind, config, 32, m.lora_targets))
    counted = re.search(r"([\d,]+) parameters \(LoRA r=32 alpha=64: ([\d,]+); preference modules: ([\d,]+)\) "
                        r"= ([\d.]+) MiB in fp32", out)
    assert counted, out
    total, lora_counted, pref = (int(g.replace(",", "")) for g in counted.groups()[:3])
    assert lora_counted == lora and total == lora + pref and pref > 0
    assert counted.group(4) == f"{total * 4 / 2**20:.1f}"  # the learner publishes fp32 old-policy weights
    build_s = float(re.search(r"built on the meta device in ([\d.]+) s", out).group(1))
    assert build_s < 30, f"meta-device construction took {build_s} s"
    assert preset_dry_runs["maxrss_gib"] < 2, "the dry runs held more memory than a loaded base would need"


def test_gpu_preset_dry_runs_print_the_recipe_as_trained(preset_dry_runs):
    """sd35 follows the reference (config/nft.py, train_pareto_nft_sd3.py); the others carry its recipe over."""
    sd35 = preset_dry_runs["sd35"]["output"]
    assert "sampler ode DPM-Solver++(2M), 25 steps on the backbone scheduler's sigma grid, shift 3, CFG 1" in sd35
    assert "timesteps: 24 of the sampler's 25 non-zero grid points per sample" in sd35
    assert "EMA: warm-up min((1 + s) / (10 + s), 0.9); old policy: min(0.001 s, 0.5)" in sd35
    assert "old-policy and EMA copies: fp32 (from the optimizer's fp32 master), learner precision bf16" in sd35
    assert "optimiser: AdamW lr 0.0003, preference modules x1, weight decay 0.0001" in sd35
    assert "LoRA: r=32 alpha=64, gaussian init, on attn.to_q, attn.to_k" in sd35 and "attn2" not in sd35
    # SD3.5 Medium with the reference's targets: 191 modules, 18.8 M LoRA parameters (not 243 / 23.9 M).
    assert "LoRA r=32 alpha=64: 18,776,064;" in sd35
    assert "timesteps: 8 of the sampler's 25 non-zero grid points" in preset_dry_runs["ltx2"]["output"]
    toy = describe_plan(load_config(REPO / "configs/toy2d.yaml"))
    assert "sampler ode Euler, 10 steps on the uniform grid" in toy and "timesteps: 4 per sample from U(0, 1)" in toy


def test_gpu_preset_bad_override_names_the_field():
    bad = CliRunner().invoke(app, ["train", "-c", "configs/sd35.yaml", "--dry-run", "--set", "learner.zero_stage=7"])
    assert bad.exit_code == 2 and "learner.zero_stage" in bad.output and "less than or equal to 3" in bad.output


def test_offline_config_dir_is_for_shipped_hub_ids_only(tiny_pipeline):
    assert offline_config_dir("black-forest-labs/FLUX.1-Kontext-dev") == REPO / "configs/hub/black-forest-labs/FLUX.1-Kontext-dev"
    assert offline_config_dir("someone/unknown-model") is None
    assert offline_config_dir("/abs/path") is None and offline_config_dir("runs/base/shapes") is None
    # A base readable on its own is used as it is, never swapped for a shipped copy.
    cfg = Config.model_validate({"model": diffusers_model("sd3"), "pretrain": {"checkpoint": str(tiny_pipeline("sd3"))},
                                 "data": {"kind": "shapes"}})
    assert trainable_weights(cfg).config_source == str(tiny_pipeline("sd3"))

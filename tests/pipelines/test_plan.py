"""``train --dry-run``: the plan's weight count equals what a real policy trains, with no weights loaded."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import diffusers_model
from infra.config import Config
from pipelines.cli import app
from pipelines.plan import describe_plan, trainable_weights
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
    assert "fidelity (ssim_to_source)" in ok.output and "weights to sync" in ok.output
    bad = Config.model_validate({"rewards": {"objectives": [{"name": "nope"}]}})
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        describe_plan(bad)
    missing = runner.invoke(app, ["train", "-c", "configs/shapes.yaml", "--dry-run",
                                  "--set", "model.diffusers.pretrained=/nonexistent/base"])
    assert missing.exit_code == 2 and "offline" in missing.output

"""Prompt sets drive the groups: distinct prompts per step, edits carry their source image."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import diffusers_model
from infra.config import Config
from policies import shapes
from policies.preferences import plan_groups
from policies.prompts import prompt_set


def cfg_of(kind: str, data: dict, prompts_per_step: int = 4) -> Config:
    return Config.model_validate({"model": diffusers_model(kind), "data": data,
                                  "rollout": {"prompts_per_step": prompts_per_step}})


def test_shapes_groups_use_distinct_captions_and_are_deterministic():
    cfg = cfg_of("sd3", {"kind": "shapes"})
    a, b, later = plan_groups(cfg, 3), plan_groups(cfg, 3), plan_groups(cfg, 4)
    assert [(g.gid, g.prompt, g.preference) for g in a] == [(g.gid, g.prompt, g.preference) for g in b]
    captions = shapes.caption_grid()
    idx = sorted({g.prompt_idx for g in a})
    assert len(idx) == 4 and all(g.prompt == captions[g.prompt_idx] for g in a)
    assert idx != sorted({g.prompt_idx for g in later})
    assert all(g.source_image is None for g in a)


def test_edit_groups_carry_the_source_their_instruction_changes():
    cfg = cfg_of("flux_kontext", {"kind": "shapes_edit", "num_prompts": 32, "eval_prompts": 2})
    groups = plan_groups(cfg, 0)
    for g in groups:
        want = shapes.parse_prompt(g.prompt)
        seen = shapes.read_scene(g.source_image)
        # The instruction asks for something the source does not have already.
        assert g.source_image.shape == (32, 32, 3) and any(getattr(seen, a) != v for a, v in want.items())
    again = prompt_set(cfg)[groups[0].prompt_idx]
    assert np.array_equal(again.source_image, groups[0].source_image)
    assert prompt_set(cfg).eval_indices() == [32, 33]  # held out from the training draw


def test_prompt_file_and_too_many_prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n\na dog\n")
    cfg = cfg_of("sd3", {"kind": "file", "path": str(path)}, prompts_per_step=2)
    assert sorted(g.prompt for g in plan_groups(cfg, 0))[::3] == ["a cat", "a dog"]
    with pytest.raises(ValueError, match="exceeds the 2 prompts"):
        plan_groups(cfg_of("sd3", {"kind": "file", "path": str(path)}, prompts_per_step=3), 0)
    with pytest.raises(ValueError, match="image backbone"):
        Config.model_validate({"data": {"kind": "shapes"}})

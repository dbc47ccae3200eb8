"""Prompt sets drive the groups: distinct prompts per step, edits carry their source image."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import diffusers_model
from infra.config import Config
from policies import shapes
from policies.preferences import plan_groups
from policies.prompts import ParquetPrompts, prompt_set


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


def write_parquet(path, columns: dict, row_group_size: int | None = None) -> str:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return str(path)


def test_parquet_prompts_drive_the_groups(tmp_path):
    prompts = [f"a photo of thing {i}" for i in range(7)]
    path = write_parquet(tmp_path / "prompts.parquet", {"prompt": prompts}, row_group_size=3)
    cfg = cfg_of("sd3", {"kind": "file", "path": path, "eval_prompts": 3}, prompts_per_step=4)
    groups = plan_groups(cfg, 0)
    assert len({g.prompt_idx for g in groups}) == 4
    assert all(g.prompt == prompts[g.prompt_idx] and g.source_image is None for g in groups)
    rows = prompt_set(cfg)
    assert len(rows) == 7 and [rows[i].prompt for i in rows.eval_indices()] == [prompts[0], prompts[3], prompts[6]]


def test_parquet_source_images_as_paths_and_as_png_bytes(tmp_path):
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]  # the model's size: no resize
    paths, blobs = [], []
    for i, px in enumerate(pixels):
        paths.append(str(tmp_path / f"src_{i}.png"))
        Image.fromarray(px).save(paths[-1])
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    prompts = ["make it red", "add a circle", "move it left"]
    for name, column in (("paths", paths), ("bytes", blobs)):
        path = write_parquet(tmp_path / f"{name}.parquet", {"prompt": prompts, "source_image": column})
        rows = prompt_set(cfg_of("flux_kontext", {"kind": "file", "path": path}, prompts_per_step=3))
        for i, px in enumerate(pixels):
            assert rows[i].prompt == prompts[i]
            np.testing.assert_array_equal(rows[i].source_image, px.astype(np.float32) / 255.0, err_msg=name)


@pytest.mark.parametrize("columns, message", [
    ({"text": ["a cat"]}, r"has no column 'prompt' and has unknown column\(s\) \['text'\] \(its columns: \['text'\]\)"),
    ({"prompt": ["a cat"], "source_img": ["x.png"]}, r"unknown column\(s\) \['source_img'\]"),
    ({"prompt": [1, 2]}, r"column 'prompt' .* is of type int64"),
    ({"prompt": ["a"], "source_image": [1.5]}, r"column 'source_image' .* is of type double"),
])
def test_parquet_with_a_wrong_schema_fails_naming_the_column(tmp_path, columns, message):
    path = write_parquet(tmp_path / "bad.parquet", columns)
    with pytest.raises(ValueError, match=message) as err:
        prompt_set(cfg_of("sd3", {"kind": "file", "path": path}, prompts_per_step=1))
    assert str(err.value).startswith("data.path: ")
    assert "allowed columns: prompt: string, source_image: string (an image path) or binary" in str(err.value)


def test_parquet_with_a_wrong_schema_fails_before_training_starts(tmp_path):
    from pipelines.train import Trainer

    path = write_parquet(tmp_path / "bad.parquet", {"caption": ["a cat"]})
    cfg = cfg_of("sd3", {"kind": "file", "path": path}, prompts_per_step=1)
    cfg = cfg.model_copy(update={"run_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match="no column 'prompt'"):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # nothing pre-trained, no Ray started


def test_big_parquet_is_read_a_batch_at_a_time(tmp_path):
    n, group_rows, batch_rows = 10_000, 2_000, 100
    prompts = [f"prompt number {i}" for i in range(n)]
    path = write_parquet(tmp_path / "big.parquet", {"prompt": prompts}, row_group_size=group_rows)
    rows = ParquetPrompts(path, batch_rows)
    assert len(rows) == n and rows.batches_read == 0  # the count comes from the footer
    assert rows[n - 1]["prompt"] == prompts[n - 1]
    assert rows.batches_read == group_rows // batch_rows  # its row group only, streamed up to the row
    assert rows[n - 2]["prompt"] == prompts[n - 2] and rows.batches_read == group_rows // batch_rows  # same batch
    assert rows[4_150]["prompt"] == prompts[4_150] and rows.batches_read == group_rows // batch_rows + 2
    assert len(rows._batch[2]) == batch_rows  # one batch held, not the row group or the file

    cfg = cfg_of("sd3", {"kind": "file", "path": path, "parquet_batch_rows": batch_rows}, prompts_per_step=8)
    for step in range(3):
        assert all(g.prompt == prompts[g.prompt_idx] for g in plan_groups(cfg, step))

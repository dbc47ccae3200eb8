"""The main job (configs/toy2d.yaml, as `make train` runs it) visibly works. Slow: minutes."""

from __future__ import annotations

import numpy as np
import pytest

from infra.config import load_config


@pytest.mark.slow
def test_toy2d_preset_learns_a_slider(ray_local, tmp_path):
    from pipelines.train import train

    cfg = load_config("configs/toy2d.yaml", [
        f"run_dir={tmp_path / 'run'}", f"pretrain.checkpoint={tmp_path / 'base.pt'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    result = train(cfg, progress=False)
    r, base = result.points.mean, result.base.mean[0]
    e2, e1 = r[0], r[-1]  # the sweep is ordered by w1: first row w = e_2, last row w = e_1
    margin = 0.25 * (np.abs(base).mean())
    assert e1[0] > base[0] + margin and e2[1] > base[1] + margin  # each corner beats the base on its own reward
    assert e1[0] > e2[0] and e1[1] < e2[1]  # the slider trades one objective for the other
    # monotone along the slider (small tolerance for sampling noise at a fixed seed)
    assert np.all(np.diff(r[:, 0]) > -0.05) and np.all(np.diff(r[:, 1]) < 0.05)

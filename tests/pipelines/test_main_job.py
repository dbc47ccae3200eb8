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
    # A slider, not a switch (the preset's Tchebycheff recipe, docs/evaluation.md): the rewards follow w
    # and no step between adjacent sweep points moves an objective by more than 0.3 of its range (the
    # paper's late recipe, a switch, scores ~0.5 here; this preset measured 0.14; an even 11-point slider 0.1).
    s = result.summary
    assert min(s["monotonicity_target_a"], s["monotonicity_target_b"]) >= 0.9
    assert s["max_jump"] <= 0.3
    # Monotone up to a dip of 3% of the sweep's range: the corner w = e_m sat 0.07 (1.3% of the 5.5 range)
    # below its neighbour in one run, a systematic effect of the corner, far above the sampling noise (CI
    # half-width ~0.02 on 512 samples); 3% leaves room for float differences between machines.
    span = np.ptp(r, axis=0)
    assert np.all(np.diff(r[:, 0]) > -0.03 * span[0]) and np.all(np.diff(r[:, 1]) < 0.03 * span[1])

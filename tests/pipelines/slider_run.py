"""One small trained toy2d slider per test session, shared by the registry, serve and page tests.

A real ``train()`` (tiny network, tiny base pre-trained on the fly, 40 RL steps) that ends by
registering the model in MLflow; 40 steps at a high learning rate are enough for the slider to move
samples from one target to the other, so the tests can check behaviour, not just plumbing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY_MODEL
from infra.config import Config

MODEL_NAME = "toy2d-slider-test"
_TRAINED: dict[str, Config] = {}


def slider_cfg(root: Path) -> Config:
    return Config.model_validate({
        "name": "toy2d-slider", "run_dir": str(root / "run"), "model": TINY_MODEL,
        "pretrain": {"checkpoint": str(root / "base.pt"), "steps": 300, "batch_size": 256, "lr": 3e-3},
        "rollout": {"prompts_per_step": 2, "group_size": 8, "sampler": {"num_steps": 4}},
        "preferences": {"slots_per_prompt": 3},
        "learner": {"lr": 3e-3},
        "loop": {"steps": 40, "checkpoint_every": 20, "scatter_every": 1000},
        "evaluation": {"points_per_edge": 3, "num_samples": 16},
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
        "registry": {"model_name": MODEL_NAME},
    })


def trained_slider(tmp_path_factory) -> Config:
    """The config of the session's trained run (trained on the first call; needs a running Ray)."""
    if "cfg" not in _TRAINED:
        from ray import serve

        from pipelines.train import train

        cfg = slider_cfg(tmp_path_factory.mktemp("slider"))
        train(cfg, progress=False)
        # The reward servers started Serve on a random port; the endpoint tests start their own.
        serve.shutdown()
        _TRAINED["cfg"] = cfg
    return _TRAINED["cfg"]


def target(cfg: Config, label: str):
    import numpy as np

    return np.asarray(next(o.args["target"] for o in cfg.rewards.objectives if o.label == label))


# Fixtures for the test modules that import them (module scope; the training itself is shared).
@pytest.fixture(scope="module")
def cfg(ray_local, tmp_path_factory) -> Config:
    return trained_slider(tmp_path_factory)


@pytest.fixture(scope="module")
def model(cfg):
    from pipelines.slider_model import SliderModel

    return SliderModel.from_run_dir(cfg.run_dir)

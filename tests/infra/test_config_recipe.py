"""The recipe fields of the config tree: defaults per backbone and the errors that name the field."""

from __future__ import annotations

import pytest

from infra.config import Config, ConfigError, load_config


def test_time_grid_defaults_to_the_scheduler_for_diffusers_and_uniform_for_toy2d():
    assert Config().rollout.sampler.time_grid == "uniform"
    sd3 = Config.model_validate({"model": {"kind": "sd3"}, "data": {"kind": "shapes"}})
    assert sd3.rollout.sampler.time_grid == "scheduler"
    assert Config.model_validate_json(sd3.model_dump_json()).rollout.sampler.time_grid == "scheduler"
    with pytest.raises(ConfigError, match=r"rollout\.sampler\.time_grid='scheduler'.*allowed for model\.kind='toy2d': 'uniform'"):
        load_config("configs/toy2d.yaml", ["rollout.sampler.time_grid=scheduler"])


def test_recipe_fields_reject_bad_values_with_the_field_name():
    with pytest.raises(ConfigError, match=r"algorithm\.timestep_source: must be one of 'uniform' or 'sampler_grid'"):
        load_config("configs/toy2d.yaml", ["algorithm.timestep_source=grid"])
    with pytest.raises(ConfigError, match=r"algorithm\.ema_schedule: must be one of 'warmup' or 'constant'"):
        load_config("configs/toy2d.yaml", ["algorithm.ema_schedule=cosine"])
    with pytest.raises(ConfigError, match=r"rollout\.sampler\.solver: must be one of 'euler' or 'dpmpp_2m'"):
        load_config("configs/toy2d.yaml", ["rollout.sampler.solver=heun"])
    with pytest.raises(ConfigError, match=r"rollout\.sampler\.solver='dpmpp_2m'.*kind='ode'"):
        load_config("configs/toy2d.yaml", ["rollout.sampler.solver=dpmpp_2m", "rollout.sampler.kind=sde",
                                           "algorithm.objective=grpo"])
    with pytest.raises(ConfigError, match=r"algorithm\.train_timesteps \(24\) must be <= rollout\.sampler\.num_steps \(10\)"):
        load_config("configs/toy2d.yaml", ["algorithm.timestep_source=sampler_grid", "algorithm.train_timesteps=24"])
    with pytest.raises(ConfigError, match=r"model\.lora_init: must be one of 'default' or 'gaussian'"):
        load_config("configs/toy2d.yaml", ["model.lora_init=zeros"])


def test_cpu_presets_keep_todays_recipe_and_gpu_presets_follow_the_reference():
    for name in ("toy2d", "shapes", "shapes_edit", "compare_toy2d"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.algorithm.timestep_source == "uniform" and cfg.rollout.sampler.time_grid == "uniform", name
        assert cfg.rollout.sampler.solver == "euler" and cfg.model.lora_init == "default", name
    for name in ("sd35", "flux_kontext", "ltx2"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.algorithm.timestep_source == "sampler_grid" and cfg.rollout.sampler.time_grid == "scheduler", name
        assert cfg.rollout.sampler.solver == "dpmpp_2m" and cfg.algorithm.ema_schedule == "warmup", name
        assert (cfg.learner.pref_lr_mult, cfg.learner.weight_decay, cfg.model.lora_init) == (1.0, 1e-4, "gaussian"), name

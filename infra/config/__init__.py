"""The one typed config tree: pydantic models, YAML presets and dotted CLI overrides.

Every field has a default that runs on a laptop CPU; presets in ``configs/*.yaml`` override them.
Unknown keys and bad values fail in :func:`load_config` with the dotted field name and what is
allowed, before Ray, MLflow or any model starts."""

from __future__ import annotations

from infra.config.base import Strict
from infra.config.model import TinyModelConfig, DiffusersConfig, ModelConfig
from infra.config.data import ToyDataConfig, PretrainConfig, DataConfig
from infra.config.rewards import RewardSpec, RewardsConfig
from infra.config.rollout import PreferenceConfig, SamplerConfig, RolloutConfig
from infra.config.algorithm import AlgorithmConfig
from infra.config.learner import LearnerConfig, LoopConfig
from infra.config.cluster import RayConfig, PoolConfig, ClusterConfig, SimulationConfig
from infra.config.tracking import TrackingConfig, RegistryConfig
from infra.config.serve import ServeConfig
from infra.config.evaluation import EvaluationConfig, SliderVariant, CompareConfig
from infra.config.job import Config
from infra.config.loading import MOVED_FIELDS, ConfigError, apply_override, load_config, dump_config, flat_params

__all__ = ["Strict", "TinyModelConfig", "DiffusersConfig", "ModelConfig", "ToyDataConfig", "PretrainConfig", "DataConfig", "RewardSpec", "RewardsConfig", "PreferenceConfig", "SamplerConfig", "RolloutConfig", "AlgorithmConfig", "LearnerConfig", "LoopConfig", "RayConfig", "PoolConfig", "ClusterConfig", "SimulationConfig", "TrackingConfig", "RegistryConfig", "ServeConfig", "EvaluationConfig", "SliderVariant", "CompareConfig", "Config", "MOVED_FIELDS", "ConfigError", "apply_override", "load_config", "dump_config", "flat_params"]

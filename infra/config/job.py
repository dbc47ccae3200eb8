"""``Config``: the whole job, and the rules that span sections."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from infra.config.base import Strict
from infra.config.model import ModelConfig
from infra.config.data import PretrainConfig, DataConfig
from infra.config.rewards import RewardsConfig
from infra.config.rollout import PreferenceConfig, RolloutConfig
from infra.config.algorithm import AlgorithmConfig
from infra.config.learner import LearnerConfig, LoopConfig
from infra.config.cluster import RayConfig, ClusterConfig, SimulationConfig
from infra.config.tracking import TrackingConfig, RegistryConfig
from infra.config.serve import ServeConfig
from infra.config.evaluation import EvaluationConfig, CompareConfig


class Config(Strict):
    """The whole job."""

    name: str = "toy2d"
    """The job's name: MLflow run name and registered model name."""
    run_dir: str = "runs/toy2d"
    """Checkpoints, the resolved config and the run state live here."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The policy: backbone, LoRA and preference modules."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Prompts (and source images) the rollouts draw from."""
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    """The base model (pre-trained in-repo for toy2d and the shapes world)."""
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    """The objectives and how they are served."""
    preferences: PreferenceConfig = Field(default_factory=PreferenceConfig)
    """How preference vectors w are drawn for training."""
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """Rollout actors and one step's batch."""
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    """The RL objective, advantages and policy copies."""
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    """The DeepSpeed learner group."""
    loop: LoopConfig = Field(default_factory=LoopConfig)
    """The single-controller training loop."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """MLflow tracking."""
    ray: RayConfig = Field(default_factory=RayConfig)
    """How to reach Ray."""
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    """Resource pools, placement and weight sync."""
    simulate: SimulationConfig = Field(default_factory=SimulationConfig)
    """Stage-cost simulation (orchestration benchmarks)."""
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    """MLflow model registry."""
    serve: ServeConfig = Field(default_factory=ServeConfig)
    """The slider endpoint."""
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """Pareto sweeps and their measures."""
    compare: CompareConfig = Field(default_factory=CompareConfig)
    """The comparison with fixed-weight models and rewarded soups."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ \t\n"):
            raise ValueError("must be a non-empty name without slashes or whitespace")
        return v

    @property
    def num_objectives(self) -> int:
        return len(self.rewards.objectives)

    @property
    def objective_names(self) -> list[str]:
        return [o.display for o in self.rewards.objectives]

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        a = self.algorithm
        if a.objective == "grpo" and self.rollout.sampler.kind != "sde":
            raise ValueError(
                "algorithm.objective='grpo' needs rollout.sampler.kind='sde' (per-step log-probs); "
                f"got rollout.sampler.kind='{self.rollout.sampler.kind}'"
            )
        if a.train_timesteps > self.rollout.sampler.num_steps and a.objective == "grpo":
            raise ValueError(
                f"algorithm.train_timesteps ({a.train_timesteps}) must be <= "
                f"rollout.sampler.num_steps ({self.rollout.sampler.num_steps}) for grpo"
            )
        if a.objective == "grpo" and self.rollout.sampler.guidance_scale > 1:
            raise ValueError("rollout.sampler.guidance_scale > 1 is for nft only: Flow-GRPO's log-probs "
                             "are of the unguided policy")
        sampler = self.rollout.sampler
        if sampler.solver != "euler" and sampler.kind != "ode":
            raise ValueError(f"rollout.sampler.solver='{sampler.solver}' is an ODE solver: it needs "
                             "rollout.sampler.kind='ode' (the sde sampler is Euler-Maruyama); allowed with sde: 'euler'")
        if self.model.kind != "toy2d" and "time_grid" not in sampler.model_fields_set:
            sampler.__dict__["time_grid"] = "scheduler"
        if self.model.kind == "toy2d" and sampler.time_grid == "scheduler":
            raise ValueError("rollout.sampler.time_grid='scheduler' needs a diffusers backbone (toy2d has no "
                             "scheduler); allowed for model.kind='toy2d': 'uniform'")
        if self.model.kind == "toy2d" and self.data.kind != "none":
            raise ValueError(f"data.kind='{self.data.kind}' needs an image backbone; model.kind is 'toy2d'")
        if self.model.kind == "ltx2" and self.data.kind == "shapes_edit":
            raise ValueError("data.kind='shapes_edit' needs source images; model.kind='ltx2' is text-to-video")
        if self.learner.zero_stage == 3:
            raise ValueError("learner.zero_stage=3 is not supported by the learner (ZeRO-3 partitions the "
                             "trainable weights, so the old-policy swap and the EMA would see empty tensors); "
                             "allowed: 0, 1, 2")
        if a.timestep_source == "sampler_grid" and a.objective == "nft" and \
                a.train_timesteps > self.rollout.sampler.num_steps:
            raise ValueError(f"algorithm.train_timesteps ({a.train_timesteps}) must be <= rollout.sampler.num_steps "
                             f"({self.rollout.sampler.num_steps}) with algorithm.timestep_source='sampler_grid' "
                             "(distinct grid points per sample)")
        c = self.cluster
        if c.colocate and c.weight_sync == "collective" and self.learner.num_gpus_per_worker > 0:
            raise ValueError("cluster.colocate with cluster.weight_sync='collective' would put two NCCL ranks (a "
                             "learner rank and a rollout actor) on one GPU, which NCCL does not allow: use "
                             "cluster.weight_sync='object_store' with colocation")
        if c.colocate and (not c.placement_groups or self.loop.max_staleness != 0):
            raise ValueError("cluster.colocate needs cluster.placement_groups=true and loop.max_staleness=0 "
                             "(colocated rollouts and learner take turns on the same GPUs)")
        groups_per_step = self.rollout.prompts_per_step * self.preferences.slots_per_prompt
        if c.max_inflight_groups is not None and c.max_inflight_groups < groups_per_step:
            raise ValueError(f"cluster.max_inflight_groups ({c.max_inflight_groups}) must be >= the groups of "
                             f"one step ({groups_per_step} = rollout.prompts_per_step x preferences.slots_per_prompt)")
        if a.fixed_preference is not None:
            w = a.fixed_preference
            if len(w) != self.num_objectives:
                raise ValueError(
                    f"algorithm.fixed_preference has {len(w)} weights but there are "
                    f"{self.num_objectives} objectives {self.objective_names}"
                )
            if any(x < 0 for x in w) or abs(sum(w) - 1) > 1e-6:
                raise ValueError(f"algorithm.fixed_preference must be on the simplex (>= 0, sum 1), got {w}")
        ev = self.evaluation
        if ev.every is not None and ev.every % self.loop.checkpoint_every:
            raise ValueError(f"evaluation.every ({ev.every}) must be a multiple of loop.checkpoint_every "
                             f"({self.loop.checkpoint_every}): a sweep is of a checkpointed model")
        for field_name, value in (("rewards", ev.rewards), ("reference_point", ev.reference_point)):
            if value is not None and len(value) != self.num_objectives:
                raise ValueError(f"evaluation.{field_name} has {len(value)} entries but there are "
                                 f"{self.num_objectives} objectives {self.objective_names}")
        return self

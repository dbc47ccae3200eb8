"""The one typed config tree: pydantic models, YAML presets and dotted CLI overrides.

Every field has a default that runs on a laptop CPU; presets in ``configs/*.yaml`` override them.
Unknown keys and bad values fail in :func:`load_config` with the dotted field name and what is
allowed, before Ray, MLflow or any model starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Strict(BaseModel):
    """Base for every config node: unknown keys are errors, assignments are re-validated, and each
    field's docstring becomes its description (the schema and the docs read it)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class TinyModelConfig(Strict):
    """Architecture of an in-repo tiny diffusers base (the CPU shapes world and the tests)."""

    image_size: int = Field(32, ge=8)
    """Height = width of the images, in pixels."""
    vae_channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1)
    """``AutoencoderKL`` block widths; ``len - 1`` downsamplings (32 px -> 16 x 16 latents)."""
    vae_groups: int = Field(8, ge=1)
    """GroupNorm groups in the VAE (must divide every width)."""
    latent_channels: int = Field(4, ge=1)
    """Channels of the tiny VAE's latents."""
    num_layers: int = Field(4, ge=1)
    """Joint (double-stream) transformer blocks."""
    num_single_layers: int = Field(2, ge=0)
    """Single-stream blocks (Flux only)."""
    num_heads: int = Field(4, ge=1)
    """Attention heads of the tiny transformer."""
    head_dim: int = Field(16, ge=8)
    """Width of each of those heads (transformer width = num_heads * head_dim)."""
    text_dim: int = Field(32, ge=8)
    """Width of each tiny text encoder (CLIP); T5's width is twice this."""
    text_layers: int = Field(2, ge=2)
    """Text-encoder layers (>= 2: SD3 reads CLIP's penultimate hidden state)."""
    text_heads: int = Field(2, ge=1)
    """Attention heads of each tiny text encoder."""
    max_text_tokens: int = Field(16, ge=4)
    """Tokenizer length (CLIP context and T5 ``max_sequence_length`` of the tiny models)."""

    @model_validator(mode="after")
    def _divisible(self) -> TinyModelConfig:
        bad = [c for c in self.vae_channels if c % self.vae_groups]
        if bad:
            raise ValueError(f"vae_channels {self.vae_channels} must all be divisible by vae_groups={self.vae_groups}")
        return self


class DiffusersConfig(Strict):
    """How an SD3 / FLUX.1 Kontext / LTX-2 backbone is loaded and run (ignored by toy2d)."""

    pretrained: str | None = None
    """Local diffusers directory or hub id of the base pipeline; None = ``pretrain.checkpoint``
    (the in-repo tiny base that ``paretoslider pretrain`` makes)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of a hub-id ``pretrained``; None = ``main``. A registered
    model pins the commit it resolved to on the registering host (ignored for local directories)."""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Weights dtype of the frozen base (LoRA and preference modules follow it)."""
    gradient_checkpointing: bool = False
    """Recompute transformer blocks in the backward pass (learner only)."""
    height: int = Field(32, ge=8)
    """Generated image / video height in pixels."""
    width: int = Field(32, ge=8)
    """Generated image / video width in pixels."""
    num_frames: int = Field(9, ge=1)
    """Generated video frames (ltx2 only; image kinds ignore it). ``num_frames - 1`` must be a multiple
    of the video VAE's temporal compression (LTX-2: 8, so 9, 17, ..., 121)."""
    frame_rate: float = Field(24.0, gt=0)
    """Frames per second of the generated video (ltx2 only): sets the audio length and the time scale
    of the video positions, as ``LTX2Pipeline(frame_rate=...)``."""
    max_sequence_length: int = Field(16, ge=1)
    """Prompt tokens of the T5 (SD3, Flux) or Gemma (LTX-2) text encoder."""
    guidance: float | None = None
    """Distilled guidance fed to the transformer (FLUX.1 Kontext dev: 2.5); None if it has none."""
    decode_batch_size: int = Field(16, ge=1)
    """Samples per VAE decode call (video VAEs are the memory-heavy case: LTX-2 decodes few at a time)."""


def _attention_projections() -> list[str]:
    return ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


class ModelConfig(Strict):
    """The policy network and how it is adapted during RL."""

    kind: Literal["toy2d", "sd3", "flux_kontext", "ltx2"] = "toy2d"
    """Backbone family: the toy2d MLP, or a diffusers transformer (see ``policies/diffusers_backbones.py``)."""
    hidden_dim: int = Field(128, ge=8, le=8192)
    """Width of the toy2d MLP."""
    num_blocks: int = Field(3, ge=1, le=64)
    """Residual MLP blocks in the toy2d network."""
    time_embed_dim: int = Field(64, ge=4)
    """Sinusoidal time-embedding size (before the MLP that lifts it to ``hidden_dim``)."""
    pref_hidden_dim: int = Field(64, ge=4)
    """Hidden width of the preference encoder and the slider projector."""
    lora_rank: int = Field(16, ge=0)
    """LoRA rank via peft on the backbone's linear layers; 0 trains every backbone weight."""
    lora_alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator (scale = alpha / rank)."""
    lora_targets: list[str] = Field(default_factory=lambda: ["fc1", "fc2", "in_proj", "out_proj"])
    """Module names that get LoRA adapters, matched as name suffixes inside the transformer only.
    Diffusers kinds default to the attention projections; SD3 to those of the joint attention ``attn.*``
    only, as the reference (SD3.5's dual-attention blocks keep their second, image-only ``attn2`` frozen)."""
    lora_init: Literal["default", "gaussian"] = "default"
    """peft ``init_lora_weights``: ``default`` (Kaiming-uniform A, zero B) or ``gaussian`` (A ~ N(0, 1/r),
    zero B: the reference's). Either way the adapted model starts exactly at the base."""
    diffusers: DiffusersConfig = Field(default_factory=DiffusersConfig)
    """How a diffusers backbone is loaded and run (ignored by toy2d)."""
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    """Architecture of the tiny base ``paretoslider pretrain`` builds when ``diffusers.pretrained`` is None."""

    @model_validator(mode="after")
    def _diffusers_lora_targets(self) -> ModelConfig:
        if self.kind != "toy2d" and "lora_targets" not in self.model_fields_set:
            names = _attention_projections()
            self.__dict__["lora_targets"] = [f"attn.{n}" for n in names] if self.kind == "sd3" else names
        return self


class ToyDataConfig(Strict):
    """The 2-D Gaussian mixture the toy base model is pre-trained on."""

    num_modes: int = Field(8, ge=1)
    """Modes evenly spaced on a ring."""
    radius: float = Field(4.0, gt=0)
    """Ring radius."""
    mode_std: float = Field(0.3, gt=0)
    """Standard deviation of each mode."""


class PretrainConfig(Strict):
    """Flow-matching pre-training of the base model (``paretoslider pretrain``)."""

    steps: int = Field(3000, ge=1)
    """Optimizer steps of the base's flow-matching pre-training."""
    batch_size: int = Field(512, ge=1)
    """Samples per pre-training step."""
    lr: float = Field(2e-3, gt=0)
    """Peak learning rate of the pre-training (AdamW, one-cycle schedule for the shapes world)."""
    seed: int = 0
    """Seeds the pre-training's data, noise and initial weights."""
    data: ToyDataConfig = Field(default_factory=ToyDataConfig)
    """The toy2d base's training distribution."""
    checkpoint: str = "runs/base/toy2d_base.pt"
    """Where the base model is saved (a diffusers directory for image kinds); ``train`` pre-trains
    it on the fly if it is missing and ``model.diffusers.pretrained`` is not set."""
    vae_steps: int = Field(300, ge=0)
    """Shapes world: autoencoder steps before the transformer trains (the latents must exist first)."""
    vae_batch_size: int = Field(16, ge=1)
    """Shapes world: images per autoencoder step."""
    dataset_size: int = Field(2048, ge=16)
    """Shapes world: examples rendered and encoded once for the transformer's pre-training."""
    caption_dropout: float = Field(0.1, ge=0, lt=1)
    """Shapes world: share of empty prompts, so the base also models the unconditional flow (CFG); an edit
    with an empty instruction learns to keep the source."""
    eval_samples: int = Field(216, ge=1)
    """Shapes world: generated images on which the caption accuracy of the base is measured."""


class DataConfig(Strict):
    """The prompts groups are drawn from (see ``policies/prompts.py``)."""

    kind: Literal["none", "shapes", "shapes_edit", "file"] = "none"
    """``none``: unconditional toy2d; ``shapes``: the 54 shapes captions; ``shapes_edit``: procedural
    edits (instruction + source image); ``file``: prompts (text lines, JSON lines with a source image, or
    a ``.parquet``) from ``path``."""
    path: str | None = None
    """Prompt file of ``kind: file``: one prompt per line, JSON lines ``{"prompt", "source_image"}``, or a
    ``.parquet`` with a string ``prompt`` column and an optional ``source_image`` column (a path string or
    PNG / JPEG bytes)."""
    parquet_batch_rows: int = Field(1024, ge=1)
    """Rows decoded at a time from a ``.parquet`` prompt set: the set is read a batch at a time, never
    whole, so this bounds the memory a large set (e.g. with image bytes) takes."""
    num_prompts: int = Field(256, ge=1)
    """``shapes_edit``: procedural edits in the training set."""
    eval_prompts: int = Field(4, ge=1)
    """Prompts in the final sweep (held-out edits for ``shapes_edit``)."""
    seed: int = 0
    """Seeds the procedural edits."""


class RewardSpec(Strict):
    """One objective: a reward registered by name plus its arguments."""

    name: str
    """Registry key of the reward (see ``reward_servers.registry``)."""
    label: str | None = None
    """Display name of the objective (defaults to ``name``)."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the reward's constructor."""
    url: str | None = None
    """Score on an external reward server (``POST {url}/score``: another job's reward app, a shared
    reward cluster) that serves an objective with this label and name, instead of deploying it here."""
    num_replicas: int | None = Field(None, ge=1)
    """Serve replicas of this objective (None: ``rewards.num_replicas``)."""
    num_gpus: float | None = Field(None, ge=0)
    """GPUs per replica of this objective (None: ``rewards.num_gpus``), e.g. 1 for a vLLM judge."""
    max_ongoing_requests: int | None = Field(None, ge=1)
    """Requests a replica of this objective accepts at once (None: ``rewards.max_ongoing_requests``)."""

    @property
    def display(self) -> str:
        return self.label or self.name

    @field_validator("label")
    @classmethod
    def _metric_safe(cls, v: str | None) -> str | None:
        # Labels become MLflow metric names and HTTP field names.
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", v):
            raise ValueError("must use only letters, digits, '_', '.' and '-'")
        return v


def _default_objectives() -> list[RewardSpec]:
    return [
        RewardSpec(name="toy2d_target", label="target_a", args={"target": [4.0, 0.0]}),
        RewardSpec(name="toy2d_target", label="target_b", args={"target": [0.0, 4.0]}),
    ]


class RewardsConfig(Strict):
    """The objectives and the Ray Serve deployments that score them."""

    objectives: list[RewardSpec] = Field(default_factory=_default_objectives, min_length=1)
    """One entry per objective; the preference vector has one weight per entry, in this order."""
    backend: Literal["serve", "local"] = "serve"
    """``serve``: Ray Serve deployments called asynchronously; ``local``: in the driver (debug)."""
    max_batch_size: int = Field(64, ge=1)
    """``@serve.batch`` maximum batch size (in requests)."""
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    """``@serve.batch`` wait for more requests before scoring a partial batch."""
    num_replicas: int = Field(1, ge=1)
    """Serve replicas per objective (an objective's own ``num_replicas`` wins)."""
    max_ongoing_requests: int = Field(64, ge=1)
    """Requests a reward replica accepts at once before Serve queues them."""
    num_cpus: float = Field(0.1, ge=0)
    """CPUs reserved per reward replica (fractional so a 2-core laptop fits the whole loop)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per reward replica (an objective's own ``num_gpus`` wins); fractions share a GPU."""
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom resources per replica, e.g. ``{reward_pool: 1}`` to keep judges on the reward nodes."""
    timeout_s: float = Field(60.0, gt=0)
    """Per-call timeout; a hung reward server fails the step with an error naming it."""
    retries: int = Field(2, ge=0)
    """Retries (with exponential backoff) of a failed scoring call."""
    route_prefix: str | None = None
    """Also serve the router over HTTP at this prefix (``POST {prefix}/score`` with an ``.npz`` batch,
    ``GET {prefix}/objectives``), so other jobs can point an objective's ``url`` at it."""

    @model_validator(mode="after")
    def _unique_labels(self) -> RewardsConfig:
        labels = [o.display for o in self.objectives]
        if len(set(labels)) != len(labels):
            raise ValueError(f"objective labels must be unique, got {labels}; set 'label' on each")
        return self


class PreferenceConfig(Strict):
    """How preference vectors ``w`` are sampled on the simplex (paper: 10% corners + Dirichlet)."""

    slots_per_prompt: int = Field(3, ge=1)
    """K: preference vectors sampled per prompt each step."""
    corner_prob: float = Field(0.1, ge=0, le=1)
    """Two objectives: probability of a one-hot corner (else Dirichlet(alpha))."""
    vertex_prob: float = Field(0.5, ge=0, le=1)
    """Three or more objectives: probability of a simplex vertex."""
    edge_prob: float = Field(0.35, ge=0, le=1)
    """Three or more objectives: probability of an edge point (Dirichlet on a random pair)."""
    dirichlet_alpha: float = Field(1.0, gt=0)
    """Concentration of the Dirichlet draws; the rest (1 - vertex - edge) is interior."""

    @model_validator(mode="after")
    def _mix_sums(self) -> PreferenceConfig:
        if self.vertex_prob + self.edge_prob > 1 + 1e-9:
            raise ValueError(
                f"vertex_prob + edge_prob must be <= 1 (got {self.vertex_prob} + {self.edge_prob})"
            )
        return self


class SamplerConfig(Strict):
    """The rollout sampler."""

    kind: Literal["ode", "sde"] = "ode"
    """``ode``: deterministic ODE (DiffusionNFT); ``sde``: Flow-GRPO SDE with per-step log-probs."""
    solver: Literal["euler", "dpmpp_2m"] = "euler"
    """ODE solver of ``kind: ode``: ``euler``, or ``dpmpp_2m`` (deterministic DPM-Solver++(2M) on data
    predictions, first order on the first and last step: the reference's ``dpm2`` rollouts)."""
    num_steps: int = Field(10, ge=1, le=1000)
    """Sampler steps from noise (t = 1) to data (t = 0)."""
    noise_level: float = Field(0.7, ge=0)
    """Flow-GRPO ``a`` in ``sigma_t = a sqrt(t / (1 - t))``."""
    shift: float = Field(1.0, gt=0)
    """Time-grid shift ``t' = s t / (1 + (s - 1) t)`` (SD3.5: 3; 1 = uniform). With ``time_grid:
    scheduler`` it replaces the scheduler's own (static or resolution-dependent) shift."""
    time_grid: Literal["scheduler", "uniform"] = "uniform"
    """``scheduler``: the sigmas of the backbone's own diffusers scheduler (the base's
    ``scheduler/scheduler_config.json``), set for ``num_steps`` as its pipeline does; ``uniform``:
    ``shift`` applied to ``linspace(1, 0, num_steps + 1)``. Diffusers kinds default to ``scheduler``;
    toy2d has no scheduler and allows only ``uniform``."""
    guidance_scale: float = Field(1.0, ge=1)
    """Classifier-free guidance with the empty prompt (1 = off, the DiffusionNFT default)."""


class RolloutConfig(Strict):
    """Rollout actors and the shape of one step's batch."""

    num_actors: int = Field(1, ge=1)
    """Rollout actors; each samples its share of every step's groups."""
    num_cpus_per_actor: float = Field(0.5, ge=0)
    """CPUs each rollout actor reserves."""
    num_gpus_per_actor: float = Field(0.0, ge=0)
    """GPUs each rollout actor reserves (fractions share a GPU, e.g. with colocation)."""
    prompts_per_step: int = Field(8, ge=1)
    """Prompts per step (toy2d is unconditional: a prompt is just an index)."""
    group_size: int = Field(16, ge=2)
    """G: samples per (prompt, w) group; advantages are normalised inside a group."""
    micro_batch_size: int | None = Field(None, ge=1)
    """Samples per transformer batch on a rollout actor (whole groups, at least one); None = the actor's
    whole share at once. Bounds the rollout's activation memory: each chunk is encoded, sampled and
    decoded to uint8 before the next starts. Results do not depend on it (noise is drawn per group)."""
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    """How rollouts sample (ODE / SDE, steps, grid, guidance)."""


class AlgorithmConfig(Strict):
    """The multi-objective RL objective."""

    objective: Literal["nft", "grpo"] = "nft"
    """``nft``: DiffusionNFT (paper default, ODE samples); ``grpo``: Flow-GRPO (needs sde sampler)."""
    scalarisation: Literal["late", "early", "tchebycheff"] = "late"
    """``late``: per-objective group-normalised advantages weighted by w (ParetoSlider);
    ``early``: reward = weighted sum, normalised once (fixed-weight baselines; with ``reward_scale:
    batch_std`` also the slider of ``configs/shapes_edit.yaml``);
    ``tchebycheff``: ``-max_m w_m (1 - r~_m)`` on batch-range-normalised rewards (reaches concave fronts)."""
    adv_std: Literal["group", "batch"] = "group"
    """Divide the group-centred rewards by the group's std (flow_grpo / DiffusionNFT default) or by the
    batch's (flow_grpo ``global_std``: a group whose samples score alike keeps advantage ~0)."""
    reward_scale: Literal["none", "batch_std"] = "none"
    """Early scalarisation only: ``batch_std`` divides each objective by its std over the batch before
    the weighted sum, so ``w`` weighs commensurate units and the slider keeps the front's slopes
    (``policies.objectives.early_advantages``)."""
    fixed_preference: list[float] | None = None
    """Train every sample at this single ``w`` instead of sampling (fixed-weight baselines)."""
    adv_clip: float = Field(5.0, gt=0)
    """Advantages are clipped to [-adv_clip, adv_clip] (DiffusionNFT's A_max; GRPO's advantage clip)."""
    nft_beta: float = Field(0.1, gt=0, le=1)
    """DiffusionNFT ``beta`` mixing the current and the old velocity."""
    loss_scale: float = Field(5.0, gt=0)
    """Paper's policy-loss multiplier (equal to the advantage clip in the reference code)."""
    kl_coef: float = Field(1e-4, ge=0)
    """Weight of the KL-like term to the reference (base model, no w)."""
    grpo_clip: float = Field(1e-4, gt=0)
    """Flow-GRPO PPO clip range."""
    train_timesteps: int = Field(4, ge=1)
    """NFT: noise levels drawn per sample per update; GRPO: SDE steps trained per trajectory."""
    timestep_source: Literal["uniform", "sampler_grid"] = "uniform"
    """NFT: where each trained noise level ``t`` comes from. ``uniform``: ``t ~ U(0, 1)`` (clamped at
    1e-3); ``sampler_grid``: ``train_timesteps`` distinct points of the rollout sampler's own time grid
    (its ``num_steps`` non-zero times), drawn per sample without replacement, as the reference trains
    (a random permutation of the 25 points per sample, the first ``int(0.99 * 25) = 24`` of them)."""
    old_decay_per_step: float = Field(0.001, ge=0, le=1)
    """Old (sampling) policy: ``old <- d old + (1 - d) theta`` with ``d = min(rate * step, max)``."""
    old_decay_max: float = Field(0.5, ge=0, le=1)
    """Cap of the old (sampling) policy's decay ``min(old_decay_per_step * s, old_decay_max)``."""
    ema_decay: float = Field(0.9, ge=0, lt=1)
    """EMA of the trained weights (what is evaluated, checkpointed and registered): the largest decay."""
    ema_schedule: Literal["warmup", "constant"] = "warmup"
    """``warmup``: decay ``min((1 + s) / (10 + s), ema_decay)`` after optimizer step ``s = 1, 2, ...`` (the
    reference's; after 5 steps the EMA holds 0.2% of the initial weights); ``constant``: ``ema_decay``
    from the first step (after 5 steps still 59% initial weights)."""


class LearnerConfig(Strict):
    """The DeepSpeed learner group."""

    world_size: int = Field(1, ge=1)
    """Learner ranks (data-parallel DeepSpeed engines)."""
    num_cpus_per_worker: float = Field(0.5, ge=0)
    """CPUs each learner rank reserves."""
    num_gpus_per_worker: float = Field(0.0, ge=0)
    """GPUs each learner rank reserves."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend; ``auto`` = nccl with GPUs, gloo without."""
    zero_stage: int = Field(0, ge=0, le=3)
    """DeepSpeed ZeRO stage. The learner runs 0, 1 and 2; a job with 3 is rejected (its partitioned
    parameters would make the old-policy swap and the EMA read empty tensors)."""
    lr: float = Field(3e-4, gt=0)
    """AdamW learning rate of the LoRA / backbone parameters."""
    pref_lr_mult: float = Field(10.0, gt=0)
    """Learning-rate multiplier of the preference modules (they start from ~zero)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW's decoupled weight decay (the reference's SD3.5 recipe: 1e-4)."""
    adam_eps: float = Field(1e-8, gt=0)
    """AdamW's ``eps`` (torch's default). Adam's first step is ``lr * g / (|g| + eps)``: with a large eps
    it is linear in the gradient (what the learner tests use to compare steps across summation orders)."""
    grad_clip: float = Field(1.0, gt=0)
    """Global gradient-norm clip."""
    micro_batch_size: int = Field(256, ge=1)
    """Samples per forward/backward on one worker."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """DeepSpeed's compute precision; the old-policy and EMA copies stay fp32 whatever it is."""


class LoopConfig(Strict):
    """The single-controller training loop."""

    steps: int = Field(300, ge=1)
    """Training steps (one optimizer step each)."""
    max_staleness: int = Field(1, ge=0)
    """Rollouts may run this many policy versions ahead of the learner (0 = on-policy, synchronous)."""
    seed: int = 0
    """Seeds the preference draws, group seeds and training noise (with the step index)."""
    log_every: int = Field(1, ge=1)
    """Record the step's metrics every N steps (they reach MLflow at the next checkpoint)."""
    scatter_every: int = Field(100, ge=1)
    """Log a scatter of samples coloured by w every N steps."""
    checkpoint_every: int = Field(50, ge=1)
    """Checkpoint every N steps (and at the last). Training metrics reach MLflow here: the history
    holds only steps a checkpoint kept, so each step appears once after a crash and ``--resume``."""


class TrackingConfig(Strict):
    """MLflow tracking."""

    tracking_uri: str | None = None
    """None: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the working directory."""
    experiment: str = "paretoslider"
    """MLflow experiment the run is logged in."""
    run_name: str | None = None
    """MLflow run name (None: the job's ``name``)."""
    system_metrics: bool = False
    """Log CPU, memory and, where one exists, GPU figures of the driver, each learner rank, rollout actor
    and reward replica into the run as ``system/<role>/...`` (MLflow's system-metrics monitor: one
    thread per process and one small ``log_batch`` per sample). Off by default: importing MLflow costs
    each worker about 130 MB and a second at start, ~0.5 GB on the laptop toy2d job; small beside a
    policy copy, so the GPU presets turn it on."""
    system_metrics_interval_s: float = Field(10.0, gt=0)
    """Seconds between two system-metrics samples of each role."""


class RayConfig(Strict):
    """How to reach Ray."""

    address: str | None = None
    """None starts a local cluster; ``auto`` or ``ray://host:10001`` joins an existing one."""
    num_cpus: int | None = None
    """Local cluster only: CPUs to offer (None = all)."""
    num_gpus: int | None = None
    """Local cluster only: GPUs to offer (logical GPUs are fine for placement tests)."""


class PoolConfig(Strict):
    """How one role's actors are reserved on a cluster: one bundle per actor (rank)."""

    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Placement-group strategy: PACK keeps a pool on few nodes, SPREAD spreads it over many."""
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom resources each bundle needs, e.g. ``{rollout_pool: 1}`` to pin the pool to node types."""
    memory_gb: float | None = Field(None, gt=0)
    """Memory reserved per bundle (None: no reservation)."""
    gpu_memory_gb: float | None = Field(None, gt=0)
    """GPU memory of one card of this pool: ``--dry-run`` refuses a plan whose estimated peak per actor
    (measured on the meta device, ``pipelines.memory_plan``) exceeds it. None: not checked."""


class ClusterConfig(Strict):
    """Resource pools, colocation, back-pressure and fault tolerance."""

    placement_groups: bool = False
    """Reserve the rollout and learner pools as Ray placement groups (gang-scheduled; a pool that
    cannot fit fails at start-up with a clear error). False: plain per-actor resource requests."""
    rollout: PoolConfig = Field(default_factory=PoolConfig)
    """How the rollout pool is reserved."""
    learner: PoolConfig = Field(default_factory=PoolConfig)
    """How the learner pool is reserved."""
    colocate: bool = False
    """Rollout actors share the learner's bundles (fractional GPUs): rollout i goes in bundle
    ``i % learner.world_size`` and its model is offloaded while the learner trains. Needs
    ``loop.max_staleness=0`` and ``placement_groups=true``."""
    max_inflight_groups: int | None = Field(None, ge=1)
    """Back-pressure: groups the driver may have issued but not yet trained (None: as many as
    ``loop.max_staleness`` allows)."""
    weight_sync: Literal["object_store", "collective"] = "object_store"
    """How sampling weights reach rollout actors: ``object_store`` (``ray.put`` once, actors pull) or
    ``collective`` (bucketed float32 broadcast from learner rank 0 over a group of its own, NCCL, or gloo
    when ``learner.backend=gloo`` or without GPUs; received in the background and applied between
    rollouts; re-formed when a rollout actor restarts). Both are verified by digest every sync."""
    weight_sync_bucket_mb: float = Field(64.0, gt=0)
    """Bucket size of the collective broadcast."""
    rollout_max_restarts: int = Field(3, ge=0)
    """A dead rollout actor is restarted up to this many times and its in-flight calls re-run."""
    ready_timeout_s: float = Field(120.0, gt=0)
    """How long to wait for a placement group before failing with the resources it asked for."""


class SimulationConfig(Strict):
    """Stage-cost simulation: stand-in costs replace GPU work so orchestration can be measured on a
    laptop. Real-size sample payloads still travel through the object store. Reward costs are set
    on the objectives themselves (the ``simulated_cost`` reward)."""

    enabled: bool = False
    """Replace sampling and training by their stand-in costs."""
    rollout_s_per_sample: float = Field(0.001, ge=0)
    """Seconds a rollout actor is charged per sample."""
    train_s_per_sample: float = Field(0.001, ge=0)
    """Charged per learner rank on its shard."""
    sample_bytes: int = Field(4096, ge=8)
    """Payload per sample (e.g. a 512px SD3 latent is 16*64*64*2 bytes = 128 KiB)."""


class RegistryConfig(Strict):
    """The trained model in the MLflow model registry (``paretoslider register``)."""

    model_name: str | None = None
    """Registered-model name; None uses the job's ``name``."""
    register_on_finish: bool = True
    """Log the EMA model as an MLflow pyfunc model and register it when ``train`` finishes."""


class ServeConfig(Strict):
    """The slider endpoint (``paretoslider serve``): Ray Serve resources, batching and request limits."""

    host: str = "127.0.0.1"
    """Address the Serve HTTP proxy binds; loopback by default, ``0.0.0.0`` exposes it."""
    port: int = Field(8000, ge=1, le=65535)
    """HTTP port of the endpoint."""
    num_replicas: int = Field(1, ge=1)
    """Replicas of the slider deployment."""
    num_cpus: float = Field(0.5, ge=0)
    """CPUs reserved per model replica."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs reserved per model replica."""
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources per replica, e.g. ``{"slider_node": 1}`` to place replicas on the nodes
    that advertise it; replicas fetch the model themselves, so any node works."""
    max_batch_size: int = Field(16, ge=1)
    """``@serve.batch``: requests generated together (1 = unbatched)."""
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    """``@serve.batch``: wait for more requests before generating a partial batch."""
    max_ongoing_requests: int = Field(64, ge=1)
    """Requests a replica accepts at once (queued ones wait in the proxy)."""
    max_steps: int = Field(100, ge=1)
    """Largest ``steps`` a request may ask for."""
    max_size: int = Field(1024, ge=16)
    """Largest ``width`` / ``height`` (and source-image side) in pixels."""
    max_prompt_chars: int = Field(2000, ge=1)
    """Longer prompts are rejected with a 422 naming the limit."""
    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    """Largest request body; larger ones are answered 413 before they are read."""
    points_per_request: int = Field(256, ge=1, le=100_000)
    """Point-cloud models (toy2d): samples drawn per request."""
    require_token: bool = False
    """Ask for ``Authorization: Bearer <token>`` on ``/v1/*``; the token is read from ``token_env``."""
    token_env: str = "PARETOSLIDER_SERVE_TOKEN"
    """Environment variable holding the bearer token (never put the token itself in a config)."""


class EvaluationConfig(Strict):
    """Pareto sweeps of a trained model: training's final sweep, ``paretoslider evaluate`` and ``compare``."""

    rewards: list[RewardSpec] | None = None
    """Held-out rewards that judge the fronts, one per objective in ``rewards.objectives`` order
    (the slider's ``w_m`` moves objective ``m``); None scores with the training rewards."""
    points_per_edge: int = Field(11, ge=2)
    """Sweep resolution: 2 objectives ``w1 = 0, 0.1, ..., 1`` at 11; 3+ a simplex lattice."""
    num_samples: int = Field(512, ge=2)
    """Samples per swept preference (the same noise at every point and for every method)."""
    seed: int = 1234
    """Noise seed of the sweep."""
    every: int | None = Field(None, ge=1)
    """Training also sweeps its EMA model every N steps, right after that step's checkpoint (a
    multiple of ``loop.checkpoint_every``, so a resume never re-logs a sweep of a model it trains
    again); None sweeps only at the end."""
    confidence: float = Field(0.95, gt=0, lt=1)
    """Level of the t-interval reported around each mean reward."""
    reference_point: list[float] | None = None
    """Hypervolume reference point (one value per objective); None derives it from the base model."""
    ref_quantile: float = Field(0.02, ge=0, le=1)
    """Derived reference: this quantile of the base model's per-sample rewards ..."""
    ref_margin: float = Field(0.1, ge=0)
    """... minus this many inter-quartile ranges of them."""


class SliderVariant(Strict):
    """One more preference-conditioned model to compare (e.g. another scalarisation)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    """Its key in the comparison tables (letters, digits, ``_.-``)."""
    overrides: list[str] = Field(default_factory=list)
    """Dotted overrides applied to the job config for this model, e.g. ``algorithm.scalarisation=tchebycheff``."""


class CompareConfig(Strict):
    """``paretoslider compare``: the slider against baselines trained with the same budget each."""

    methods: list[Literal["slider", "fixed", "soups", "base"]] = Field(
        default_factory=lambda: ["slider", "fixed", "soups", "base"])
    """``fixed``: one early-scalarised model per lattice point; ``soups``: the single-reward models
    (the lattice's vertices) interpolated in weight space; ``base``: the pre-trained model."""
    fixed_points_per_edge: int = Field(5, ge=2)
    """Lattice of the fixed-weight models: 5 gives 5 trade-offs for 2 objectives, 15 for 3."""
    fixed_scalarisation: Literal["early", "tchebycheff"] = "early"
    """How the fixed-weight models scalarise their rewards."""
    variants: list[SliderVariant] = Field(default_factory=list)
    """Extra sliders trained and compared alongside the configured one."""
    results_dir: str = "results"
    """Runs, tables and plots go to ``<results_dir>/<name>/``."""


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


MOVED_FIELDS = {"preferences.sweep_points": "evaluation.points_per_edge",
                "loop.eval_samples": "evaluation.num_samples"}
"""Removed fields and the one that replaces each: a config that still sets one fails naming it."""


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field and what is allowed."""


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and loc in MOVED_FIELDS:
            msg = (f"removed; set {MOVED_FIELDS[loc]} instead (the evaluation section sets every sweep: "
                   "training's final sweep, evaluate and compare)")
        elif e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"must be one of {e['ctx']['expected']}"
        lines.append(f"  {loc}: {msg} (got {e.get('input')!r})")
    return "invalid config:\n" + "\n".join(lines)


def _parse_value(raw: str) -> Any:
    """Parse an override's value as YAML, so ``1e-4``, ``true``, ``[1, 2]`` and ``null`` work."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_override(tree: dict[str, Any], dotted: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict in place."""
    if "=" not in dotted:
        raise ConfigError(f"override '{dotted}' must look like key.path=value")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{dotted}': empty part in key path '{key}'")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is a value, not a section")
        node = nxt
    node[parts[-1]] = _parse_value(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML preset (or the embedded defaults), apply dotted overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        tree = loaded
    for o in overrides or []:
        apply_override(tree, o)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (saved with every run and logged to MLflow)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flat_params(cfg: Config) -> dict[str, str]:
    """The resolved config flattened to dotted keys, for MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = str(node)[:500]

    walk("", cfg.model_dump(mode="json"))
    return out

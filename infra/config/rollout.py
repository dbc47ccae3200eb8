"""``preferences`` and ``rollout``: how w is drawn and how groups are sampled."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from infra.config.base import Strict


class PreferenceConfig(Strict):
    """How preference vectors ``w`` are sampled on the simplex. Default: uniform (Dirichlet(1)), which with
    Tchebycheff scalarisation was never dominated by a fixed-weight model on the toy fronts; the paper's
    mix (2 objectives: ``corner_prob: 0.1``; 3+: ``vertex_prob: 0.5, edge_prob: 0.35``) is pinned by
    the presets that reproduce the paper (docs/evaluation.md, Candidate recipes)."""

    slots_per_prompt: int = Field(3, ge=1)
    """K: preference vectors sampled per prompt each step."""
    corner_prob: float = Field(0.0, ge=0, le=1)
    """Two objectives: probability of a one-hot corner (else Dirichlet(alpha)); the paper: 0.1."""
    vertex_prob: float = Field(0.0, ge=0, le=1)
    """Three or more objectives: probability of a simplex vertex; the paper: 0.5."""
    edge_prob: float = Field(0.0, ge=0, le=1)
    """Three or more objectives: probability of an edge point (Dirichlet on a random pair); the paper: 0.35."""
    dirichlet_alpha: float = Field(1.0, gt=0)
    """Concentration of the Dirichlet draws; the rest (1 - vertex - edge) is interior."""
    antithetic: bool = False
    """Slots of one prompt share a draw, its coordinates rotated slot by slot (two objectives: ``w``
    and ``1 - w``; ``slots_per_prompt`` a multiple of the number of objectives keeps every bundle
    whole), instead of independent draws."""

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
    num_threads: int = Field(1, ge=1)
    """torch intra-op threads of each rollout actor: 1 keeps actors sharing a node's cores from
    oversubscribing them; raise it where an actor has CPUs to itself."""
    prompts_per_step: int = Field(8, ge=1)
    """Prompts per step (toy2d is unconditional: a prompt is just an index)."""
    group_size: int = Field(16, ge=2)
    """G: samples per (prompt, w) group; advantages are normalised inside a group."""
    micro_batch_size: int | None = Field(None, ge=1)
    """Samples per transformer batch on a rollout actor (whole groups, at least one); None = the actor's
    whole share at once. Bounds the rollout's activation memory: each chunk is encoded, sampled and
    decoded to uint8 before the next starts. Results do not depend on it (noise is drawn per group)."""
    groups_per_call: int = Field(0, ge=0)
    """Groups per rollout call (0 = each actor's whole share of a step in one call). Each call's results
    are scored as soon as they complete, so with smaller calls the scoring of a step overlaps its
    remaining rollouts; each call costs one round trip and one reward request per objective."""
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    """How rollouts sample (ODE / SDE, steps, grid, guidance)."""

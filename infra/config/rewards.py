"""``rewards``: the objectives and how they are served."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from infra.config.base import Strict


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

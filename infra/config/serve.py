"""``serve``: the slider endpoint."""

from __future__ import annotations

from pydantic import Field

from infra.config.base import Strict


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

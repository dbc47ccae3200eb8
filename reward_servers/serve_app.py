"""Ray Serve app that scores batches: one ``RewardDeployment`` per objective behind a ``RewardRouter``.

Callers reach the router through a ``DeploymentHandle`` (Ray serialization, no HTTP route). The
router fans each request out to every objective at once and stacks the answers into ``[B, M]``;
each objective's deployment merges concurrent requests with ``@serve.batch`` and scores them in one
call. A failing or hung objective fails the request with a ``RewardServerError`` that names it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import DeploymentStatus

from infra.config import RewardSpec, RewardsConfig
from reward_servers.base import RewardInfo, RewardInputs, RewardServerError, checked_scores
from reward_servers.registry import RewardFactory, build_reward, reward_factory

ROUTER_NAME = "RewardRouter"


def _who(spec: RewardSpec) -> str:
    return f"'{spec.display}' ({spec.name})"


def deployment_name(label: str) -> str:
    """Serve deployment name of the objective labelled ``label``."""
    return f"reward-{label}"


@serve.deployment
class RewardDeployment:
    """One objective: builds its reward once per replica and scores batched requests."""

    def __init__(self, spec: dict[str, Any], factory: RewardFactory, max_batch_size: int,
                 batch_wait_timeout_s: float):
        reward_spec = RewardSpec.model_validate(spec)
        self.reward = build_reward(reward_spec, factory)
        self.info = RewardInfo.of(self.reward, reward_spec.display)
        self._score_batch.set_max_batch_size(max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._batch_sizes: list[int] = []

    async def __call__(self, inputs: RewardInputs) -> np.ndarray:
        """``[B]`` float32 scores of one request."""
        inputs.require(self.info.inputs, self.info.who)
        return await self._score_batch(inputs)

    @serve.batch
    async def _score_batch(self, requests: list[RewardInputs]) -> list[np.ndarray]:
        batch = RewardInputs.concat(requests)
        self._batch_sizes.append(len(requests))
        # A worker thread keeps the replica's event loop free to queue the next batch meanwhile.
        scores = checked_scores(await asyncio.to_thread(self.reward.score, batch), len(batch), self.info)
        return np.split(scores, np.cumsum([len(r) for r in requests])[:-1])

    def describe(self) -> RewardInfo:
        return self.info

    def batch_sizes(self) -> list[int]:
        """Requests merged into each batch this replica scored, oldest first."""
        return list(self._batch_sizes)


@serve.deployment
class RewardRouter:
    """Fans a batch out to every objective and returns ``[B, M]`` scores in config order."""

    def __init__(self, specs: list[dict[str, Any]], handles: list[DeploymentHandle], timeout_s: float):
        self.specs = [RewardSpec.model_validate(s) for s in specs]
        self.handles = handles
        self.timeout_s = timeout_s

    async def __call__(self, inputs: RewardInputs) -> np.ndarray:
        results = await asyncio.gather(
            *(self._score(spec, handle, inputs) for spec, handle in zip(self.specs, self.handles)),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise RewardServerError("; ".join(map(str, failures)), getattr(failures[0], "objective", None))
        return np.stack(results, axis=1)

    async def _score(self, spec: RewardSpec, handle: DeploymentHandle, inputs: RewardInputs) -> np.ndarray:
        who = f"reward server {_who(spec)}"
        response = handle.remote(inputs)
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise RewardServerError(f"{who} timed out after {self.timeout_s:g}s", spec.display) from None
        except Exception as err:
            # Replica exceptions arrive wrapped in a RayTaskError; its ``cause`` is the reward's own error.
            cause = getattr(err, "cause", None) or err
            raise RewardServerError(f"{who} failed: {type(cause).__name__}: {cause}", spec.display) from None

    async def describe(self) -> list[RewardInfo]:
        """The objectives' metadata, in config order."""
        return list(await asyncio.gather(*(h.describe.remote() for h in self.handles)))


# One access-log line per scoring call would drown the training progress; warnings still show.
QUIET_LOGS = {"enable_access_log": False, "log_level": "WARNING"}


def build_app(cfg: RewardsConfig) -> serve.Application:
    """The router bound to one deployment per objective, with the config's resources and batching."""
    objectives = []
    for spec in cfg.objectives:
        # Resolved here, in the driver, so unknown names fail before anything deploys and rewards
        # registered only in the driver's process still build in the replicas.
        factory = reward_factory(spec.name)
        objectives.append(
            RewardDeployment.options(
                name=deployment_name(spec.display),
                num_replicas=cfg.num_replicas,
                max_ongoing_requests=cfg.max_ongoing_requests,
                ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus,
                                   "resources": dict(cfg.resources)},
                logging_config=QUIET_LOGS,
            ).bind(spec.model_dump(), factory, cfg.max_batch_size, cfg.batch_wait_timeout_s)
        )
    return RewardRouter.options(
        name=ROUTER_NAME,
        max_ongoing_requests=cfg.max_ongoing_requests,
        # The router only awaits other replicas; a CPU reservation would be wasted on a laptop.
        ray_actor_options={"num_cpus": 0},
        logging_config=QUIET_LOGS,
    ).bind([s.model_dump() for s in cfg.objectives], objectives, cfg.timeout_s)


def start_serve() -> None:
    """Start Serve if it is not running; its HTTP proxy listens on 127.0.0.1 on a free port.

    The rewards need no HTTP route; the loopback host and port 0 keep the proxy from clashing with
    anything else on the machine. A Serve instance already running (e.g. the model endpoint's) is
    reused as it is.
    """
    # Private but stable: the only way to ask "is Serve running" without starting it.
    from ray.serve.context import _get_global_client

    if _get_global_client(raise_if_no_controller_running=False) is None:
        serve.start(http_options={"host": "127.0.0.1", "port": 0})


def deploy_rewards(cfg: RewardsConfig, app_name: str = "rewards") -> DeploymentHandle:
    """Deploy (or update) the reward app and return the router's handle once every replica is up.

    A reward whose constructor fails (bad args, a model that does not load) fails here with a
    ``RewardServerError`` naming it and quoting its error; the failed app is deleted.
    """
    app = build_app(cfg)
    start_serve()
    try:
        return serve.run(app, name=app_name, route_prefix=None)
    except RuntimeError as err:
        failed = _failed_objectives(cfg, app_name)
        serve.delete(app_name)
        if not failed:
            raise
        raise RewardServerError(
            "; ".join(f"reward server {who} failed to start: {why}" for _, who, why in failed), failed[0][0]
        ) from err


def _failed_objectives(cfg: RewardsConfig, app_name: str) -> list[tuple[str, str, str]]:
    """``(label, who, last line of the error)`` of each objective whose deployment failed."""
    # serve.run's own error only lists deployment names; the reason is in the deployment status.
    app = serve.status().applications.get(app_name)
    if app is None:
        return []
    failed = []
    for spec in cfg.objectives:
        status = app.deployments.get(deployment_name(spec.display))
        if status is not None and status.status == DeploymentStatus.DEPLOY_FAILED:
            lines = [line for line in status.message.splitlines() if line.strip()]
            failed.append((spec.display, _who(spec), lines[-1] if lines else "unknown"))
    return failed


def shutdown_rewards(app_name: str = "rewards") -> None:
    """Delete the reward app (Serve itself keeps running for other apps)."""
    serve.delete(app_name)

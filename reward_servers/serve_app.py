"""Ray Serve app that scores batches: one ``RewardDeployment`` per objective behind a ``RewardRouter``.

The training driver sends a ``RewardRef`` (the batch a rollout actor left in the object store)
straight to every objective's deployment (``RewardClient``; one Serve hop fewer); everything else
(a batch by value, an external server, HTTP) goes through the router, which fans a batch out to
every objective at once without fetching it (each replica reads the same object); a batch sent by
value is put once first. An objective with ``R > 1`` replicas gets the batch in ``R``
slices, one request each, so every replica scores. The answers are stacked into
``[B, M]``; each objective's deployment merges concurrent requests with ``@serve.batch`` and scores
them in one call. A failing or hung objective fails the request with a ``RewardServerError`` that
names it.

With ``rewards.route_prefix`` the router also answers HTTP (a shared reward cluster):
``POST {prefix}/score`` takes an ``.npz`` batch (``codecs.encode_batch``; an optional
``objectives`` array picks labels) and returns an ``.npz`` of ``scores`` and ``labels``;
``GET {prefix}/objectives`` lists the objectives as JSON. An objective with a ``url`` is scored
by such a server instead of a local deployment.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import DeploymentStatus

from infra.config import RewardSpec, RewardsConfig
from infra.system_metrics import SystemMetricsTarget, start_system_metrics
from reward_servers.base import RewardInfo, RewardInputs, RewardRef, RewardServerError, checked_scores, score_batch
from reward_servers.codecs import decode_batch, decode_scores, encode_batch, encode_scores
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
                 batch_wait_timeout_s: float, system_metrics: SystemMetricsTarget | None = None):
        reward_spec = RewardSpec.model_validate(spec)
        # The replica's rank (0..num_replicas-1), not its random id: a replica that replaces a dead one
        # takes over its rank, so the series stays one per configured replica.
        rank = serve.get_replica_context().rank.rank
        self.system_metrics = start_system_metrics(system_metrics, f"reward_{reward_spec.display}_{rank}")
        self.reward = build_reward(reward_spec, factory)
        self.info = RewardInfo.of(self.reward, reward_spec.display)
        self._score_batch.set_max_batch_size(max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._batch_sizes: list[int] = []

    async def __call__(self, inputs: RewardInputs | RewardRef) -> np.ndarray:
        """``[B]`` float32 scores of one request (a :class:`RewardRef` is read from this node's object store)."""
        if isinstance(inputs, RewardRef):
            inputs = inputs.resolve(await inputs.refs[0])
        inputs.require(self.info.inputs, self.info.who)
        return await self._score_batch(inputs)

    @serve.batch
    async def _score_batch(self, requests: list[RewardInputs]) -> list[np.ndarray]:
        batch = RewardInputs.concat(requests)
        self._batch_sizes.append(len(requests))
        # A worker thread keeps the replica's event loop free to queue the next batch meanwhile.
        scores = checked_scores(await asyncio.to_thread(score_batch, self.reward, batch), len(batch), self.info)
        return np.split(scores, np.cumsum([len(r) for r in requests])[:-1])

    def describe(self) -> RewardInfo:
        return self.info

    def __del__(self) -> None:
        # Serve calls __del__ when it stops a replica gracefully (serve.delete, scale-down).
        if getattr(self, "system_metrics", None) is not None:
            self.system_metrics.finish()

    def batch_sizes(self) -> list[int]:
        """Requests merged into each batch this replica scored, oldest first."""
        return list(self._batch_sizes)


@dataclass
class ScoredBatch:
    """The router's answer: ``[B, M]`` scores and each objective's wall time for this request."""

    scores: np.ndarray
    latency_s: dict[str, float] = field(default_factory=dict)
    """Seconds from fan-out to each objective's answer (queueing + batching + scoring), by label."""


@serve.deployment
class RewardRouter:
    """Fans a batch out to every objective and returns ``[B, M]`` scores in config order."""

    def __init__(self, specs: list[dict[str, Any]], handles: list[DeploymentHandle | None], timeout_s: float,
                 replicas: list[int] | None = None):
        self.specs = [RewardSpec.model_validate(s) for s in specs]
        self.handles = handles
        self.timeout_s = timeout_s
        self.replicas = replicas or [1] * len(self.specs)
        """Replicas of each objective's deployment: a batch goes to them in as many slices."""
        self.labels = [s.display for s in self.specs]
        self._infos: list[RewardInfo] | None = None

    async def score(self, inputs: RewardInputs | RewardRef, labels: list[str] | None = None) -> ScoredBatch:
        """Scores of ``inputs`` on the objectives ``labels`` (None: all, in config order). A
        :class:`RewardRef` (the training loop's batches) is never fetched here unless an external
        server needs it; a batch sent by value is put into the object store once."""
        picked = [self.labels.index(label) for label in labels] if labels is not None else range(len(self.specs))
        start = time.perf_counter()
        latency: dict[str, float] = {}
        ref = inputs if isinstance(inputs, RewardRef) else RewardRef.of(inputs, ray.put(inputs))
        local = [inputs] if isinstance(inputs, RewardInputs) else []

        async def by_value() -> RewardInputs:
            if not local:
                local.append(ref.resolve(await ref.refs[0]))
            return local[0]

        async def timed(i: int) -> np.ndarray:
            if self.handles[i] is None:  # an external server: the batch goes over HTTP
                out = await self._score(self.specs[i], None, await by_value())
            else:
                out = await self._score_slices(self.specs[i], self.handles[i], ref.slices(self.replicas[i]))
            latency[self.labels[i]] = time.perf_counter() - start
            return out

        results = await asyncio.gather(*(timed(i) for i in picked), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise RewardServerError("; ".join(map(str, failures)), getattr(failures[0], "objective", None))
        return ScoredBatch(np.stack(results, axis=1), latency)

    async def _score_slices(self, spec: RewardSpec, handle: DeploymentHandle, slices: list[RewardRef]) -> np.ndarray:
        """One objective's scores of a batch sent as ``slices`` (one request each, so each replica
        scores one), gathered in order."""
        if len(slices) == 1:
            return await self._score(spec, handle, slices[0])
        responses = []
        for part in slices:
            response = handle.remote(part)
            # Routed one at a time: once a slice is assigned, the router counts it on its replica and
            # sends the next to an idler one (slices routed at the same instant all pick the same replica).
            await response._to_object_ref()
            responses.append(response)
        return np.concatenate(await asyncio.gather(*(self._answer(spec, r) for r in responses)))

    async def _score(self, spec: RewardSpec, handle: DeploymentHandle | None, inputs) -> np.ndarray:
        """One objective's scores of ``inputs``: over HTTP for an external server, else its deployment."""
        if handle is None:
            return await score_remote(spec, inputs, self.timeout_s)
        return await self._answer(spec, handle.remote(inputs))

    async def _answer(self, spec: RewardSpec, response) -> np.ndarray:
        """A routed request's scores, or a ``RewardServerError`` naming the objective."""
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise timeout_error(spec, self.timeout_s) from None
        except Exception as err:
            raise replica_error(spec, err) from None

    async def describe(self) -> list[RewardInfo]:
        """The objectives' metadata, in config order."""
        if self._infos is None:
            self._infos = list(await asyncio.gather(*(
                describe_remote(spec, self.timeout_s) if h is None else h.describe.remote()
                for spec, h in zip(self.specs, self.handles)
            )))
        return self._infos

    async def __call__(self, request: Any) -> Any:
        """The HTTP face (``rewards.route_prefix``): ``POST .../score`` and ``GET .../objectives``."""
        from starlette.responses import JSONResponse, Response

        if request.method == "GET" and request.url.path.endswith("/objectives"):
            return JSONResponse([_info_json(i) for i in await self.describe()])
        if request.method != "POST" or not request.url.path.endswith("/score"):
            return JSONResponse({"error": "use POST <prefix>/score or GET <prefix>/objectives"}, status_code=404)
        try:
            inputs, labels = decode_batch(await request.body())
            unknown = sorted(set(labels or []) - set(self.labels))
            if unknown:
                raise ValueError(f"unknown objectives {unknown}; this server scores {self.labels}")
            infos = await self.describe()
            for i in [self.labels.index(x) for x in labels] if labels else range(len(self.specs)):
                inputs.require(infos[i].inputs, infos[i].who)
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        try:
            scored = await self.score(inputs, labels)
        except RewardServerError as err:
            return JSONResponse({"error": str(err), "objective": err.objective}, status_code=503)
        return Response(encode_scores(scored.scores, labels or self.labels), media_type="application/octet-stream")


def timeout_error(spec: RewardSpec, timeout_s: float) -> RewardServerError:
    """The error of an objective that did not answer within ``timeout_s``."""
    return RewardServerError(f"reward server {_who(spec)} timed out after {timeout_s:g}s", spec.display)


def replica_error(spec: RewardSpec, err: BaseException) -> RewardServerError:
    """The error of an objective whose request failed with ``err``, naming the objective."""
    # Replica exceptions arrive wrapped in a RayTaskError; its ``cause`` is the reward's own error.
    cause = getattr(err, "cause", None) or err
    return RewardServerError(f"reward server {_who(spec)} failed: {type(cause).__name__}: {cause}", spec.display)


def objective_handles(cfg: RewardsConfig, app_name: str) -> list[DeploymentHandle] | None:
    """Handles of every objective's deployment in the app ``app_name``, in config order; None when an
    objective is an external server (only the router reaches those)."""
    if any(spec.url is not None for spec in cfg.objectives):
        return None
    return [serve.get_deployment_handle(deployment_name(spec.display), app_name) for spec in cfg.objectives]


def _info_json(info: RewardInfo) -> dict[str, Any]:
    # JSON has no infinity: an unbounded end of the range is null.
    return {"label": info.label, "name": info.name, "inputs": list(info.inputs), "direction": info.direction,
            "range": [None if math.isinf(v) else v for v in info.range]}


async def _http(spec: RewardSpec, method: str, path: str, timeout_s: float, data: bytes | None = None) -> bytes:
    """``method {spec.url}{path}``; every failure is a ``RewardServerError`` naming the objective and URL."""
    import aiohttp

    url = spec.url.rstrip("/") + path
    who = f"reward server {_who(spec)} at {url}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.request(method, url, data=data) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RewardServerError(f"{who} answered HTTP {resp.status}: {body[:300].decode(errors='replace')}",
                                            spec.display)
                return body
    except asyncio.TimeoutError:
        raise RewardServerError(f"{who} timed out after {timeout_s:g}s", spec.display) from None
    except aiohttp.ClientError as err:
        raise RewardServerError(f"{who} is unreachable: {type(err).__name__}: {err}", spec.display) from None


async def score_remote(spec: RewardSpec, inputs: RewardInputs, timeout_s: float) -> np.ndarray:
    """``[B]`` scores of the objective labelled ``spec.display`` on the reward server at ``spec.url``."""
    scores, _ = decode_scores(await _http(spec, "POST", "/score", timeout_s, encode_batch(inputs, [spec.display])))
    return scores[:, 0]


async def describe_remote(spec: RewardSpec, timeout_s: float) -> RewardInfo:
    """The remote objective's metadata; its label and name must match ``spec``."""
    infos = json.loads(await _http(spec, "GET", "/objectives", timeout_s))
    match = [i for i in infos if i["label"] == spec.display]
    if not match or match[0]["name"] != spec.name:
        served = [f"{i['label']} ({i['name']})" for i in infos]
        raise RewardServerError(f"reward server at {spec.url} serves no objective {_who(spec)}; it serves {served}",
                                spec.display)
    lo, hi = match[0]["range"]
    return RewardInfo(spec.display, spec.name, tuple(match[0]["inputs"]),
                      (-math.inf if lo is None else lo, math.inf if hi is None else hi), match[0]["direction"])


# One access-log line per scoring call would drown the training progress; warnings still show.
QUIET_LOGS = {"enable_access_log": False, "log_level": "WARNING"}


def build_app(cfg: RewardsConfig, system_metrics: SystemMetricsTarget | None = None) -> serve.Application:
    """The router bound to one deployment per objective, with the config's resources and batching;
    with ``system_metrics`` each replica logs its system metrics into that run."""
    objectives = []
    for spec in cfg.objectives:
        if spec.url is not None:
            objectives.append(None)  # scored over HTTP by the router
            continue
        # Resolved here, in the driver, so unknown names fail before anything deploys and rewards
        # registered only in the driver's process still build in the replicas.
        factory = reward_factory(spec.name)
        ongoing = spec.max_ongoing_requests or cfg.max_ongoing_requests
        objectives.append(
            RewardDeployment.options(
                name=deployment_name(spec.display),
                num_replicas=spec.num_replicas or cfg.num_replicas,
                max_ongoing_requests=ongoing,
                ray_actor_options={"num_cpus": cfg.num_cpus,
                                   "num_gpus": cfg.num_gpus if spec.num_gpus is None else spec.num_gpus,
                                   "resources": dict(cfg.resources)},
                logging_config=QUIET_LOGS,
            ).bind(spec.model_dump(), factory, min(cfg.max_batch_size, ongoing), cfg.batch_wait_timeout_s,
                   system_metrics)
        )
    return RewardRouter.options(
        name=ROUTER_NAME,
        max_ongoing_requests=cfg.max_ongoing_requests,
        # The router only awaits other replicas; a CPU reservation would be wasted on a laptop.
        ray_actor_options={"num_cpus": 0},
        logging_config=QUIET_LOGS,
    ).bind([s.model_dump() for s in cfg.objectives], objectives, cfg.timeout_s,
           [spec.num_replicas or cfg.num_replicas for spec in cfg.objectives])


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


def deploy_rewards(cfg: RewardsConfig, app_name: str = "rewards",
                   system_metrics: SystemMetricsTarget | None = None) -> DeploymentHandle:
    """Deploy (or update) the reward app and return the router's handle once every replica is up.

    A reward whose constructor fails (bad args, a model that does not load) fails here with a
    ``RewardServerError`` naming it and quoting its error; the failed app is deleted.
    """
    app = build_app(cfg, system_metrics)
    start_serve()
    try:
        return serve.run(app, name=app_name, route_prefix=cfg.route_prefix)
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

"""``RewardClient``: how the (synchronous) training driver scores samples.

``submit`` returns at once with a ``PendingScores``; ``result()`` blocks until the ``[B, M]`` scores
are back (and ``latency_s`` holds each objective's seconds), re-submitting a failed or timed-out call up to ``retries`` times with exponential
backoff, then raising a ``RewardServerError`` that names the objective. ``backend="serve"`` sends a
:class:`RewardRef` (the training loop's batches) straight to every objective's Serve deployment and
anything else through the router; ``backend="local"`` scores in driver threads with the same rewards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ray

from infra.config import RewardsConfig
from infra.system_metrics import SystemMetricsTarget
from reward_servers.base import RewardInfo, RewardInputs, RewardRef, RewardServerError, checked_scores, score_batch
from reward_servers.registry import build_reward

Attempt = Callable[[], tuple[np.ndarray, dict[str, float]]]
"""Waits for one scoring call and returns ``[B, M]`` scores and per-objective seconds, or raises
``RewardServerError``."""

BACKOFF_S = 0.5
"""Wait before the first retry; doubled before each further one."""

ROUTER_GRACE_S = 5.0
"""Extra wait for the router beyond ``timeout_s``: the router times each objective out itself and
names it, so the driver's own timeout only fires when the router is stuck (or, on the first call,
while a freshly deployed handle resolves on a loaded machine)."""


class PendingScores:
    """Scores of one submitted batch; ``result()`` blocks (and retries) until they are back."""

    def __init__(self, start: Callable[[RewardInputs], Attempt], inputs: RewardInputs, retries: int):
        self._start = start
        self._inputs = inputs
        self._retries = retries
        self._attempt = start(inputs)
        self._scores: np.ndarray | None = None
        self.latency_s: dict[str, float] = {}
        """Seconds each objective took to answer (the successful attempt), by label; set by ``result``."""

    def result(self) -> np.ndarray:
        """``[B, M]`` float32 raw scores, objectives in config order."""
        if self._scores is None:
            for attempt in range(self._retries + 1):
                try:
                    self._scores, self.latency_s = self._attempt()
                    break
                except RewardServerError as err:
                    if attempt == self._retries:
                        raise RewardServerError(
                            f"{err} (gave up after {attempt + 1} attempt{'s' if attempt else ''})", err.objective
                        ) from None
                    time.sleep(BACKOFF_S * 2**attempt)
                    self._attempt = self._start(self._inputs)
        return self._scores


class RewardClient:
    """Scores batches on every objective of ``cfg``; deploys the Serve app for ``backend="serve"`` (whose
    replicas log their system metrics into ``system_metrics``' run; local rewards are the driver's)."""

    def __init__(self, cfg: RewardsConfig, app_name: str = "rewards",
                 system_metrics: SystemMetricsTarget | None = None):
        self.cfg = cfg
        self.app_name = app_name
        self._pool: ThreadPoolExecutor | None = None
        if cfg.backend == "serve":
            from reward_servers.serve_app import deploy_rewards, objective_handles, shutdown_rewards

            self._router = deploy_rewards(cfg, app_name, system_metrics)
            self._handles = objective_handles(cfg, app_name)
            self._replicas = [spec.num_replicas or cfg.num_replicas for spec in cfg.objectives]
            try:
                self.infos: list[RewardInfo] = self._router.describe.remote().result(
                    timeout_s=cfg.timeout_s + ROUTER_GRACE_S)
            except Exception as err:
                # An external reward server (an objective's url) that is down or serves other objectives.
                shutdown_rewards(app_name)
                cause = getattr(err, "cause", None) or err
                raise RewardServerError(str(cause), getattr(cause, "objective", None)) from None
        else:
            remote = [s.display for s in cfg.objectives if s.url is not None]
            if remote:
                raise ValueError(f"objectives {remote} have a 'url'; external reward servers need "
                                 "rewards.backend='serve'")
            self._rewards = [build_reward(spec) for spec in cfg.objectives]
            self.infos = [RewardInfo.of(r, s.display) for r, s in zip(self._rewards, cfg.objectives)]
            self._pool = ThreadPoolExecutor(max_workers=len(self._rewards), thread_name_prefix="reward")

    @property
    def objective_names(self) -> list[str]:
        return [i.label for i in self.infos]

    @property
    def directions(self) -> list[str]:
        return [i.direction for i in self.infos]

    @property
    def ranges(self) -> list[tuple[float, float]]:
        return [i.range for i in self.infos]

    def submit(self, inputs: RewardInputs | RewardRef) -> PendingScores:
        """Start scoring ``inputs`` on every objective; returns without waiting. A :class:`RewardRef`
        reaches the Serve replicas by reference (local rewards fetch it into this process)."""
        for info in self.infos:
            inputs.require(info.inputs, info.who)
        start = self._start_serve if self._pool is None else self._start_local
        return PendingScores(start, inputs, self.cfg.retries)

    def score(self, inputs: RewardInputs | RewardRef) -> np.ndarray:
        """``submit(inputs).result()``: ``[B, M]`` scores, blocking."""
        return self.submit(inputs).result()

    def _start_serve(self, inputs: RewardInputs | RewardRef) -> Attempt:
        if isinstance(inputs, RewardRef) and self._handles is not None:
            return self._start_direct(inputs)
        response = self._router.score.remote(inputs)
        timeout_s = self.cfg.timeout_s + ROUTER_GRACE_S

        def wait() -> tuple[np.ndarray, dict[str, float]]:
            try:
                scored = response.result(timeout_s=timeout_s)
                return scored.scores, scored.latency_s
            except TimeoutError:
                response.cancel()
                raise RewardServerError(f"reward router of app '{self.app_name}' did not answer "
                                        f"within {timeout_s:g}s") from None
            except Exception as err:
                # The router raises RewardServerError naming the objective; Ray wraps it in a RayTaskError.
                cause = getattr(err, "cause", None) or err
                if isinstance(cause, RewardServerError):
                    raise RewardServerError(str(cause), cause.objective) from None
                raise RewardServerError(f"reward router of app '{self.app_name}' failed: "
                                        f"{type(cause).__name__}: {cause}") from None

        return wait

    def _start_direct(self, ref: RewardRef) -> Attempt:
        """Fan ``ref`` out to every objective's deployment from this process: the router's slicing over
        an objective's replicas without the router's hop (its per-call CPU is the loop's largest Serve
        cost, docs/cluster.md). The requests go out from the thread that waits, because routing a slice
        blocks until a replica has taken it."""
        from reward_servers.serve_app import replica_error, timeout_error

        specs, timeout_s = self.cfg.objectives, self.cfg.timeout_s

        def wait() -> tuple[np.ndarray, dict[str, float]]:
            start, deadline = time.perf_counter(), time.monotonic() + timeout_s
            responses, owner = [], {}  # ObjectRef -> (objective, slice)
            parts: list[list[np.ndarray | None]] = []
            current = 0  # the objective a failure is charged to
            try:
                for current, handle in enumerate(self._handles):
                    slices = ref.slices(self._replicas[current])
                    parts.append([None] * len(slices))
                    for j, part in enumerate(slices):
                        responses.append(handle.remote(part))
                        # Taken by a replica before the next slice is routed, so the handle counts it there
                        # and sends the next to an idler one (slices routed at once all pick the same replica).
                        owner[responses[-1]._to_object_ref_sync(_timeout_s=max(0.0, deadline - time.monotonic()))] = (current, j)
                latency, pending = {}, list(owner)
                while pending:
                    done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                    if not done:
                        current = owner[pending[0]][0]
                        raise TimeoutError
                    current, j = owner[done[0]]
                    parts[current][j] = ray.get(done[0])
                    if all(p is not None for p in parts[current]):
                        latency[self.infos[current].label] = time.perf_counter() - start
            except Exception as err:
                for response in responses:
                    response.cancel()
                if isinstance(err, TimeoutError):
                    raise timeout_error(specs[current], timeout_s) from None
                raise replica_error(specs[current], err) from None
            return np.stack([np.concatenate(p) for p in parts], axis=1), latency

        return wait

    def _start_local(self, inputs: RewardInputs | RewardRef) -> Attempt:
        start = time.perf_counter()
        if isinstance(inputs, RewardRef):
            inputs = inputs.resolve(ray.get(inputs.refs[0]))

        def timed(reward) -> tuple[np.ndarray, float]:
            scores = score_batch(reward, inputs)
            return scores, time.perf_counter() - start

        futures = [self._pool.submit(timed, reward) for reward in self._rewards]
        deadline = time.monotonic() + self.cfg.timeout_s

        def wait() -> tuple[np.ndarray, dict[str, float]]:
            columns, latency = [], {}
            for info, future in zip(self.infos, futures):
                who = f"reward server {info.who}"
                try:
                    scores, latency[info.label] = future.result(timeout=max(0.0, deadline - time.monotonic()))
                    columns.append(checked_scores(scores, len(inputs), info))
                except TimeoutError:
                    raise RewardServerError(f"{who} timed out after {self.cfg.timeout_s:g}s", info.label) from None
                except Exception as err:
                    raise RewardServerError(f"{who} failed: {type(err).__name__}: {err}", info.label) from None
            return np.stack(columns, axis=1), latency

        return wait

    def close(self) -> None:
        """Delete the Serve app (or stop the local threads; a hung local reward keeps its thread)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        else:
            from reward_servers.serve_app import shutdown_rewards

            shutdown_rewards(self.app_name)

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reward_step_metrics(scores: np.ndarray, labels: list[str], latency_s: dict[str, float]) -> dict[str, float]:
    """Per-objective spread of one step's ``[B, M]`` raw scores and each reward server's latency.

    Names: ``reward_std/<label>``, ``reward_min/<label>``, ``reward_max/<label>``,
    ``reward_latency_s/<label>`` (the mean is the driver's ``reward/<label>``).
    """
    out = {}
    for m, label in enumerate(labels):
        col = np.asarray(scores[:, m], dtype=np.float64)
        out[f"reward_std/{label}"] = float(col.std())
        out[f"reward_min/{label}"] = float(col.min())
        out[f"reward_max/{label}"] = float(col.max())
        if label in latency_s:
            out[f"reward_latency_s/{label}"] = float(latency_s[label])
    return out

"""Resource pools: turn the config into Ray placement groups and per-actor scheduling options.

One bundle per actor (rollout actor or learner rank). Pools are reserved up front (gang
scheduling), so a cluster too small for the job fails at start-up naming the pool and what it
asked for, instead of hanging half-started. Without ``cluster.placement_groups`` every actor just
asks for its own resources (the laptop default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from infra.config import Config, PoolConfig


@dataclass
class Pool:
    """A reserved pool: ``options(i)`` are the ``.options(...)`` for the actor in bundle ``i``."""

    name: str
    bundles: list[dict[str, float]]
    placement_group: object | None = None
    per_actor: list[dict] = field(default_factory=list)

    def options(self, index: int) -> dict:
        return dict(self.per_actor[index])


def bundle(cpus: float, gpus: float, pool: PoolConfig) -> dict[str, float]:
    """One actor's bundle: CPU, GPU, memory and the pool's custom resources."""
    b: dict[str, float] = {"CPU": cpus, **pool.resources}
    if gpus:
        b["GPU"] = gpus
    if pool.memory_gb:
        b["memory"] = pool.memory_gb * 2**30
    return b


def _reserve(name: str, bundles: list[dict[str, float]], strategy: str, timeout_s: float):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group(bundles, strategy=strategy, name=f"paretoslider-{name}")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise RuntimeError(
            f"pool '{name}' could not be placed within {timeout_s:.0f}s: it needs {len(bundles)} bundle(s) "
            f"of {bundles[0]} with strategy {strategy}; the cluster offers {ray.cluster_resources()}. "
            "Add nodes, or lower the pool's size (cluster.*, rollout.*, learner.*)") from None
    return pg


def _in_bundle(pg, index: int, cpus: float, gpus: float) -> dict:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"num_cpus": cpus, "num_gpus": gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)}


def build_pools(cfg: Config) -> tuple[Pool, Pool]:
    """The rollout and learner pools (reserved now when ``cluster.placement_groups`` is on)."""
    ro, lc, cl = cfg.rollout, cfg.learner, cfg.cluster
    n_ro, n_le = ro.num_actors, lc.world_size
    if cl.colocate:
        # Shared bundles: each holds one learner rank and the rollout actors assigned to it.
        per_bundle = [[i for i in range(n_ro) if i % n_le == r] for r in range(n_le)]
        bundles = [bundle(lc.num_cpus_per_worker + len(ids) * ro.num_cpus_per_actor,
                          lc.num_gpus_per_worker + len(ids) * ro.num_gpus_per_actor, cl.learner)
                   for ids in per_bundle]
        pg = _reserve("colocate", bundles, cl.learner.strategy, cl.ready_timeout_s)
        learner = Pool("learner", bundles, pg,
                       [_in_bundle(pg, r, lc.num_cpus_per_worker, lc.num_gpus_per_worker) for r in range(n_le)])
        rollout = Pool("rollout", bundles, pg,
                       [_in_bundle(pg, i % n_le, ro.num_cpus_per_actor, ro.num_gpus_per_actor) for i in range(n_ro)])
        return rollout, learner
    pools = []
    for name, n, cpus, gpus, pool_cfg in (("rollout", n_ro, ro.num_cpus_per_actor, ro.num_gpus_per_actor, cl.rollout),
                                          ("learner", n_le, lc.num_cpus_per_worker, lc.num_gpus_per_worker, cl.learner)):
        bundles = [bundle(cpus, gpus, pool_cfg)] * n
        if cl.placement_groups:
            try:
                pg = _reserve(name, bundles, pool_cfg.strategy, cl.ready_timeout_s)
            except BaseException:
                release_pools(*pools)  # the rollout pool must not outlive an unplaceable learner pool
                raise
            pools.append(Pool(name, bundles, pg, [_in_bundle(pg, i, cpus, gpus) for i in range(n)]))
        else:
            extra = {"resources": dict(pool_cfg.resources)} if pool_cfg.resources else {}
            pools.append(Pool(name, bundles, None, [{"num_cpus": cpus, "num_gpus": gpus, **extra}] * n))
    return pools[0], pools[1]


def release_pools(*pools: Pool) -> None:
    """Remove the placement groups (actors in them must be killed first)."""
    from ray.util.placement_group import remove_placement_group

    seen = set()
    for p in pools:
        if p.placement_group is not None and id(p.placement_group) not in seen:
            seen.add(id(p.placement_group))
            remove_placement_group(p.placement_group)

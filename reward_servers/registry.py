"""Rewards by name: ``@register("toy2d_target")`` on a class, ``build_reward(spec)`` from the config.

The built-in reward modules are imported on the first lookup, so a config can name any of them
without importing them first. Heavy rewards (VLM judges, CLIP) must load their models in
``__init__``, not at import time, so the lookup stays cheap.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from infra.config import RewardSpec
from reward_servers.base import Reward

RewardFactory = Callable[..., Reward]

_BUILTIN_MODULES = ("reward_servers.toy2d", "reward_servers.simulated", "reward_servers.vlm_judge",
                    "reward_servers.clip_scores", "reward_servers.fidelity", "reward_servers.ocr",
                    "reward_servers.shapes", "reward_servers.shapes_classifier")
_REGISTRY: dict[str, RewardFactory] = {}
_builtins_loaded = False


def register(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Class decorator: make the reward buildable as ``RewardSpec(name=name, args=...)``."""

    def decorate(factory: RewardFactory) -> RewardFactory:
        old = _REGISTRY.get(name)
        # The same class registered again (a module imported twice, e.g. in a Serve replica) is fine.
        if old is not None and _qualified(old) != _qualified(factory):
            raise ValueError(f"reward name '{name}' is already registered by {_qualified(old)}")
        _REGISTRY[name] = factory
        return factory

    return decorate


def _qualified(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _builtins_loaded = True


def registered_names() -> list[str]:
    """Every name ``build_reward`` accepts, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def reward_factory(name: str) -> RewardFactory:
    """The class registered as ``name``; unknown names fail with the list of known ones."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward '{name}'; registered rewards: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_reward(spec: RewardSpec, factory: RewardFactory | None = None) -> Reward:
    """Construct the reward of ``spec`` with ``spec.args``.

    ``factory`` skips the lookup: Serve replicas receive the class resolved in the driver, so a
    reward registered only in the driver's process (a plugin, a test) still builds there.
    """
    factory = check_args(spec, factory)
    try:
        return factory(**spec.args)
    except ValueError as err:
        raise ValueError(f"reward '{spec.display}' ({spec.name}): {err}") from err


def check_args(spec: RewardSpec, factory: RewardFactory | None = None) -> RewardFactory:
    """The factory of ``spec``, once its ``args`` fit the constructor's signature (nothing is built)."""
    factory = factory or reward_factory(spec.name)
    signature = inspect.signature(factory)
    try:
        signature.bind(**spec.args)
    except TypeError as err:
        expected = ", ".join(str(p.replace(annotation=p.empty)) for p in signature.parameters.values())
        raise ValueError(f"reward '{spec.display}' ({spec.name}): bad args {spec.args}: {err}; "
                         f"expected {spec.name}({expected})") from None
    return factory
